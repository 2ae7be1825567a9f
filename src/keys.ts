/**
 * Key names. `lock:<name>` and `lock-signal:<name>` are python-redis-lock's
 * own; the others are this library's additions, and a Python peer never
 * reads or writes them.
 *
 * @module
 */

/** Prefix of lock keys; `resetAll()` scans for it. */
export const LOCK_PREFIX = "lock:";

/** Prefix of signal lists, where releases leave wake-ups for waiters. */
export const SIGNAL_PREFIX = "lock-signal:";

/** Prefix of the queues of this library's waiters. */
export const QUEUE_PREFIX = "lock-queue:";

/**
 * Prefix of the turn state of a name: whether a racers' turn is open, and
 * when the next is due. Racers (python-redis-lock's waiters, and `fair:
 * false`) wait on the signal list rather than in the queue: once per cycle
 * of the queue while they show up, and once per `TURN_QUIET` while they do
 * not, a release lets the lock free for them for `TURN` ms instead of
 * handing it to the queue.
 */
export const TURN_PREFIX = "lock-turn:";

/** Milliseconds a racers' turn lasts at most. */
export const TURN = 10;

/** Milliseconds between turns while no racer takes one. */
export const TURN_QUIET = 5_000;

/** Milliseconds the turn state is kept without a hand-over. */
export const TURN_MEMORY = 60_000;

/**
 * Prefix of wake lists: one per waiting process, where hand-overs are
 * pushed. The process's random id follows.
 */
export const WAKE_PREFIX = "lock-wake:";

/**
 * Prefix of liveness keys: one per waiting process, refreshed while it has
 * a waiter queued. A hand-over skips the queue entries of a process whose
 * key has expired: it died, or lost Redis for longer than `ALIVE_TTL`.
 */
export const ALIVE_PREFIX = "lock-alive:";

/**
 * The fencing counter, `<epoch>:<last token>`. One counter serves every lock
 * name, so that no key per name stays behind for ever; a token is still
 * strictly increasing over the acquisitions of each name. Tokens follow the
 * server's clock in µs (each at least one more than the last), so that they
 * never go back, even when the counter is lost with the data.
 */
export const FENCE_KEY = "lock-fence";

/**
 * When the server started, in ms of its own clock (Redlock's masters): a
 * master that lost its data grants no lock with expiry `e` until `e` ms
 * after it started, since holders may still count it among their quorum.
 * Missing after a restart without persistence; the first acquirer sets it
 * from the server's uptime.
 */
export const START_KEY = "lock-start";

/**
 * Milliseconds a waiting process stays alive in Redis without a refresh;
 * it refreshes every second while queued.
 */
export const ALIVE_TTL = 5_000;

/**
 * Milliseconds a queue lives without a refresh by one of its waiters: the
 * queue of waiters that all died goes away by itself.
 */
export const QUEUE_TTL = 5_000;

/**
 * The longest expiry a hand-over gives the new holder, in ms. The holder
 * lengthens it to its own `expire` once running; a process that died while
 * queued holds the lock no longer than this.
 */
export const HAND_OVER_EXPIRE = 5_000;

/** The keys of one lock, in the order every script takes them. */
export interface LockKeys {
  /** String holding the holder's id. */
  readonly lock: string;
  /** List a release without queued waiters pushes a wake-up to. */
  readonly signal: string;
  /** List of queued waiters of this library. */
  readonly queue: string;
  /** Counter the fencing tokens are drawn from. */
  readonly fence: string;
  /** The turn state of racers. */
  readonly turn: string;
  /** `[lock, signal, queue, fence, turn]`, as the scripts that let go take them. */
  readonly all: readonly string[];
  /** `[lock]`, for the scripts that only set an expiry. */
  readonly onlyLock: readonly string[];
  /** `[lock, fence]`, as CLAIM takes them. */
  readonly forClaim: readonly string[];
}

/** The keys of the lock called `name`. */
export function lockKeys(name: string): LockKeys {
  const lock = LOCK_PREFIX + name;
  const signal = SIGNAL_PREFIX + name;
  const queue = QUEUE_PREFIX + name;
  const turn = TURN_PREFIX + name;
  return {
    lock,
    signal,
    queue,
    fence: FENCE_KEY,
    turn,
    all: [lock, signal, queue, FENCE_KEY, turn],
    onlyLock: [lock],
    forClaim: [lock, FENCE_KEY],
  };
}
