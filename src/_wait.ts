/**
 * One pending `acquire()` that waits: its request, how it ends, and the
 * timer and listener it owns.
 *
 * A wait ends exactly once, by one of: {@linkcode Wait.resolve} (it got the
 * lock), {@linkcode Wait.fail} (an error), or {@linkcode Wait.settleGaveUp}
 * (the caller stopped wanting it: timeout, abort, shutdown). Ending clears
 * the wait's timer and abort listener, whatever the path.
 *
 * @module
 */

import { deferred } from "./_deferred.ts";
import { HAND_OVER_EXPIRE, type LockKeys } from "./keys.ts";
import { MAX_TIMER_DELAY } from "./options.ts";

/** One `acquire()` that waits. */
export interface WaitRequest {
  readonly name: string;
  readonly keys: LockKeys;
  readonly id: string;
  /** The lock's expiry in ms; `undefined`: none. */
  readonly expire: number | undefined;
  readonly signalExpire: number;
  /** With the `"poll"` transport: ms between polls, at least. */
  readonly pollInterval: number;
  /** `performance.now()` at which the caller gives up; may be `Infinity`. */
  readonly deadline: number;
  readonly signal: AbortSignal | undefined;
}

/** How a wait ended with the lock. */
export interface Acquisition {
  /** The fencing token. */
  readonly token: number;
  /**
   * `performance.now()` before which the lock was certainly not yet set for
   * this holder: its expiry counts from here.
   */
  readonly since: number;
  /**
   * The expiry the lock was set with, in ms: the lock's own, or at most
   * `HAND_OVER_EXPIRE` after a hand-over; `undefined`: none.
   */
  readonly initial: number | undefined;
}

/** Why a caller stopped wanting the lock. */
export interface GaveUp {
  /** `undefined` for a timeout; else the rejection (abort reason, shutdown). */
  readonly reason: unknown;
}

/**
 * How long a wait that gave up may wait for its cleanup in Redis before it
 * settles anyway (the cleanup goes on): a slow or unreachable Redis delays
 * a timeout or an abort by at most this.
 */
export const SETTLE_GRACE = 500;

type Timer = ReturnType<typeof setTimeout>;

/** One pending `acquire()`. */
export class Wait {
  readonly request: WaitRequest;
  readonly promise: Promise<Acquisition | undefined>;
  readonly #resolve: (value: Acquisition | undefined) => void;
  readonly #reject: (reason: unknown) => void;
  #settled = false;
  #gaveUp: GaveUp | undefined;
  #timer: Timer | undefined;
  #onAbort: (() => void) | undefined;

  /**
   * @param request What is asked.
   * @param changed Called when the caller gives up (deadline or abort).
   * @param timedOut Settles a wait whose deadline passed: `false`, or a
   * rejection when Redis was unreachable.
   */
  constructor(
    request: WaitRequest,
    readonly changed: () => void,
    readonly timedOut: () => unknown,
  ) {
    this.request = request;
    const { promise, resolve, reject } = deferred<Acquisition | undefined>();
    this.promise = promise;
    this.#resolve = resolve;
    this.#reject = reject;
    const { deadline, signal } = request;
    if (deadline !== Infinity) this.#armDeadline();
    if (signal !== undefined) {
      this.#onAbort = () => this.giveUp({ reason: signal.reason });
      signal.addEventListener("abort", this.#onAbort, { once: true });
      if (signal.aborted) this.#onAbort();
    }
  }

  /** Whether the wait has ended. */
  get settled(): boolean {
    return this.#settled;
  }

  /** Whether the caller still wants the lock. */
  get wants(): boolean {
    return !this.#settled && this.#gaveUp === undefined;
  }

  /** Why the caller stopped wanting the lock, if it did. */
  get gaveUp(): GaveUp | undefined {
    return this.#gaveUp;
  }

  /** The expiry a hand-over gives this waiter. */
  get handOverExpire(): number {
    const { expire } = this.request;
    return expire === undefined
      ? HAND_OVER_EXPIRE
      : Math.min(expire, HAND_OVER_EXPIRE);
  }

  /** Timers may fire early: the deadline is checked, and armed again. */
  #armDeadline(): void {
    const left = this.request.deadline - performance.now();
    if (left > 0) {
      this.#timer = setTimeout(
        () => this.#armDeadline(),
        Math.min(Math.ceil(left), MAX_TIMER_DELAY),
      );
    } else {
      this.#timer = undefined;
      this.giveUp({ reason: undefined });
    }
  }

  /**
   * The caller stops wanting the lock. The wait settles once its owner has
   * cleaned up after it in Redis, or after {@linkcode SETTLE_GRACE}.
   */
  giveUp(gaveUp: GaveUp): void {
    if (!this.wants) return;
    this.#gaveUp = gaveUp;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.settleGaveUp(), SETTLE_GRACE);
    this.changed();
  }

  #finish(): boolean {
    if (this.#settled) return false;
    this.#settled = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#onAbort !== undefined) {
      this.request.signal?.removeEventListener("abort", this.#onAbort);
    }
    return true;
  }

  /** Ends the wait with the lock. */
  resolve(acquisition: Acquisition): void {
    if (this.#finish()) this.#resolve(acquisition);
  }

  /** Ends the wait with an error. */
  fail(error: unknown): void {
    if (this.#finish()) this.#reject(error);
  }

  /** Ends a wait whose caller gave up: `false` on timeout, else the reason. */
  settleGaveUp(): void {
    const gaveUp = this.#gaveUp;
    if (gaveUp === undefined || !this.#finish()) return;
    if (gaveUp.reason !== undefined) {
      this.#reject(gaveUp.reason);
      return;
    }
    const failure = this.timedOut();
    if (failure === undefined) this.#resolve(undefined);
    else this.#reject(failure);
  }
}
