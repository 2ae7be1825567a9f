/**
 * Key names. `lock:<name>` and `lock-signal:<name>` are python-redis-lock's
 * own; the others are this library's additions and a Python peer never reads
 * or writes them.
 *
 * @module
 */

/** Prefix of lock keys; `resetAll()` scans for it. */
export const LOCK_PREFIX = "lock:";

/** Prefix of signal lists, where releases leave wake-ups. */
export const SIGNAL_PREFIX = "lock-signal:";

/**
 * The fencing counter. One counter serves every lock name, so that no key
 * per name stays behind for ever; a token is still strictly increasing over
 * the acquisitions of each name.
 */
export const FENCE_KEY = "lock-fence";

/** The keys of one lock. */
export interface LockKeys {
  /** String holding the holder's id. */
  readonly lock: string;
  /** List a release pushes a wake-up to. */
  readonly signal: string;
  /** Counter the fencing tokens are drawn from. */
  readonly fence: string;
}

/** The keys of the lock called `name`. */
export function lockKeys(name: string): LockKeys {
  return {
    lock: LOCK_PREFIX + name,
    signal: SIGNAL_PREFIX + name,
    fence: FENCE_KEY,
  };
}
