/**
 * A lease: one holding of a lock, from acquisition to release or loss. It
 * keeps the lock (taking the lock's own expiry after a hand-over, and
 * auto-renewal), knows when the expiry passes without renewal, and aborts
 * the `AbortController` behind `lock.signal` when the holding ends.
 *
 * The deadline is the earliest moment Redis may drop the key, counted from
 * when the command that set its life was sent:
 * - a command that sets the life to exactly `ms` (acquire, `extend()`, the
 *   claim after a hand-over) may run as soon as it is sent: while its reply
 *   is awaited, and for good if the reply is lost, the deadline is at most
 *   `sent + ms`; once it succeeds, the deadline is `sent + ms`;
 * - a renewal only lengthens (it never shortens what `extend()` set): it
 *   moves the deadline once it succeeds, to at least `sent + ms`.
 * Commands of one lock run in the order they are sent (one connection), so
 * a reply settles every command sent before it.
 *
 * Timers run only for work that needs them: the expiry timer only once
 * someone holds `lock.signal`; otherwise a passed expiry is noticed when the
 * lease is next asked.
 *
 * @module
 */

import { unrefTimer } from "./_runtime.ts";
import type { EpochBound, ServerView } from "./_server_view.ts";
import { LockLostError } from "./errors.ts";
import { MAX_TIMER_DELAY } from "./options.ts";

/** How a lease keeps its lock. */
export interface Keeping {
  /** The lock's own expiry in ms; `undefined`: it never expires. */
  readonly expire: number | undefined;
  /** Whether to renew while held. */
  readonly autoRenewal: boolean;
  /**
   * Sets the lock's remaining life to exactly `ms` (`undefined`: none) if
   * this id still holds it; resolves `false` if it does not. Like `renew`,
   * it must not refer to the `Lock`, so that a lock dropped without release
   * can be collected and its renewal stop.
   */
  readonly keep: (ms: number | undefined) => Promise<boolean>;
  /**
   * Lengthens the lock's remaining life to `ms` if it is shorter and this
   * id still holds it; resolves `false` if it does not.
   */
  readonly renew: (ms: number) => Promise<boolean>;
}

/** A command that sets the lock's life, on its way. */
export interface Setting {
  /** `performance.now()` when it was sent. */
  readonly sentAt: number;
  /** The life it sets, in ms; `undefined`: none. */
  readonly ms: number | undefined;
  /** Whether it sets the life exactly (else it only lengthens it). */
  readonly exact: boolean;
}

type Timer = ReturnType<typeof setTimeout>;

const now = () => performance.now();

/**
 * Calls `callback` at `at` (`performance.now()`), never before: timers may
 * fire early, and longer delays than `setTimeout` honours are split. The
 * timer does not keep the process alive.
 */
export function at(
  time: number,
  callback: () => void,
  set: (t: Timer) => void,
) {
  const left = time - now();
  if (left <= 0) {
    callback();
    return;
  }
  const timer = setTimeout(
    () => at(time, callback, set),
    Math.min(Math.ceil(left), MAX_TIMER_DELAY),
  );
  unrefTimer(timer);
  set(timer);
}

/** One holding of a lock. */
export class Lease implements EpochBound {
  /** The fencing token of this holding. */
  readonly token: number;
  /** The epoch of the lock data the holding was granted in. */
  readonly epoch: string | undefined;
  readonly #name: string;
  /** Held weakly, and only by a lease that renews: see {@linkcode Keeping.keep}. */
  #owner: WeakRef<object> | undefined;
  readonly #keeping: Keeping;
  readonly #view: ServerView;
  #controller: AbortController | undefined;
  /** The deadline set by the commands whose outcome is known. */
  #base = Infinity;
  /** Commands that set the life, sent and not yet answered, in order. */
  readonly #pending: Setting[] = [];
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
   * @param view What the process knows of the server's lock data.
   */
  constructor(
    name: string,
    token: number,
    owner: object,
    since: number,
    initial: number | undefined,
    keeping: Keeping,
    controller: AbortController | undefined,
    view: ServerView,
  ) {
    this.#name = name;
    this.token = token;
    this.#keeping = keeping;
    this.#view = view;
    this.epoch = view.epoch;
    this.#base = initial === undefined ? Infinity : since + initial;
    if (controller !== undefined) this.attach(controller);
    const handedOver = initial !== keeping.expire;
    if (handedOver || keeping.autoRenewal) {
      this.#owner = new WeakRef(owner);
      // After a hand-over the lock takes its own expiry at once; then renews.
      if (handedOver) this.#keepNow();
      else this.#scheduleRenewal();
    }
  }

