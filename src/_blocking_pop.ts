/**
 * One `BLPOP` kept running, on a connection of its own, over the process's
 * wake list and the signal lists its owner wants: the waiting connection of
 * a client.
 *
 * - It never acts on a connection it does not own: to make a running
 *   `BLPOP` take a new key, the owner pushes `!` to the process's own wake
 *   list (no `CLIENT UNBLOCK`, which would need a client id that a
 *   reconnect or a restart makes stale, and which proxies may forbid).
 * - It recovers by itself: a failed connection is dropped and opened again
 *   after a backoff (see `_owned_connection.ts`); once a new connection
 *   answers, the owner hears `recovered()` and looks at its names again,
 *   since a wake-up popped by a `BLPOP` whose reply was lost is gone.
 *
 * @module
 */

import type { Connection } from "./clients.ts";
import { classify } from "./_failure.ts";
import { OwnedConnection, sleep } from "./_owned_connection.ts";

/** The value pushed to a wake list to interrupt its `BLPOP`. */
export const INTERRUPT = "!";

/** What the owner of a {@linkcode BlockingPop} decides and learns. */
export interface PopOwner {
  /**
   * The signal lists to cover besides the wake list, with the signal expiry
   * of their locks; `undefined` when nothing is waited for.
   */
  wanted(): Map<string, number> | undefined;
  /**
   * A `BLPOP` popped `value` from `key`; `signalExpire` is that of the
   * key's lock when the key is a signal list.
   */
  popped(key: string, value: string, signalExpire: number): void;
  /**
   * A `BLPOP` sent at `sentAt` found the wake list empty: whatever it holds
   * later was pushed after `sentAt`.
   */
  empty(sentAt: number): void;
  /**
   * The connection answers again after failing: look at every name again,
   * and at the signal lists `keys` the failed `BLPOP` covered (a wake-up it
   * popped went with the lost reply).
   */
  recovered(keys: readonly string[]): void;
  /** The connection failed for good (a client that cannot open one, say). */
  failed(error: unknown): void;
  /** Interrupts the running `BLPOP` (by pushing to the wake list). */
  interrupt(): void;
}

/**
 * How a waiting process hears of hand-overs and wake-ups: a wake
 * transport. {@linkcode BlockingPop} keeps a `BLPOP` running;
 * `PollingPop` (`_polling_pop.ts`) polls the same lists.
 */
export interface WakeTransport {
  /** Whether a connection of its own is open (or opening). */
  readonly isOpen: boolean;
  /** Whether its loop runs (a command may be on its way). */
  readonly running: boolean;
  /** Since when its connection has been failing, if it is. */
  readonly failing: { since: number; error: unknown } | undefined;
  /** Covers the wanted keys from now on; starts the loop if need be. */
  pump(): void;
  /** Closes its own connection once its loop has ended. */
  closeIfIdle(): Promise<void>;
  /** Ends the loop and closes its own connection for good. */
  close(): Promise<void>;
}

interface Running {
  readonly keys: Map<string, number>;
  readonly sentAt: number;
  interrupted: boolean;
}

const now = () => performance.now();

/** Backoff after an error reply (Redis loading, busy, refusing), in ms. */
const BACKOFF_MIN = 25;
const BACKOFF_MAX = 1_000;

/**
 * Whether a transport's loop stops on a failed command: it is closed, or
 * the failure is for good (the owner then hears `failed()`).
 */
export function stopsOn(
  error: unknown,
  closed: boolean,
  owner: PopOwner,
): boolean {
  if (closed) return true;
  if (classify(error) !== "permanent") return false;
  owner.failed(error);
  return true;
}

/**
 * Milliseconds to wait after `failures` failed commands in a row: doubling
 * from `BACKOFF_MIN` up to `BACKOFF_MAX`, ±20% at random.
 */
export function backoff(failures: number): number {
  const ms = Math.min(
    BACKOFF_MAX,
    BACKOFF_MIN * 2 ** Math.min(failures - 1, 10),
  );
  return ms * (0.8 + Math.random() * 0.4);
}

