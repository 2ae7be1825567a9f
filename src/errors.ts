/**
 * The errors a caller is meant to catch. Bad arguments are not among them:
 * they throw the standard `TypeError` or `RangeError`.
 *
 * @module
 */

/**
 * Base class of every error this library raises on purpose. A failure of
 * Redis itself (connection lost, script error) arrives as a `LockError` with
 * the client's error in `cause`.
 *
 * @example Telling lock errors from others
 * ```ts
 * import { LockError } from "@x/redis-lock";
 *
 * function describe(error: unknown): string {
 *   return error instanceof LockError ? `lock: ${error.message}` : String(error);
 * }
 * ```
 */
export class LockError extends Error {
  /**
   * Creates a lock error.
   *
   * @param message What went wrong, naming the lock.
   * @param options `cause`: the underlying error, if any.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "LockError";
  }
}

/**
 * `acquire()` was called while the lock is already held with this id: by
 * this `Lock` or by another instance given the same `id`.
 * (python-redis-lock: `AlreadyAcquired`.)
 *
 * @example
 * ```ts ignore
 * import { AlreadyAcquiredError, Lock } from "@x/redis-lock";
 *
 * const lock = new Lock(client, "report", { id: "worker-1" });
 * await lock.acquire();
 * await new Lock(client, "report", { id: "worker-1" }).acquire()
 *   .catch((e) => console.assert(e instanceof AlreadyAcquiredError));
 * ```
 */
export class AlreadyAcquiredError extends LockError {
  /**
   * Creates the error.
   *
   * @param message What went wrong, naming the lock.
   * @param options `cause`: the underlying error, if any.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "AlreadyAcquiredError";
  }
}

/**
 * The lock is not held with this id: `release()` or `extend()` of a lock that
 * expired, was reset or was never acquired, and the `acquire()` function with
 * `blocking: false` finding the lock busy.
 * (python-redis-lock: `NotAcquired`.)
 *
 * @example
 * ```ts ignore
 * import { Lock, NotAcquiredError } from "@x/redis-lock";
 *
 * await new Lock(client, "report").release()
 *   .catch((e) => console.assert(e instanceof NotAcquiredError));
 * ```
 */
export class NotAcquiredError extends LockError {
  /**
   * Creates the error.
   *
   * @param message What went wrong, naming the lock.
   * @param options `cause`: the underlying error, if any.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "NotAcquiredError";
  }
}

/**
 * `extend()` found the lock held with this id but without an expiry, so
 * there is nothing to extend. (python-redis-lock: `NotExpirable`.)
 *
 * @example
 * ```ts ignore
 * import { Lock, NotExpirableError } from "@x/redis-lock";
 *
 * const lock = new Lock(client, "report"); // no expire
 * await lock.acquire();
 * await lock.extend(10_000).catch((e) => console.assert(e instanceof NotExpirableError));
 * ```
 */
export class NotExpirableError extends LockError {
  /**
   * Creates the error.
   *
   * @param message What went wrong, naming the lock.
   * @param options `cause`: the underlying error, if any.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "NotExpirableError";
  }
}

/**
 * The `acquire()` function waited for its whole `timeout` without getting
 * the lock. (`lock.acquire()` resolves `false` instead.)
 *
 * @example
 * ```ts ignore
 * import { acquire, AcquireTimeoutError } from "@x/redis-lock";
 *
 * try {
 *   await using lock = await acquire(client, "report", { timeout: 1_000 });
 * } catch (e) {
 *   if (!(e instanceof AcquireTimeoutError)) throw e;
 * }
 * ```
 */
export class AcquireTimeoutError extends LockError {
  /**
   * Creates the error.
   *
   * @param message What went wrong, naming the lock.
   * @param options `cause`: the underlying error, if any.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "AcquireTimeoutError";
  }
}

/**
 * The holder can no longer be sure it holds the lock: a renewal or
 * `extend()` found it gone or owned by another id, its expiry passed without
 * renewal, or it was reset. It is the `reason` of `lock.signal`.
 *
 * @example
 * ```ts ignore
 * import { acquire, LockLostError } from "@x/redis-lock";
 *
 * await using lock = await acquire(client, "report", { expire: 10_000, autoRenewal: true });
 * lock.signal.addEventListener("abort", () => {
 *   if (lock.signal.reason instanceof LockLostError) console.error(lock.signal.reason.message);
 * });
 * ```
 */
export class LockLostError extends LockError {
  /**
   * Creates the error.
   *
   * @param message What went wrong, naming the lock.
   * @param options `cause`: the underlying error, if any.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "LockLostError";
  }
}
