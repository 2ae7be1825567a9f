/**
 * A lease: one holding of a lock, from acquisition to release or loss. It
 * keeps the lock (taking the lock's own expiry after a hand-over, and
 * auto-renewal), knows when the expiry passes without renewal, and aborts
 * the `AbortController` behind `lock.signal` when the holding ends.
 *
 * Timers run only for work that needs them: the expiry timer only once
 * someone holds `lock.signal`; otherwise a passed expiry is noticed when the
 * lease is next asked.
 *
 * @module
 */

import { unrefTimer } from "./_runtime.ts";
import { LockLostError } from "./errors.ts";
import { MAX_TIMER_DELAY } from "./options.ts";

/** How a lease keeps its lock. */
export interface Keeping {
  /** The lock's own expiry in ms; `undefined`: it never expires. */
  readonly expire: number | undefined;
  /** Whether to renew every third of `expire` while held. */
  readonly autoRenewal: boolean;
  /**
   * Sets the lock's expiry to `ms` (`undefined`: none) if this id still
   * holds it; resolves `false` if it does not. It must not refer to the
   * `Lock`, so that a lock dropped without release can be collected and its
   * renewal stop.
   */
  readonly keep: (ms: number | undefined) => Promise<boolean>;
}

type Timer = ReturnType<typeof setTimeout>;

function later(ms: number, callback: () => void): Timer {
  const timer = setTimeout(
    callback,
    Math.min(Math.max(0, ms), MAX_TIMER_DELAY),
  );
  unrefTimer(timer);
  return timer;
}

/** One holding of a lock. */
export class Lease {
  /** The fencing token of this holding. */
  readonly token: number;
  readonly #name: string;
  /** Held weakly, and only by a lease that renews: see {@linkcode Keeping.keep}. */
  #owner: WeakRef<object> | undefined;
  readonly #keeping: Keeping;
  #controller: AbortController | undefined;
  /** `performance.now()` at which the lock expires at the latest. */
  #deadline = Infinity;
  #expire: number | undefined;
  #expiryTimer: Timer | undefined;
  #keepTimer: Timer | undefined;
  #ended = false;
  #reason: unknown;

  /**
   * Starts a holding.
   *
   * @param name The lock's name, for messages.
   * @param token The fencing token drawn by the acquisition.
   * @param owner The `Lock`, held weakly: renewal stops once it is collected.
   * @param since `performance.now()` before which the lock was certainly
   * not yet set for this holder: its expiry is counted from there.
   * @param initial The expiry the lock was set with, in ms: the lock's own,
   * or less after a hand-over; `undefined` when it never expires.
   * @param keeping The lock's own expiry, auto-renewal, and how to keep it.
   * @param controller The controller behind `lock.signal`, if it was read.
   */
  constructor(
    name: string,
    token: number,
    owner: object,
    since: number,
    initial: number | undefined,
    keeping: Keeping,
    controller: AbortController | undefined,
  ) {
    this.#name = name;
    this.token = token;
    this.#keeping = keeping;
    this.#controller = controller;
    this.extended(since, initial);
    // After a hand-over the lock first takes its own expiry, then renews.
    if (
      initial !== undefined &&
      (initial !== keeping.expire || keeping.autoRenewal)
    ) {
      this.#owner = new WeakRef(owner);
      this.#scheduleKeep(since + initial / 3, initial);
    }
  }

  /** Whether the holding has ended: released, lost, or past its expiry. */
  get ended(): boolean {
    this.#expireIfDue();
    return this.#ended;
  }

  /** Why the holding ended, once it has. */
  get reason(): unknown {
    this.#expireIfDue();
    return this.#reason;
  }

  /** Whether the holding ended by loss. */
  get lost(): boolean {
    return this.reason instanceof LockLostError;
  }

  /**
   * Ties `lock.signal`'s controller to this holding: it aborts when the
   * holding ends, at once if it has.
   */
  attach(controller: AbortController): void {
    if (this.#controller === controller) return;
    this.#controller = controller;
    if (this.ended) controller.abort(this.#reason);
    else this.#armExpiry();
  }

  /**
   * Records an extension: the lock now lives until `since + expire` at the
   * latest, counted from when the extending command was sent.
   */
  extended(since: number, expire: number | undefined): void {
    if (this.#ended) return;
    this.#deadline = expire === undefined ? Infinity : since + expire;
    this.#expire = expire;
    this.#armExpiry();
  }

  #armExpiry(): void {
    clearTimeout(this.#expiryTimer);
    this.#expiryTimer = undefined;
    if (this.#controller === undefined || this.#deadline === Infinity) return;
    this.#expiryTimer = later(
      this.#deadline - performance.now(),
      () => this.#expireIfDue(),
    );
  }

  #expireIfDue(): void {
    if (!this.#ended && performance.now() >= this.#deadline) {
      this.lose(
        `Lock '${this.#name}' expired after ${this.#expire} ms without renewal`,
      );
    }
  }

  /**
   * Schedules the next extension, to the lock's own expiry, at `at`;
   * `inForce` is the expiry set last, which paces a retry.
   */
  #scheduleKeep(at: number, inForce: number): void {
    if (this.#ended) return;
    this.#keepTimer = later(at - performance.now(), async () => {
      this.#keepTimer = undefined;
      if (this.#owner?.deref() === undefined) {
        this.lose(
          `Lock '${this.#name}' was garbage collected without release`,
        );
        return;
      }
      const { expire, autoRenewal, keep } = this.#keeping;
      const sentAt = performance.now();
      let held: boolean | undefined;
      try {
        held = await keep(expire);
      } catch {
        // Retried after another third; the expiry reports the loss if no
        // attempt succeeds in time.
      }
      if (this.ended) return;
      if (held === false) {
        this.lose(
          `Lock '${this.#name}' was found gone or held by another id when renewing`,
        );
        return;
      }
      if (held === undefined) {
        this.#scheduleKeep(performance.now() + inForce / 3, inForce);
        return;
      }
      this.extended(sentAt, expire);
      if (autoRenewal && expire !== undefined) {
        this.#scheduleKeep(performance.now() + expire / 3, expire);
      }
    });
  }

  /** Ends the holding by loss: the signal aborts with a {@linkcode LockLostError}. */
  lose(message: string, cause?: unknown): void {
    this.end(new LockLostError(message, { cause }));
  }

  /** Ends the holding: stops every timer and aborts the signal with `reason`. */
  end(reason: unknown): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#reason = reason;
    clearTimeout(this.#expiryTimer);
    clearTimeout(this.#keepTimer);
    this.#expiryTimer = this.#keepTimer = undefined;
    this.#controller?.abort(reason);
  }
}