/** The waiting connection of a client and its one `BLPOP`. */
export class BlockingPop implements WakeTransport {
  readonly #connection: OwnedConnection;
  readonly #owner: PopOwner;
  readonly #wakeKey: string;
  /** Seconds a `BLPOP` blocks at most. */
  readonly #timeout: number;
  #running: Running | undefined;
  #loop: Promise<void> | undefined;
  #closed = false;

  /**
   * @param main The application's connection, which `duplicate()`s the
   * waiting one.
   * @param owner Decides the keys and hears what is popped.
   * @param wakeKey The process's wake list, always covered.
   * @param timeout Seconds a `BLPOP` blocks at most.
   */
  constructor(
    main: Connection,
    owner: PopOwner,
    wakeKey: string,
    timeout: number,
  ) {
    this.#connection = new OwnedConnection(main);
    this.#owner = owner;
    this.#wakeKey = wakeKey;
    this.#timeout = timeout;
  }

  /** Whether the connection is open (or opening). */
  get isOpen(): boolean {
    return this.#connection.isOpen;
  }

  /** Whether the `BLPOP` loop runs (a `BLPOP` may be on its way). */
  get running(): boolean {
    return this.#loop !== undefined;
  }

  /** Since when the connection has been failing, if it is. */
  get failing(): { since: number; error: unknown } | undefined {
    return this.#connection.failing;
  }

  /**
   * Keeps one `BLPOP` running over the wanted keys: starts the loop, or
   * interrupts the running `BLPOP` when it misses a key.
   */
  pump(): void {
    if (this.#closed) return;
    const wanted = this.#owner.wanted();
    if (wanted === undefined) return;
    if (this.#loop === undefined) {
      this.#loop = this.#run().finally(() => this.#loop = undefined);
      return;
    }
    const running = this.#running;
    if (
      running !== undefined && !running.interrupted &&
      [...wanted.keys()].some((key) => !running.keys.has(key))
    ) {
      running.interrupted = true;
      this.#owner.interrupt();
    }
  }

  async #run(): Promise<void> {
    /** The signal lists of the `BLPOP`s that failed since the last answer. */
    let failedKeys: string[] | undefined;
    let failures = 0;
    for (;;) {
      const wanted = this.#owner.wanted();
      if (this.#closed || wanted === undefined) return;
      if (failedKeys !== undefined) {
        // A quick answer tells that the connection is back before a BLPOP
        // would (it blocks up to its timeout).
        try {
          await this.#connection.send("PING", []);
        } catch (error) {
          if (await this.#failed(error, ++failures)) return;
          continue;
        }
        this.#owner.recovered(failedKeys);
        failedKeys = undefined;
        failures = 0;
        continue;
      }
      const running: Running = {
        keys: wanted,
        sentAt: now(),
        interrupted: false,
      };
      this.#running = running;
      let reply;
      try {
        reply = await this.#connection.send("BLPOP", [
          this.#wakeKey,
          ...wanted.keys(),
          String(this.#timeout),
        ]);
      } catch (error) {
        this.#running = undefined;
        failedKeys = [...wanted.keys()];
        if (await this.#failed(error, ++failures)) return;
        continue;
      }
      this.#running = undefined;
      // Delivered even when closing: a wake-up taken must be used or put back.
      const [key, value] = (reply ?? []) as string[];
      if (key !== this.#wakeKey) this.#owner.empty(running.sentAt);
      if (key !== undefined) {
        this.#owner.popped(key, value, wanted.get(key) ?? 1000);
      }
    }
  }

  /**
   * After a failed command: whether the loop stops (closed, or failed for
   * good); else it waits a backoff that grows with the failures in a row
   * (the connection's own backoff covers reconnecting; this one, error
   * replies such as LOADING that come back at once).
   */
  async #failed(error: unknown, failures: number): Promise<boolean> {
    if (this.#stop(error)) return true;
    if (classify(error) !== "connection") await sleep(backoff(failures));
    return this.#closed;
  }

  #stop(error: unknown): boolean {
    return stopsOn(error, this.#closed, this.#owner);
  }

  /** Closes the connection once no `BLPOP` is wanted; a later pump reopens it. */
  async closeIfIdle(): Promise<void> {
    if (this.#loop === undefined) await this.#connection.close();
  }

  /** Ends the running `BLPOP` and closes the connection for good. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#connection.close(true);
    await this.#loop;
  }
}
