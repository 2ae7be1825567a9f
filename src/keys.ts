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
 * when the next is due. Racers (python-redis-lock's waiters) wait on the
 * signal list rather than in the queue: once per cycle of the queue while
 * they show up, and once per `TURN_QUIET` while they do not, a release lets
 * the lock free for them for `TURN` ms instead of handing it to the queue.
 */
export const TURN_PREFIX = "lock-turn:";

/** Milliseconds a racers' turn lasts at most. */
export const TURN = 10;

/**
 * Milliseconds a process may keep a lock through holders' turns (see
 * `_holder_turns.ts`): a release gives its process a turn while its tenure
 * is shorter than this.
 */
export const HOLDER_TENURE = 20;

/**
 * Holders' turns a process gets at most in one tenure: turns of equal length
 * in acquisitions keep processes' shares equal.
 */
export const HOLDER_TURNS = 64;

/**
 * Milliseconds: a holding longer than this gives its process no turn (turns
 * are for work too short to be worth waking a sleeping waiter), and a turn
 * is taken with no command only within this of the release that gave it.
 */
export const HOLDER_TURN = 5;

/** Milliseconds a holder's turn keeps the lock at most. */
export const TURN_LEASE = 250;

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
 * The first character of the id of a process that waits with the
 * `"pubsub"` transport: a hand-over to it is also published on the channel
 * named as its wake list. Ids are base64url otherwise, which has no `~`.
 */
export const PUBSUB_MARK = "~";

/**
 * Prefix of liveness keys: one per waiting process, refreshed while it has
 * a waiter queued. A hand-over skips the queue entries of a process whose
 * key has expired: it died, or lost Redis for longer than `ALIVE_TTL`. On a
 * Cluster, one hash per lock (`lock-alive:{name}`, in the lock's slot)
 * holds a field per queued wait instead.
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
  /**
   * `[lock, signal, queue, fence, turn]`, as the scripts that let go take
   * them, and the liveness hash on a Cluster.
   */
  readonly all: readonly string[];
  /** `[lock]`, for the scripts that only set an expiry. */
  readonly onlyLock: readonly string[];
  /** `[lock, fence]`, as CLAIM and TRY take them. */
  readonly forClaim: readonly string[];
  /** Whether the keys are a Cluster's, which the scripts' variants take. */
  readonly cluster: boolean;
  /**
   * On a Cluster, the hash of the queued waits alive (`lock-alive:{name}`):
   * one field per wait, the server time (ms) until which it is alive.
   */
  readonly alive: string;
}

/**
 * The keys of the lock called `name`. On a Redis Cluster every key of one
 * lock must hash to one slot: the name is wrapped in a hash tag
 * (`lock:{name}`) unless it has one, and the fencing counter is that of
 * the slot (`lock-fence:{<tag of the slot>}`: at most one counter per slot,
 * however many names).
 */
export function lockKeys(name: string, cluster = false): LockKeys {
  const part = cluster && hashTag(name) === undefined ? `{${name}}` : name;
  const lock = LOCK_PREFIX + part;
  const signal = SIGNAL_PREFIX + part;
  const queue = QUEUE_PREFIX + part;
  const turn = TURN_PREFIX + part;
  const fence = cluster ? `${FENCE_KEY}:{${slotTag(slotOf(lock))}}` : FENCE_KEY;
  const alive = cluster ? ALIVE_PREFIX + part : "";
  return {
    lock,
    signal,
    queue,
    fence,
    turn,
    all: cluster
      ? [lock, signal, queue, fence, turn, alive]
      : [lock, signal, queue, fence, turn],
    onlyLock: [lock],
    forClaim: [lock, fence],
    cluster,
    alive,
  };
}

/** The hash tag of a key, as Redis Cluster reads it, if it has one. */
export function hashTag(key: string): string | undefined {
  const open = key.indexOf("{");
  if (open < 0) return undefined;
  const close = key.indexOf("}", open + 1);
  if (close <= open + 1) return undefined;
  return key.slice(open + 1, close);
}

const encoder = new TextEncoder();

/** CRC16-CCITT (XMODEM), as Redis Cluster hashes keys. */
function crc16(bytes: Uint8Array): number {
  let crc = 0;
  for (const byte of bytes) {
    crc ^= byte << 8;
    for (let bit = 0; bit < 8; bit++) {
      crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
    }
  }
  return crc;
}

/** The cluster slot of a key (0 to 16383). */
export function slotOf(key: string): number {
  return crc16(encoder.encode(hashTag(key) ?? key)) % 16384;
}

/** For each slot, a short string that hashes to it; made on first use. */
let slotTags: string[] | undefined;

/** A short hash tag whose slot is `slot`. */
export function slotTag(slot: number): string {
  if (slotTags === undefined) {
    const tags: string[] = new Array(16384);
    let missing = 16384;
    for (let i = 0; missing > 0; i++) {
      const tag = i.toString(36);
      const at = crc16(encoder.encode(tag)) % 16384;
      if (tags[at] === undefined) {
        tags[at] = tag;
        missing--;
      }
    }
    slotTags = tags;
  }
  return slotTags[slot];
}
