/**
 * A lease: one holding of a lock, from acquisition to release or loss. It
 * owns the timers of that holding (auto-renewal, and the moment the expiry
 * passes without renewal) and the `AbortController` behind `lock.signal`.
 *
 * @module
 */

import { unrefTimer } from "./_runtime.ts";
import { LockLostError } from "./errors.ts";
import { MAX_TIMER_DELAY } from "./options.ts";

/** What a renewal found: extended, gone or held by another id, or kept without expiry. */
export type RenewResult = "extended" | "lost" | "persistent";

/** How a lease renews itself. */
export interface Renewal {
  /** The expiry each renewal sets, in ms; renewals run every third of it. */
  readonly expire: number;
  /**
   * Extends the lock in Redis. It must not refer to the `Lock`, so that a
   * lock dropped without release can be collected and its renewal stop.
   */
  readonly renew: () => Promise<RenewResult>;
}

type Timer = ReturnType<typeof setTimeout>;

function later(ms: number, callback: () => void): Timer {
  const timer = setTimeout(callback, Math.min(ms, MAX_TIMER_DELAY));
  unrefTimer(timer);
  return timer;
}

/** The timers and the signal of one holding of a lock. */
export class Lease {
  /** The fencing token of this holding. */
  readonly token: number;
  readonly #name: string;
  readonly #controller: AbortController;
  readonly #owner: WeakRef<object>;
  readonly #renewal: Renewal | undefined;
  #deadline = Infinity;
  #expiryTimer: Timer | undefined;
  #renewTimer: Timer | undefined;
  #ended = false;

  /**
   * Starts the timers of a holding.
   *
   * @param name The lock's name, for messages.
   * @param token The fencing token drawn by the acquisition.
   * @param controller Aborted when the holding ends.
   * @param owner The `Lock`, held weakly: renewal stops once it is collected.
   * @param sentAt `performance.now()` when the acquiring command was sent.
   * @param expire The lock's expiry in ms, if any.
   * @param renewal How to renew, if auto-renewal is on.
   */
  constructor(
    name: string,
    token: number,
    controller: AbortController,
    owner: object,
    sentAt: number,
    expire: number | undefined,
    renewal: Renewal | undefined,
  ) {
    this.#name = name;
    this.token = token;
    this.#controller = controller;
    this.#owner = new WeakRef(owner);
    this.#renewal = renewal;
    if (expire !== undefined) this.extended(sentAt, expire);
    this.#scheduleRenewal();
  }

  /** Whether the holding has ended (released or lost). */
  get ended(): boolean {
    return this.#ended;
  }

  /** Why the holding ended, once it has. */
  get reason(): unknown {
    return this.#controller.signal.reason;
  }

  /** Whether the holding ended by loss. */
  get lost(): boolean {
    return this.#controller.signal.reason instanceof LockLostError;
  }

  /**
   * Records an extension: the lock now lives until `sentAt + expire` at the
   * latest, counted from when the extending command was sent.
   */
  extended(sentAt: number, expire: number | undefined): void {
    if (this.#ended) return;
    clearTimeout(this.#expiryTimer);
    this.#expiryTimer = undefined;
    this.#deadline = expire === undefined ? Infinity : sentAt + expire;
    if (this.#deadline === Infinity) return;
    this.#expiryTimer = later(
      Math.max(0, this.#deadline - performance.now()),
      () =>
        this.lose(
          `Lock '${this.#name}' expired after ${expire} ms without renewal`,
        ),
    );
  }

  #scheduleRenewal(): void {
    const renewal = this.#renewal;
    if (renewal === undefined || this.#ended) return;
    this.#renewTimer = later(Math.ceil(renewal.expire / 3), async () => {
      this.#renewTimer = undefined;
      if (this.#owner.deref() === undefined) {
        this.lose(
          `Lock '${this.#name}' was garbage collected without release`,
        );
        return;
      }
      const sentAt = performance.now();
      let result: RenewResult | undefined;
      try {
        result = await renewal.renew();
      } catch {
        // A failed renewal is retried at the next tick; the expiry timer
        // reports the loss if none succeeds in time.
      }
      if (this.#ended) return;
      if (result === "lost") {
        this.lose(
          `Lock '${this.#name}' was found gone or held by another id when renewing`,
        );
        return;
      }
      if (result === "extended") this.extended(sentAt, renewal.expire);
      if (result === "persistent") this.extended(sentAt, undefined);
      this.#scheduleRenewal();
    });
  }

  /** Ends the holding by loss: aborts the signal with a {@linkcode LockLostError}. */
  lose(message: string, cause?: unknown): void {
    this.end(new LockLostError(message, { cause }));
  }

  /** Ends the holding: stops every timer and aborts the signal with `reason`. */
  end(reason: unknown): void {
    if (this.#ended) return;
    this.#ended = true;
    clearTimeout(this.#expiryTimer);
    clearTimeout(this.#renewTimer);
    this.#expiryTimer = this.#renewTimer = undefined;
    this.#controller.abort(reason);
  }
}
