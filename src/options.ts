/**
 * Options of a lock and of one acquisition, and their validation. Every
 * check runs before any work starts and names the argument and its value.
 *
 * @module
 */

/**
 * How a waiting process hears that a lock is handed to it or free:
 *
 * - `"blpop"`: one `BLPOP` per client and process, on a connection of the
 *   library's own, over the process's wake list and the signal lists of the
 *   names it waits for (where python-redis-lock's releases push). Wakes at
 *   once. Needs a client that opens connections.
 * - `"poll"`: a script pops the same lists every `pollInterval` ms (plus up
 *   to half of it, at random), on a connection of the library's own or, for
 *   a client that cannot open one (an HTTP client), on the client's. For
 *   clients or proxies that refuse blocking commands.
 * - `"pubsub"`: the polls of `"poll"`, made at once when a hand-over to the
 *   process is published on its channel, and every second otherwise. For
 *   clients or proxies that refuse blocking commands but subscribe. On a
 *   Redis Cluster (the default there), a wait hears of a hand-over to it on
 *   the lock's sharded channel (`SSUBSCRIBE`, one connection per master);
 *   `"poll"` tries every `pollInterval` ms there (at most 2 s), and
 *   `"blpop"` is refused.
 *
 * @example Waiting through an HTTP Redis client
 * ```ts ignore
 * import { acquire } from "@x/redis-lock";
 *
 * // A client with send(command, args) and no duplicate() polls by default.
 * await using lock = await acquire(httpClient, "report", {
 *   transport: "poll",
 *   pollInterval: 200,
 * });
 * ```
 */
export type Transport = "blpop" | "poll" | "pubsub";

/** The transports, as {@linkcode LockOptions.transport} takes them. */
export const TRANSPORTS: readonly Transport[] = ["blpop", "poll", "pubsub"];

/** Options of {@linkcode Lock}, fixed for the life of the instance. */
export interface LockOptions {
  /**
   * Milliseconds after which Redis drops the lock if it is neither released
   * nor extended. A positive integer; absent, the lock never expires (and a
   * crashed holder keeps it until `reset()`).
   *
   * @default {undefined}
   */
  expire?: number;
  /**
   * The owner id stored as the lock's value. Two `Lock` instances with the
   * same id are the same owner: either may extend or release.
   *
   * @default {a random id of 24 characters}
   */
  id?: string;
  /**
   * Keep extending the lock while it is held, every third of `expire`. Needs
   * `expire`. The timer stops on release, on loss and on disposal, and never
   * keeps the process alive.
   *
   * @default {false}
   */
  autoRenewal?: boolean;
  /**
   * Milliseconds a release signal stays in Redis for a waiter that was
   * between two commands when the lock was released.
   *
   * @default {1000}
   */
  signalExpire?: number;
  /**
   * Holders' turns: a holder of this process that acquires the lock again
   * right after releasing it (a loop) keeps it, even with others waiting,
   * while its holdings are short (under 5 ms) and its process has held it
   * for less than 20 ms and 64 acquisitions; then its release hands the
   * lock to the next in line. Nobody sleeping is woken within a turn, so
   * short holdings in a loop move several times faster, and no waiter
   * waits longer than its place in line × (20 ms + the hold + a
   * hand-over). With `false`, every release hands the lock
   * to the next in line: first come, first served per acquisition. Not on
   * a Cluster.
   *
   * @default {true}
   */
  turns?: boolean;
  /**
   * Whether Python processes (python-redis-lock) may use the lock. With
   * `false`, a release, reset or holder's turn of this lock leaves no
   * wake-up in the signal list and gives racers (Python's waiters) no turn:
   * three commands fewer per release. Every process on the lock must then
   * agree.
   *
   * @default {true}
   */
  pythonPeers?: boolean;
  /**
   * How a waiter hears that the lock is handed to it or free: see
   * {@linkcode Transport}. Waiters of one client that use one transport
   * share it.
   *
   * @default {"blpop"; "pubsub" on a Cluster, or for a client that cannot open connections but subscribes; else "poll"}
   */
  transport?: Transport;
  /**
   * With `transport: "poll"` (also on a Cluster): milliseconds between two
   * polls that found nothing, at least; a random part of up to half of it
   * is added. A process polls no faster than the shortest interval among
   * its waits.
   *
   * @default {100}
   */
  pollInterval?: number;
}

/** Options of one call of {@linkcode Lock.acquire}. */
export interface AcquireOptions {
  /**
   * Wait for the lock when it is busy. With `false` the call answers at once.
   *
   * @default {true}
   */
  blocking?: boolean;
  /**
   * Milliseconds to wait at most; `Infinity` waits for ever. Not allowed
   * together with `blocking: false`.
   *
   * @default {Infinity}
   */
  timeout?: number;
  /**
   * Gives up waiting when aborted: the call rejects with `signal.reason` and
   * leaves nothing behind in Redis.
   *
   * @default {undefined}
   */
  signal?: AbortSignal;
}

/** Options of the {@linkcode acquire} function: those of the lock and of the call. */
export interface AcquireLockOptions extends LockOptions, AcquireOptions {}

/** The longest delay `setTimeout` honours; longer ones fire at once. */
export const MAX_TIMER_DELAY = 2 ** 31 - 1;

/** Lock options after validation, with defaults filled in. */
export interface ValidLockOptions {
  expire: number | undefined;
  id: string | undefined;
  autoRenewal: boolean;
  signalExpire: number;
  turns: boolean;
  pythonPeers: boolean;
  transport: Transport | undefined;
  pollInterval: number;
}

/** Acquire options after validation, with defaults filled in. */
export interface ValidAcquireOptions {
  blocking: boolean;
  timeout: number;
  signal: AbortSignal | undefined;
}

