/**
 * A pending wait and the local queue of a lock name: the state the waiter
 * keeps per `acquire()` and per name.
 *
 * @module
 */

import { HAND_OVER_EXPIRE, type LockKeys } from "./keys.ts";

/** One `acquire()` that waits. */
export interface WaitRequest {
  readonly name: string;
  readonly keys: LockKeys;
  readonly id: string;
  /** The lock's expiry in ms; `undefined`: none. */
  readonly expire: number | undefined;
  readonly signalExpire: number;
  /**
   * First come, first served: queue in Redis and be handed the lock. Else
   * wait for a release's wake-up in the signal list and race for the lock,
   * as python-redis-lock's waiters do.
   */
  readonly fair: boolean;
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

type Timer = ReturnType<typeof setTimeout>;

/** One pending `acquire()`. */
export class Wait {
  readonly request: WaitRequest;
  readonly #resolve: (value: Acquisition | undefined) => void;
  readonly #reject: (reason: unknown) => void;
  settled = false;
  /** Set when the caller gave up: `undefined` reason for a timeout. */
  abandoned: { reason: unknown } | undefined;
  /** Set while this wait has an entry in the queue in Redis (fair). */
  entry: string | undefined;
  /** Set while this wait listens for wake-ups in the signal list (not fair). */
  armed = false;
  ticket: string | undefined;
  /** `performance.now()` before which no hand-over to this wait happened. */
  since = 0;
  timer: Timer | undefined;
  onAbort: (() => void) | undefined;

  constructor(
    request: WaitRequest,
    resolve: (value: Acquisition | undefined) => void,
    reject: (reason: unknown) => void,
  ) {
    this.request = request;
    this.#resolve = resolve;
    this.#reject = reject;
  }

  /** The expiry a hand-over gives this waiter. */
  get handOverExpire(): number {
    const { expire } = this.request;
    return expire === undefined
      ? HAND_OVER_EXPIRE
      : Math.min(expire, HAND_OVER_EXPIRE);
  }

  #finish(): boolean {
    if (this.settled) return false;
    this.settled = true;
    clearTimeout(this.timer);
    if (this.onAbort) {
      this.request.signal?.removeEventListener("abort", this.onAbort);
    }
    return true;
  }

  resolve(value: Acquisition | undefined): void {
    if (this.#finish()) this.#resolve(value);
  }

  reject(reason: unknown): void {
    if (this.#finish()) this.#reject(reason);
  }

  /** Whether the caller aborted (a timeout still takes a lock it got). */
  get aborted(): boolean {
    return this.abandoned !== undefined && this.abandoned.reason !== undefined;
  }

  /** Settles a wait that gave up: `false` on timeout, the reason on abort. */
  settleAbandoned(): void {
    if (this.abandoned?.reason === undefined) this.resolve(undefined);
    else this.reject(this.abandoned.reason);
  }
}

/** The waits of one lock name in this process. */
export class NameQueue {
  readonly keys: LockKeys;
  readonly waits: Wait[] = [];
  /** Redis operations on this name run one after another. */
  chain: Promise<void> = Promise.resolve();
  ttlTimer: Timer | undefined;

  constructor(keys: LockKeys) {
    this.keys = keys;
  }

  get head(): Wait | undefined {
    return this.waits[0];
  }
}
