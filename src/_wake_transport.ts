/**
 * How a waiting process hears of hand-overs and wake-ups: a wake transport.
 * Each keeps one loop over the process's wake list and the signal lists its
 * owner wants, and hands what it pops to the owner:
 * `BlockingPop` (`_blocking_pop.ts`) keeps a `BLPOP` running, `PollingPop`
 * (`_polling_pop.ts`) polls the same lists. What they share is here.
 *
 * @module
 */

import { classify } from "./_failure.ts";
import type { OwnedConnection } from "./_owned_connection.ts";

/** What the owner of a wake transport decides and learns. */
export interface PopOwner {
  /**
   * The signal lists to cover besides the wake list, with the signal expiry
   * of their locks; `undefined` when nothing is waited for.
   */
  wanted(): Map<string, number> | undefined;
  /**
   * A pop took `value` from `key`; `signalExpire` is that of the key's lock
   * when the key is a signal list.
   */
  popped(key: string, value: string, signalExpire: number): void;
  /**
   * A pop sent at `sentAt` found the wake list empty: whatever it holds
   * later was pushed after `sentAt`.
   */
  empty(sentAt: number): void;
  /**
   * The connection answers again after failing: look at every name again,
   * and at the signal lists `keys` the failed pops covered, with their
   * signal expiry (a wake-up one popped went with the lost reply).
   */
  recovered(keys: ReadonlyMap<string, number>): void;
  /** The connection failed for good (a client that cannot open one, say). */
  failed(error: unknown): void;
  /** Interrupts the running `BLPOP` (by pushing to the wake list). */
  interrupt(): void;
}

/** Backoff after an error reply (Redis loading, busy, refusing), in ms. */
const BACKOFF_MIN = 25;
const BACKOFF_MAX = 1_000;

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

/** A loop that pops wake-ups for its owner. */
export abstract class WakeTransport {
  protected readonly connection: OwnedConnection;
  protected readonly owner: PopOwner;
  protected readonly wakeKey: string;
  protected closed = false;
  #loop: Promise<void> | undefined;
  /** Whether the loop ended on a failure for good: only a pump restarts it. */
  #failedForGood = false;

  /**
   * @param connection The connection the pops go on.
   * @param owner Decides the keys and hears what is popped.
   * @param wakeKey The process's wake list, always covered.
   */
  constructor(connection: OwnedConnection, owner: PopOwner, wakeKey: string) {
    this.connection = connection;
    this.owner = owner;
    this.wakeKey = wakeKey;
  }

  /** Whether the connection is open (or opening). */
  get isOpen(): boolean {
    return this.connection.isOpen;
  }

  /** Whether the loop runs (a pop may be on its way). */
  get running(): boolean {
    return this.#loop !== undefined;
  }

  /** Since when the connection has been failing, if it is. */
  get failing(): { since: number; error: unknown } | undefined {
    return this.connection.failing;
  }

  /** Covers the wanted keys from now on; starts the loop if need be. */
  abstract pump(): void;

  /** Closes its own connection once its loop has ended. */
  abstract closeIfIdle(): Promise<void>;

  /** Ends the loop and closes its own connection for good. */
  abstract close(): Promise<void>;

  /** The loop: runs until closed or nothing is wanted. */
  protected abstract run(): Promise<void>;

  /** Starts the loop; it must not be running. */
  protected start(): void {
    this.#failedForGood = false;
    this.#loop = this.run().finally(() => {
      this.#loop = undefined;
      // A pump between the loop's last look at the wanted keys and its end
      // found it running and did nothing: the keys wanted now are covered
      // by a new loop (unless it ended on a failure for good).
      if (!this.closed && !this.#failedForGood) this.pump();
    });
  }

  /** Resolves once the loop has ended. */
  protected async ended(): Promise<void> {
    await this.#loop;
  }

  /**
   * Hands the reply of a pop sent at `sentAt` over `wanted` to the owner,
   * even when closing (a wake-up taken must be used or put back); returns
   * whether it popped something.
   */
  protected deliver(
    reply: unknown,
    wanted: Map<string, number>,
    sentAt: number,
  ): boolean {
    const [key, value] = (reply ?? []) as string[];
    if (key !== this.wakeKey) this.owner.empty(sentAt);
    if (key === undefined) return false;
    this.owner.popped(key, value, wanted.get(key) ?? 1000);
    return true;
  }

  /**
   * Whether the loop stops on a failed command: it is closed, or the
   * failure is for good (the owner then hears `failed()`).
   */
  protected stops(error: unknown): boolean {
    if (this.closed) return true;
    if (classify(error) !== "permanent") return false;
    this.#failedForGood = true;
    this.owner.failed(error);
    return true;
  }
}