function show(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "function") return "a function";
  if (value !== null && typeof value === "object") {
    return Array.isArray(value) ? "an array" : "an object";
  }
  return String(value);
}

/**
 * The message style of the standard library:
 * `Cannot create lock as 'expire' must be a positive integer: current value is -1`.
 */
export function invalid(
  action: string,
  name: string,
  rule: string,
  value: unknown,
): string {
  return `Cannot ${action} as '${name}' ${rule}: current value is ${
    show(value)
  }`;
}

/** Checks a millisecond count that Redis receives as an integer. */
export function positiveInteger(
  action: string,
  name: string,
  value: unknown,
): number {
  if (typeof value !== "number") {
    throw new TypeError(invalid(action, name, "must be a number", value));
  }
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new RangeError(
      invalid(action, name, "must be a positive integer", value),
    );
  }
  return value;
}

/**
 * Checks that `options` is absent or an object whose every key is one of
 * `known`: a misspelt option (`expires`, `timeOut`) would otherwise be
 * silently ignored, and a lock meant to expire would never expire.
 */
export function optionsObject(
  action: string,
  options: unknown,
  known: readonly string[],
): Record<string, unknown> {
  if (options === undefined) return {};
  if (
    options === null || typeof options !== "object" || Array.isArray(options)
  ) {
    throw new TypeError(
      invalid(action, "options", "must be an object", options),
    );
  }
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) {
      throw new TypeError(
        invalid(
          action,
          key,
          `is not an option (known: ${known.join(", ")})`,
          (options as Record<string, unknown>)[key],
        ),
      );
    }
  }
  return options as Record<string, unknown>;
}

/** The names of {@linkcode LockOptions}. */
export const LOCK_OPTIONS = [
  "expire",
  "id",
  "autoRenewal",
  "signalExpire",
  "turns",
  "pythonPeers",
  "transport",
  "pollInterval",
] as const;

/** The names of {@linkcode AcquireOptions}. */
export const ACQUIRE_OPTIONS = ["blocking", "timeout", "signal"] as const;

/** Checks the lock name: the part of the key after `lock:`. */
export function validateName(name: unknown): string {
  if (typeof name !== "string") {
    throw new TypeError(
      invalid("create lock", "name", "must be a string", name),
    );
  }
  if (name.length === 0) {
    throw new TypeError(
      invalid("create lock", "name", "must not be empty", name),
    );
  }
  return name;
}

/** Checks {@linkcode LockOptions} and fills in the defaults. */
export function validateLockOptions(
  options: unknown,
  known: readonly string[] = LOCK_OPTIONS,
): ValidLockOptions {
  const action = "create lock";
  const {
    expire,
    id,
    autoRenewal = false,
    signalExpire = 1000,
    turns = true,
    pythonPeers = true,
    transport,
    pollInterval = 100,
  } = optionsObject(action, options, known) as LockOptions;
  if (expire !== undefined) positiveInteger(action, "expire", expire);
  if (id !== undefined) {
    if (typeof id !== "string") {
      throw new TypeError(invalid(action, "id", "must be a string", id));
    }
    if (id.length === 0) {
      throw new TypeError(invalid(action, "id", "must not be empty", id));
    }
  }
  if (typeof autoRenewal !== "boolean") {
    throw new TypeError(
      invalid(action, "autoRenewal", "must be a boolean", autoRenewal),
    );
  }
  if (autoRenewal && expire === undefined) {
    throw new TypeError(
      invalid(action, "autoRenewal", "needs 'expire' to be set", autoRenewal),
    );
  }
  positiveInteger(action, "signalExpire", signalExpire);
  if (typeof turns !== "boolean") {
    throw new TypeError(invalid(action, "turns", "must be a boolean", turns));
  }
  if (typeof pythonPeers !== "boolean") {
    throw new TypeError(
      invalid(action, "pythonPeers", "must be a boolean", pythonPeers),
    );
  }
  if (transport !== undefined && !TRANSPORTS.includes(transport)) {
    throw new TypeError(
      invalid(
        action,
        "transport",
        'must be "blpop", "poll" or "pubsub"',
        transport,
      ),
    );
  }
  positiveInteger(action, "pollInterval", pollInterval);
  return {
    expire,
    id,
    autoRenewal,
    signalExpire,
    turns,
    pythonPeers,
    transport,
    pollInterval,
  };
}

/** Checks {@linkcode AcquireOptions} and fills in the defaults. */
export function validateAcquireOptions(
  options: unknown,
  known: readonly string[] = ACQUIRE_OPTIONS,
): ValidAcquireOptions {
  const action = "acquire";
  const given = optionsObject(action, options, known) as AcquireOptions;
  const { blocking = true, timeout, signal } = given;
  if (typeof blocking !== "boolean") {
    throw new TypeError(
      invalid(action, "blocking", "must be a boolean", blocking),
    );
  }
  if (timeout !== undefined) {
    if (!blocking) {
      throw new TypeError(
        invalid(
          action,
          "timeout",
          "cannot be used with 'blocking: false'",
          timeout,
        ),
      );
    }
    if (typeof timeout !== "number") {
      throw new TypeError(
        invalid(action, "timeout", "must be a number", timeout),
      );
    }
    if (
      Number.isNaN(timeout) || timeout < 0 ||
      (timeout !== Infinity && timeout > Number.MAX_SAFE_INTEGER)
    ) {
      throw new RangeError(
        invalid(
          action,
          "timeout",
          "must be a non-negative number of milliseconds, at most 2^53 - 1, or Infinity",
          timeout,
        ),
      );
    }
  }
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new TypeError(
      invalid(action, "signal", "must be an AbortSignal", signal),
    );
  }
  return { blocking, timeout: timeout ?? Infinity, signal };
}
