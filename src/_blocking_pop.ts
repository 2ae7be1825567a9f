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
import { backoff, type PopOwner, WakeTransport } from "./_wake_transport.ts";

/** The value pushed to a wake list to interrupt its `BLPOP`. */
export const INTERRUPT = "!";

interface Running {
  readonly keys: Map<string, number>;
  readonly sentAt: number;
  interrupted: boolean;
}

const now = () => performance.now();

/** The waiting connection of a client and its one `BLPOP`. */
export class BlockingPop extends WakeTransport {
  /** Seconds a `BLPOP` blocks at most. */
  readonly #timeout: number;
  #running: Running | undefined;

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
    super(new OwnedConnection(main), owner, wakeKey);
    this.#timeout = timeout;
  }

  /**
   * Keeps one `BLPOP` running over the wanted keys: starts the loop, or
   * interrupts the running `BLPOP` when it misses a key.
   */
  pump(): void {
    if (this.closed) return;
    const wanted = this.owner.wanted();
    if (wanted === undefined) return;
    if (!this.running) {
      this.start();
      return;
    }
    const running = this.#running;
    if (
      running !== undefined && !running.interrupted &&
      [...wanted.keys()].some((key) => !running.keys.has(key))
    ) {
      running.interrupted = true;
      this.owner.interrupt();
    }
  }

  protected async run(): Promise<void> {
    /** The signal lists of the `BLPOP`s that failed since the last answer. */
    let failedKeys: Map<string, number> | undefined;
    let failures = 0;
    for (;;) {
      const wanted = this.owner.wanted();
      if (this.closed || wanted === undefined) return;
      if (failedKeys !== undefined) {
        // A quick answer tells that the connection is back before a BLPOP
        // would (it blocks up to its timeout).
        try {
          await this.connection.send("PING", []);
        } catch (error) {
          if (await this.#failed(error, ++failures)) return;
          continue;
        }
        this.owner.recovered(failedKeys);
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
        reply = await this.connection.send("BLPOP", [
          this.wakeKey,
          ...wanted.keys(),
          String(this.#timeout),
        ]);
      } catch (error) {
        this.#running = undefined;
        failedKeys = wanted;
        if (await this.#failed(error, ++failures)) return;
        continue;
      }
      this.#running = undefined;
      this.deliver(reply, wanted, running.sentAt);
    }
  }

  /**
   * After a failed command: whether the loop stops (closed, or failed for
   * good); else it waits a backoff that grows with the failures in a row
   * (the connection's own backoff covers reconnecting; this one, error
   * replies such as LOADING that come back at once).
   */
  async #failed(error: unknown, failures: number): Promise<boolean> {
    if (this.stops(error)) return true;
    if (classify(error) !== "connection") await sleep(backoff(failures));
    return this.closed;
  }

  /** Closes the connection once no `BLPOP` is wanted; a later pump reopens it. */
  async closeIfIdle(): Promise<void> {
    if (!this.running) await this.connection.close();
  }

  /** Ends the running `BLPOP` and closes the connection for good. */
  async close(): Promise<void> {
    this.closed = true;
    await this.connection.close(true);
    await this.ended();
  }
}
