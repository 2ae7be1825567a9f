/**
 * The `"poll"` wake transport: for clients that cannot block (HTTP Redis,
 * proxies that forbid `BLPOP`). In place of one `BLPOP` kept running, it
 * pops the process's wake list and the signal lists its owner wants in one
 * script, now and then:
 *
 * - never faster than the interval its owner states (each pause is that
 *   interval plus up to half of it, at random, so that processes polling
 *   one server spread out), and at once again after a poll that found
 *   something (more may be waiting);
 * - a holder's expiry is not its business: the per-name driver looks at
 *   the lock when the expiry it learned passes, whatever the transport;
 * - a poll whose reply is lost may have popped a wake-up: once a poll
 *   answers again, the owner hears `recovered()` and looks at its names
 *   again, as after a failed `BLPOP`.
 *
 * It sends its polls on the waiter's command connection, which it does not
 * own or close.
 *
 * @module
 */

import { type OwnedConnection, sleep } from "./_owned_connection.ts";
import { POLL, Script } from "./scripts.ts";
import { backoff, type PopOwner, WakeTransport } from "./_wake_transport.ts";
import { deferred } from "./_deferred.ts";

const pollScript = new Script(POLL, () => []);

const now = () => performance.now();

/** Wake-ups fetched by polling. */
export class PollingPop extends WakeTransport {
  readonly #interval: () => number;
  /** Ends the pause between two polls early (to close, or a message). */
  #nudge: { promise: Promise<void>; resolve: () => void } | undefined;
  /** A nudge came while no pause was on: the next pause is skipped. */
  #nudged = false;

  /**
   * @param connection The waiter's command connection.
   * @param owner Decides the keys and hears what is popped.
   * @param wakeKey The process's wake list, always covered.
   * @param interval The pause between two polls that found nothing, in ms,
   * before its random part.
   */
  constructor(
    connection: OwnedConnection,
    owner: PopOwner,
    wakeKey: string,
    interval: () => number,
  ) {
    super(connection, owner, wakeKey);
    this.#interval = interval;
  }

  /**
   * Keeps polling while keys are wanted. A list wanted anew waits for the
   * next poll: the interval is a floor, and a wake-up stays in its list
   * for the lock's `signalExpire` (the driver tries the lock itself when a
   * name starts waiting).
   */
  pump(): void {
    if (this.closed || this.running) return;
    if (this.owner.wanted() !== undefined) this.start();
  }

  protected async run(): Promise<void> {
    /** The signal lists of the polls that failed since the last answer. */
    let failedKeys: Map<string, number> | undefined;
    let failures = 0;
    for (;;) {
      const wanted = this.owner.wanted();
      if (this.closed || wanted === undefined) return;
      if (!await this.prepare()) return;
      this.#nudged = false;
      const sentAt = now();
      let reply;
      try {
        reply = await pollScript.run(
          this.connection,
          [this.wakeKey, ...wanted.keys()],
          [],
        );
      } catch (error) {
        failedKeys = new Map([...failedKeys ?? [], ...wanted]);
        if (this.stops(error)) return;
        await sleep(backoff(++failures));
        continue;
      }
      if (failedKeys !== undefined) {
        this.owner.recovered(failedKeys);
        failedKeys = undefined;
        failures = 0;
      }
      // More may wait behind a wake-up: poll again at once.
      if (this.deliver(reply, wanted, sentAt)) continue;
      if (this.closed) return;
      if (this.#nudged) continue;
      const nudge = this.#nudge = deferred<void>();
      await sleep(this.#interval() * (1 + Math.random() / 2), nudge);
      this.#nudge = undefined;
    }
  }

  /**
   * Runs before each poll; resolves `false` to end the loop. Here nothing:
   * the `"pubsub"` transport subscribes.
   */
  protected prepare(): Promise<boolean> {
    return Promise.resolve(true);
  }

  /** Ends the pause, or skips the next one: poll now. */
  protected nudge(): void {
    this.#nudged = true;
    this.#nudge?.resolve();
  }

  /** Nothing to close: the connection is the waiter's. */
  async closeIfIdle(): Promise<void> {}

  /** Stops polling. */
  async close(): Promise<void> {
    this.closed = true;
    this.nudge();
    await this.ended();
  }
}
