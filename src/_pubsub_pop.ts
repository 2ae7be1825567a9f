/**
 * The `"pubsub"` wake transport: the polls of `"poll"`, woken by Pub/Sub.
 * A hand-over to a process of this transport is also published on the
 * channel named as its wake list (`lock-wake:<process>`); the process keeps
 * one subscription to it, on a connection of its own, and polls its lists
 * at each message, and every `TICK` in any case.
 *
 * - Subscribed before the first poll: a hand-over pushed before the
 *   subscription is found by that poll, and one pushed after it is
 *   announced. (redis-lock-py's issue #3 is a release missed between a
 *   failed SET and the SUBSCRIBE.)
 * - A message lost with a dropped subscription costs at most a `TICK`: the
 *   poll finds the wake-up in the list, and the subscription is made again.
 * - Releases of python-redis-lock announce nothing: a racer hears them at
 *   the next poll.
 *
 * @module
 */

import type { Connection, Subscription } from "./clients.ts";
import type { OwnedConnection } from "./_owned_connection.ts";
import { sleep } from "./_owned_connection.ts";
import { PollingPop } from "./_polling_pop.ts";
import { backoff, type PopOwner } from "./_wake_transport.ts";

/** Wake-ups fetched by polling when Pub/Sub announces them. */
export class PubSubPop extends PollingPop {
  readonly #main: Connection;
  #subscription: Subscription | undefined;
  #failures = 0;

  /**
   * @param connection The waiter's command connection, for the polls.
   * @param owner Decides the keys and hears what is popped.
   * @param wakeKey The process's wake list, and the channel announcing it.
   * @param main The application's connection, which subscribes.
   * @param tick The pause between two polls without a message, in ms.
   */
  constructor(
    connection: OwnedConnection,
    owner: PopOwner,
    wakeKey: string,
    main: Connection,
    tick: number,
  ) {
    super(connection, owner, wakeKey, () => tick);
    this.#main = main;
  }

  /** Subscribes unless subscribed; a failure is retried at the next poll. */
  protected override async prepare(): Promise<boolean> {
    if (this.#subscription !== undefined) return true;
    try {
      const subscription = await this.#main.subscribe(
        this.wakeKey,
        () => this.nudge(),
      );
      if (this.closed) {
        await subscription.close();
        return false;
      }
      this.#subscription = subscription;
      this.#failures = 0;
      void subscription.ended.then(() => {
        // Dropped: subscribe again, and poll for what was announced meanwhile.
        if (this.#subscription !== subscription) return;
        this.#subscription = undefined;
        this.nudge();
      });
    } catch (error) {
      if (this.stops(error)) return false;
      await sleep(backoff(++this.#failures));
    }
    return !this.closed;
  }

  /** Ends the subscription once the loop has ended. */
  override async closeIfIdle(): Promise<void> {
    if (this.running) return;
    const subscription = this.#subscription;
    this.#subscription = undefined;
    await subscription?.close();
  }

  /** Stops polling and ends the subscription. */
  override async close(): Promise<void> {
    await super.close();
    const subscription = this.#subscription;
    this.#subscription = undefined;
    await subscription?.close();
  }
}