  /** `performance.now()` at which the lock may be dropped, at the earliest. */
  get deadline(): number {
    let deadline = this.#base;
    for (const { sentAt, ms, exact } of this.#pending) {
      if (exact && ms !== undefined) deadline = Math.min(deadline, sentAt + ms);
    }
    return deadline;
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
    if (this.ended) {
      controller.abort(this.#reason);
      return;
    }
    this.#view.watch(this);
    this.#armExpiry();
  }

  /**
   * Records a command that sets the lock's life, sent now. Report its
   * outcome with {@linkcode settled}.
   */
  setting(ms: number | undefined, exact: boolean): Setting {
    const setting = { sentAt: now(), ms, exact };
    this.#pending.push(setting);
    this.#armExpiry();
    return setting;
  }

  /**
   * The outcome of a setting: `true` it ran and the lock is held, `false`
   * the lock is not held with this id, `undefined` unknown (the reply was
   * lost: it may have run, or may still run), `null` it ran and changed
   * nothing.
   */
  settled(setting: Setting, held: boolean | undefined | null): void {
    const index = this.#pending.indexOf(setting);
    if (index < 0 || this.#ended) return;
    if (held === null) {
      this.#pending.splice(index, 1);
      this.#armExpiry();
      return;
    }
    if (held === false) {
      this.#pending.splice(0, index + 1);
      this.lose(
        `Lock '${this.#name}' was found gone or held by another id`,
      );
      return;
    }
    const life = setting.ms === undefined
      ? Infinity
      : setting.sentAt + setting.ms;
    if (held === undefined) {
      this.#pending.splice(index, 1);
      if (setting.exact) this.#base = Math.min(this.#base, life);
    } else {
      // Every command sent before this one has run before it.
      const before = this.#pending.splice(0, index + 1);
      if (setting.exact) {
        this.#base = life;
      } else {
        let base = this.#base;
        for (const { sentAt, ms, exact } of before) {
          if (exact && ms !== undefined) base = Math.min(base, sentAt + ms);
        }
        this.#base = Math.max(base, life);
      }
    }
    this.#armExpiry();
    this.#expireIfDue();
  }

  #armExpiry(): void {
    clearTimeout(this.#expiryTimer);
    this.#expiryTimer = undefined;
    const deadline = this.deadline;
    if (
      this.#controller === undefined || deadline === Infinity || this.#ended
    ) {
      return;
    }
    at(deadline, () => this.#expireIfDue(), (timer) => {
      this.#expiryTimer = timer;
    });
  }

  #expireIfDue(): void {
    if (this.#ended) return;
    if (this.#view.epoch !== this.epoch && this.epoch !== undefined) {
      this.lose(`Lock '${this.#name}' was lost: Redis lost the lock data`);
    } else if (now() >= this.deadline) {
      this.lose(`Lock '${this.#name}' expired without renewal`);
    }
  }

  /** Sets the lock's own expiry at once (after a hand-over). */
  #keepNow(): void {
    const { expire, keep } = this.#keeping;
    const setting = this.setting(expire, true);
    keep(expire).then(
      (held) => this.#renewed(setting, held),
      () => this.#renewed(setting, undefined),
    );
  }

  /**
   * Schedules the next renewal: when the remaining life falls to two thirds
   * of the lock's expiry (every third of it, when nothing else extends).
   */
  #scheduleRenewal(retry = false): void {
    const { expire, autoRenewal } = this.#keeping;
    if (this.#ended || !autoRenewal || expire === undefined) return;
    clearTimeout(this.#keepTimer);
    const when = retry
      ? now() + expire / 6
      : Math.max(now(), this.deadline - (expire * 2) / 3);
    at(Math.min(when, this.deadline), () => this.#renew(), (timer) => {
      this.#keepTimer = timer;
    });
  }

  #renew(): void {
    this.#keepTimer = undefined;
    if (this.#ended) return;
    if (this.#owner?.deref() === undefined) {
      this.lose(`Lock '${this.#name}' was garbage collected without release`);
      return;
    }
    const expire = this.#keeping.expire!;
    const setting = this.setting(expire, false);
    this.#keeping.renew(expire).then(
      (held) => this.#renewed(setting, held),
      () => this.#renewed(setting, undefined),
    );
  }

  #renewed(setting: Setting, held: boolean | undefined): void {
    this.settled(setting, held);
    if (held !== false) this.#scheduleRenewal(held === undefined);
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
    this.#view.unwatch(this);
    this.#controller?.abort(reason);
  }
}
