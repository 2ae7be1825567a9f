/**
 * Redlock: one lock over several independent Redis masters, as described
 * on redis.io and in antirez's reference implementation, behind the
 * interface of {@linkcode Lock}.
 *
 * An acquisition asks every master in parallel, each within
 * `masterTimeout`; it holds when a quorum (⌊N/2⌋ + 1) granted it AND time is
 * left: validity = expire − elapsed − drift, drift = ⌊expire × 0.01⌋ + 2 ms.
 * Otherwise it lets go on every master (a master that did not answer may
 * have set the key). `extend()` follows the same rules; `lock.signal`
 * aborts when the validity ends without a successful extension.
 *
 * Invariants:
 * - Mutual exclusion while at most a minority of masters loses its data: a
 *   master that restarted empty abstains for `expire` ms after it started
 *   (`lock-start`), so that no holder that counted it can still believe.
 * - Fencing: each master draws tokens from its own counter (the server's
 *   clock in µs, or one more than the last); the acquisition's token is the
 *   highest of its quorum, and the counters of the quorum are raised to it
 *   before the acquisition counts. Any later quorum shares a master with
 *   it, so its token is higher, unless that master lost its data; then the
 *   masters' clocks keep tokens increasing as long as they agree to within
 *   the time between the two acquisitions.
 * - A settled `acquire()` that did not take the lock leaves no key on any
 *   master that answers.
 *
 * Waiting sleeps on every master's wake transport (a release on any master
 * wakes it) and on the earliest expiry it saw, with a random part, so that
 * competitors that split the masters do not collide again.
 *
 * @module
 */

import { type Connection, type RedisClient, toConnection } from "./clients.ts";
import {
  AlreadyAcquiredError,
  LockError,
  LockLostError,
  NotAcquiredError,
} from "./errors.ts";
import { type LockKeys, lockKeys, START_KEY } from "./keys.ts";
import { at } from "./lease.ts";
import {
  type AcquireOptions,
  invalid,
  optionsObject,
  positiveInteger,
  validateAcquireOptions,
  validateLockOptions,
  validateName,
} from "./options.ts";
import {
  R_ACQUIRE,
  R_EXTEND,
  R_RAISE,
  R_RELEASE,
  R_START,
  Script,
} from "./scripts.ts";
import { shutDown, waiterOf } from "./waiter.ts";
import { unrefTimer } from "./_runtime.ts";

const acquireScript = new Script(R_ACQUIRE, () => []);
const startScript = new Script(R_START, () => []);
const raiseScript = new Script(R_RAISE, () => []);
const extendScript = new Script(R_EXTEND, () => []);
const releaseScript = new Script(R_RELEASE, () => []);

/** Options of {@linkcode Redlock}. */
export interface RedlockOptions {
  /**
   * Milliseconds one master may take to answer one command; a master that
   * takes longer counts as failed for that step (a slow or paused master
   * does not hold the others up).
   *
   * @default {50}
   */
  masterTimeout?: number;
  /**
   * Milliseconds a waiter sleeps at most between two attempts when no
   * holder's expiry tells it better (the masters were split between
   * competitors, or unreachable); a random part of up to half of it is
   * added.
   *
   * @default {200}
   */
  retryDelay?: number;
  /**
   * Milliseconds no lock on these masters ever lives beyond: the longest
   * `expire`, and `extend()`, allowed. A master that lost its data (a
   * restart without persistence) abstains for this long after it started,
   * since a holder that counted it may believe in its lock until then. Give
   * every process that locks on these masters the same value.
   *
   * @default {60000}
   */
  maxExpire?: number;
}

/** Options of {@linkcode Redlock.lock}: those of {@linkcode Lock} that apply. */
export interface RedlockLockOptions {
  /**
   * Milliseconds the lock lives on each master unless extended; the
   * validity of a holding is this, less the time the acquisition took and
   * the clock drift.
   *
   * @default {10000}
   */
  expire?: number;
  /** The owner id set on every master. @default {a random id} */
  id?: string;
  /** Extend every third of `expire` while held. @default {false} */
  autoRenewal?: boolean;
  /** Milliseconds a release's wake-up stays in each master. @default {1000} */
  signalExpire?: number;
}

/** The names of {@linkcode RedlockLockOptions}. */
export const REDLOCK_OPTIONS = [
  "expire",
  "id",
  "autoRenewal",
  "signalExpire",
] as const;

/** The expiry of a Redlock lock unless given, in ms. */
const DEFAULT_EXPIRE = 10_000;

/** Checks an expiry against the Redlock's `maxExpire`. */
function atMostMax(action: string, expire: number, config: Config): number {
  if (expire > config.maxExpire) {
    throw new RangeError(
      invalid(
        action,
        "expire",
        `must be at most the Redlock's maxExpire (${config.maxExpire} ms)`,
        expire,
      ),
    );
  }
  return expire;
}

/** Milliseconds between the checks of a waiter at the longest. */
const TICK = 1_000;

const now = () => performance.now();

/** 18 random bytes in base64, as python-redis-lock makes its ids. */
function randomId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(18));
  return btoa(String.fromCharCode(...bytes));
}

/** What a let-go did: on how many masters it released, which failed. */
interface LetGo {
  readonly released: number;
  readonly failed: readonly { index: number; error: unknown }[];
}

/** A master that took longer than `masterTimeout`. */
class MasterTimeout extends Error {
  constructor(ms: number) {
    super(`no answer within ${ms} ms`);
    this.name = "MasterTimeout";
  }
}

/** One master: its connection and its place in the list. */
interface Master {
  readonly index: number;
  readonly connection: Connection;
}

/** What one master answered to an acquisition. */
type Answer =
  | { readonly kind: "granted"; readonly token: number }
  | { readonly kind: "held"; readonly holder: string; readonly pttl: number }
  | { readonly kind: "abstains"; readonly ms: number }
  | { readonly kind: "failed"; readonly error: unknown };

/** The outcome of one attempt over every master. */
type Attempt =
  | { readonly ok: true; readonly token: number; readonly deadline: number }
  | {
    readonly ok: false;
    /** Held by others (or abstaining): wait; else the error that says why. */
    readonly busy: boolean;
    readonly error: LockError;
    /** When the lock may be free, at the earliest (`performance.now()`). */
    readonly freeAt: number | undefined;
  };

/**
 * A set of independent Redis masters that locks are taken on together.
 * Constructing one sends nothing.
 *
 * @example
 * ```ts ignore
 * import { Redis } from "ioredis";
 * import { acquire, Redlock } from "@x/redis-lock";
 *
 * const redlock = new Redlock([
 *   new Redis(6379, "redis-a"),
 *   new Redis(6379, "redis-b"),
 *   new Redis(6379, "redis-c"),
 * ]);
 * await using lock = await acquire(redlock, "report", { expire: 10_000 });
 * await work({ signal: lock.signal, fence: lock.token });
 * ```
 */
export class Redlock {
  /** How many masters must grant a lock: ⌊N/2⌋ + 1. */
  readonly quorum: number;

  /**
   * Takes the masters. Sends nothing.
   *
   * @param clients One client per master (any client {@linkcode Lock}
   * takes); each master must be independent of the others.
   * @param options `masterTimeout` and `retryDelay`.
   * @throws {TypeError} When `clients` is not a non-empty array of distinct
   * supported clients, or an option is wrong.
   * @throws {RangeError} When a number is out of range.
   */
  constructor(clients: readonly RedisClient[], options?: RedlockOptions) {
    const action = "create redlock";
    if (!Array.isArray(clients) || clients.length === 0) {
      throw new TypeError(
        invalid(action, "clients", "must be a non-empty array", clients),
      );
    }
    if (new Set(clients).size !== clients.length) {
      throw new TypeError(
        invalid(action, "clients", "must be distinct masters", clients),
      );
    }
    const { masterTimeout = 50, retryDelay = 200, maxExpire = 60_000 } =
      optionsObject(action, options, [
        "masterTimeout",
        "retryDelay",
        "maxExpire",
      ]) as RedlockOptions;
    const connections = clients.map((client, index) => {
      try {
        return toConnection(client);
      } catch {
        throw new TypeError(
          invalid(
            action,
            `clients[${index}]`,
            "must be a Redis client",
            client,
          ),
        );
      }
    });
    this.quorum = Math.floor(clients.length / 2) + 1;
    configs.set(this, {
      masterTimeout: positiveInteger(action, "masterTimeout", masterTimeout),
      retryDelay: positiveInteger(action, "retryDelay", retryDelay),
      maxExpire: positiveInteger(action, "maxExpire", maxExpire),
      masters: connections.map((connection, index) => ({ index, connection })),
      quorum: this.quorum,
    });
  }

  /**
   * A lock on `name` over these masters. Sends nothing.
   *
   * @example
   * ```ts ignore
   * const lock = redlock.lock("report", { expire: 10_000 });
   * if (await lock.acquire({ blocking: false })) await lock.release();
   * ```
   */
  lock(name: string, options?: RedlockLockOptions): RedlockLock {
    return new RedlockLock(this, name, options);
  }
}

/** Why the last `acquire()` of a lock found it busy, naming the holders. */
const refusals = new WeakMap<RedlockLock, LockError>();

/**
 * The refusal of the last `acquire()` of `lock` that returned `false`: a
 * {@linkcode NotAcquiredError} that names the holders and on how many
 * masters. For `acquire(redlock, …)`.
 */
export function refusalOf(lock: RedlockLock): LockError | undefined {
  return refusals.get(lock);
}

/** What a {@linkcode Redlock} was made with. */
interface Config {
  readonly masters: readonly Master[];
  readonly quorum: number;
  readonly masterTimeout: number;
  readonly retryDelay: number;
  readonly maxExpire: number;
}

const configs = new WeakMap<Redlock, Config>();

/**
 * Settles with the command's reply, or rejects after `ms`. The command is
 * made with a function that tells whether the reply is still awaited, so
 * that a script does not follow a late `NOSCRIPT` with its source.
 */
function within<T>(
  command: (gaveUp: () => boolean) => Promise<T>,
  ms: number,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let over = false;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      over = true;
      reject(new MasterTimeout(ms));
    }, ms);
  });
  const running = command(() => over);
  running.catch(() => {}); // a late failure is of no interest any more
  return Promise.race([running, late]).finally(() => clearTimeout(timer));
}

function describe(masters: readonly number[]): string {
  return masters.map((index) => `#${index}`).join(", ");
}

/**
 * A lock over the masters of a {@linkcode Redlock}, with the interface of
 * {@linkcode Lock}: `acquire`, `release`, `extend`, `locked`, `ownerId`,
 * `signal`, `token` and `await using`.
 *
 * @example
 * ```ts ignore
 * await using lock = redlock.lock("report", { expire: 10_000 });
 * if (await lock.acquire({ timeout: 5_000 })) {
 *   await work(lock.signal);
 * }
 * ```
 */
export class RedlockLock implements AsyncDisposable {
  /** The lock's name: the part of its key after `lock:`. */
  readonly name: string;
  /** The owner id set on every master while held. */
  readonly id: string;
  readonly #redlock: Config;
  readonly #keys: LockKeys;
  readonly #expire: number;
  readonly #autoRenewal: boolean;
  readonly #signalExpire: number;
  #holding: Holding | undefined;
  #controller: AbortController | undefined;
  #acquiring = false;

  /**
   * Creates a lock over the masters of `redlock`, as
   * {@linkcode Redlock.lock} does. Sends nothing.
   *
   * @param redlock The masters.
   * @param name The lock's name; the key on each master is `lock:<name>`.
   * @param options Expiry, owner id, auto-renewal and signal expiry.
   * @throws {TypeError} When `redlock` is not a Redlock or an option is wrong.
   * @throws {RangeError} When a number is out of range.
   */
  constructor(
    redlock: Redlock,
    name: string,
    options?: RedlockLockOptions,
  ) {
    const config = configs.get(redlock);
    if (config === undefined) {
      throw new TypeError(
        invalid("create lock", "redlock", "must be a Redlock", redlock),
      );
    }
    this.name = validateName(name);
    const valid = validateLockOptions(
      options !== null && typeof options === "object"
        ? { expire: DEFAULT_EXPIRE, ...options }
        : options,
      REDLOCK_OPTIONS,
    );
    this.#redlock = config;
    this.#keys = lockKeys(this.name);
    this.id = valid.id ?? randomId();
    this.#expire = atMostMax(
      "create lock",
      valid.expire ?? DEFAULT_EXPIRE,
      config,
    );
    this.#autoRenewal = valid.autoRenewal;
    this.#signalExpire = valid.signalExpire;
  }

  /**
   * Aborts when the current holding ends: with a {@linkcode LockLostError}
   * when its validity ends without an extension, and with a
   * {@linkcode LockError} when it is released.
   */
  get signal(): AbortSignal {
    this.#controller ??= new AbortController();
    this.#holding?.attach(this.#controller);
    return this.#controller.signal;
  }

  /**
   * The fencing token of the latest acquisition: strictly increasing over
   * the acquisitions of the name (see the module's invariants).
   *
   * @throws {NotAcquiredError} When this instance has never acquired the lock.
   */
  get token(): number {
    if (this.#holding === undefined) {
      throw new NotAcquiredError(
        `Lock '${this.name}' has no token as this instance never acquired it`,
      );
    }
    return this.#holding.token;
  }

  /**
   * Acquires the lock on a quorum of masters, waiting while it is busy
   * unless `blocking` is false.
   *
   * @returns `true` when acquired; `false` when busy with `blocking: false`
   * or when `timeout` elapsed while it was busy.
   * @throws {LockError} When too many masters fail (their errors in
   * `cause`), or the acquisition took the whole validity, at the last
   * attempt.
   * @throws {AlreadyAcquiredError} When this instance holds the lock.
   */
  async acquire(options?: AcquireOptions): Promise<boolean> {
    const { blocking, timeout, signal } = validateAcquireOptions(options);
    signal?.throwIfAborted();
    if (this.#acquiring || (this.#holding && !this.#holding.ended)) {
      throw new AlreadyAcquiredError(
        `Lock '${this.name}' is already acquired by this instance`,
      );
    }
    this.#acquiring = true;
    refusals.delete(this);
    let wakeUps: WakeUps | undefined;
    try {
      const deadline = blocking ? now() + timeout : -Infinity;
      for (;;) {
        const attempt = await this.#attempt();
        if (attempt.ok) {
          if (signal?.aborted) {
            await this.#letGo();
            throw signal.reason;
          }
          this.#hold(attempt.token, attempt.deadline);
          return true;
        }
        signal?.throwIfAborted();
        const left = deadline - now();
        if (left <= 0) {
          if (!attempt.busy) throw attempt.error;
          refusals.set(this, attempt.error);
          return false;
        }
        // Heard from the first wait to the end of the call, so that the
        // waiting connections cover a steady set of keys; a release before
        // that left its wake-up in the signal lists, which stays there for
        // `signalExpire`.
        wakeUps ??= new WakeUps(
          this.#redlock.masters,
          this.#keys,
          this.#signalExpire,
        );
        await this.#sleep(attempt, left, wakeUps, signal);
        if (wakeUps.shutDown) {
          throw shutDown(this.name);
        }
      }
    } finally {
      wakeUps?.stop();
      this.#acquiring = false;
    }
  }

  /** One attempt over every master; on failure, nothing stays. */
  async #attempt(): Promise<Attempt> {
    const { masters, quorum, masterTimeout } = this.#redlock;
    const expire = this.#expire;
    const started = now();
    const answers = await Promise.all(
      masters.map((master) => this.#ask(master)),
    );
    const granted = answers.flatMap((answer, index) =>
      answer.kind === "granted" ? [{ index, token: answer.token }] : []
    );
    const drift = Math.floor(expire * 0.01) + 2;
    const end = started + expire - drift;
    if (granted.length >= quorum && now() < end) {
      // The quorum's counters learn the token before it counts.
      const token = Math.max(...granted.map((g) => g.token));
      const raised = await Promise.all(
        granted.map(({ index }) =>
          within(
            () =>
              raiseScript.run(masters[index].connection, [this.#keys.fence], [
                String(token),
              ]),
            masterTimeout,
          ).then(() => true, () => false)
        ),
      );
      const count = raised.filter(Boolean).length;
      if (count >= quorum && now() < end) {
        return { ok: true, token, deadline: end };
      }
      if (count < quorum) {
        await this.#letGo(true);
        return {
          ok: false,
          busy: false,
          freeAt: undefined,
          error: new LockError(
            `Cannot acquire lock '${this.name}': granted by ${granted.length} masters, but its fencing token reached only ${count} of them in time (a quorum is ${quorum})`,
          ),
        };
      }
    }
    await this.#letGo(true);
    return this.#failure(answers, granted.length, started);
  }

  /** Asks one master for the lock. */
  async #ask(master: Master): Promise<Answer> {
    const { masterTimeout } = this.#redlock;
    const keys = [this.#keys.lock, this.#keys.fence, START_KEY];
    const args = [
      this.id,
      String(this.#expire),
      String(this.#redlock.maxExpire),
    ];
    try {
      let reply = await within(
        (gaveUp) => acquireScript.run(master.connection, keys, args, gaveUp),
        masterTimeout,
      ) as (number | string)[];
      if (reply[0] === -1) {
        // The master's data is new: when did it start?
        const info = String(
          await within(
            () => master.connection.send("INFO", ["server"]),
            masterTimeout,
          ),
        );
        const uptime = Number(/uptime_in_seconds:(\d+)/.exec(info)?.[1]);
        if (!Number.isFinite(uptime)) throw new Error("no uptime in INFO");
        await within(
          (gaveUp) =>
            startScript.run(master.connection, [START_KEY], [
              String(uptime * 1000),
            ], gaveUp),
          masterTimeout,
        );
        reply = await within(
          (gaveUp) => acquireScript.run(master.connection, keys, args, gaveUp),
          masterTimeout,
        ) as (number | string)[];
      }
      switch (Number(reply[0])) {
        case 1:
          return { kind: "granted", token: Number(reply[1]) };
        case 0:
          return {
            kind: "held",
            pttl: Number(reply[1]),
            holder: String(reply[2]),
          };
        case -2:
          return { kind: "abstains", ms: Number(reply[1]) };
        default:
          throw new Error(`unexpected reply ${JSON.stringify(reply)}`);
      }
    } catch (error) {
      return { kind: "failed", error };
    }
  }

  /** Why an attempt failed, and when to try again. */
  #failure(
    answers: readonly Answer[],
    granted: number,
    started: number,
  ): Attempt {
    const { quorum, masters } = this.#redlock;
    const failed = answers.flatMap((a, i) => a.kind === "failed" ? [i] : []);
    const others = new Map<string, number>();
    let freeIn = Infinity;
    let abstaining = 0;
    for (const answer of answers) {
      if (answer.kind === "held") {
        others.set(answer.holder, (others.get(answer.holder) ?? 0) + 1);
        if (answer.pttl >= 0) freeIn = Math.min(freeIn, answer.pttl);
      } else if (answer.kind === "abstains") {
        abstaining++;
        freeIn = Math.min(freeIn, answer.ms);
      }
    }
    const freeAt = freeIn === Infinity ? undefined : now() + freeIn;
    const name = this.name;
    if (failed.length > masters.length - quorum) {
      return {
        ok: false,
        busy: false,
        freeAt,
        error: new LockError(
          `Cannot acquire lock '${name}': ${failed.length} of ${masters.length} masters failed (${
            describe(failed)
          }), a quorum of ${quorum} is out of reach`,
          {
            cause: new AggregateError(
              failed.map((i) => (answers[i] as { error: unknown }).error),
            ),
          },
        ),
      };
    }
    if (granted >= quorum) {
      return {
        ok: false,
        busy: false,
        freeAt,
        error: new LockError(
          `Cannot acquire lock '${name}': ${granted} masters granted it, but acquiring took ${
            Math.round(now() - started)
          } ms, leaving no validity of its expire of ${this.#expire} ms`,
        ),
      };
    }
    const held = [...others].map(([id, count]) =>
      `'${id}' on ${count} of ${masters.length}`
    );
    if (abstaining > 0) {
      held.push(`${abstaining} master(s) restarted lately and abstain`);
    }
    return {
      ok: false,
      busy: true,
      freeAt,
      error: new NotAcquiredError(
        `Lock '${name}' is held: ${held.join(", ") || "masters split"}`,
      ),
    };
  }

  /**
   * Sleeps until a master leaves a wake-up, the lock may be free (the
   * earliest expiry seen, at most a `TICK` away), the pause for a split or
   * failure passes, or `left` ms; a random part keeps competitors apart.
   */
  async #sleep(
    attempt: Extract<Attempt, { ok: false }>,
    left: number,
    wakeUps: WakeUps,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    const { retryDelay } = this.#redlock;
    const jitter = Math.random() * retryDelay / 2;
    const pause = attempt.freeAt !== undefined
      ? Math.min(attempt.freeAt - now(), TICK)
      : retryDelay;
    const woken = await wakeUps.next(
      Math.min(Math.max(0, pause) + jitter, left),
      signal,
    );
    signal?.throwIfAborted();
    // Woken by a release: other waiters may have been too; starting a few
    // ms apart, they do not split the masters between them.
    if (woken) {
      await new Promise((resolve) => setTimeout(resolve, Math.random() * 4));
    }
  }

  /**
   * Deletes the lock with this id on every master; how many had it. A
   * `quiet` let-go (after a failed attempt) leaves no wake-up.
   */
  async #letGo(quiet = false): Promise<LetGo> {
    const { masters, masterTimeout } = this.#redlock;
    const answers = await Promise.all(masters.map(({ connection }) =>
      within(
        // A late let-go still cleans up: no `gaveUp` here.
        () =>
          releaseScript.run(
            connection,
            [this.#keys.lock, this.#keys.signal],
            [String(this.#signalExpire), this.id, quiet ? "1" : ""],
          ),
        masterTimeout,
      ).then((reply) => reply === 1, (error: unknown) => ({ error }))
    ));
    return {
      released: answers.filter((answer) => answer === true).length,
      failed: answers.flatMap((answer, index) =>
        typeof answer === "object" ? [{ index, error: answer.error }] : []
      ),
    };
  }

  #hold(token: number, deadline: number): void {
    const holding = new Holding(this.name, token, deadline);
    this.#holding = holding;
    if (this.#controller?.signal.aborted) this.#controller = undefined;
    if (this.#controller) holding.attach(this.#controller);
    if (this.#autoRenewal) this.#renewSoon(holding);
  }

  #renewSoon(holding: Holding): void {
    holding.renewIn(this.#expire / 3, async () => {
      if (holding.ended) return;
      try {
        await this.#extendHolding(holding, this.#expire);
        this.#renewSoon(holding);
      } catch {
        // Not extended on a quorum: the holding ends with its validity.
        // One more try before then, if time allows.
        if (holding.deadline - now() > this.#expire / 6) {
          this.#renewSoon(holding);
        }
      }
    });
  }

  /**
   * Sets the remaining life to `expire` ms (default: the lock's own) on
   * every master that holds it with this id. The holding's validity moves
   * only when a quorum answered in time.
   *
   * @throws {NotAcquiredError} When no master holds it with this id (the
   * holding ends).
   * @throws {LockError} When fewer than a quorum extended it in time: the
   * holding keeps its validity, and ends with it.
   */
  async extend(expire?: number): Promise<void> {
    const ms = expire === undefined ? this.#expire : atMostMax(
      "extend lock",
      positiveInteger("extend lock", "expire", expire),
      this.#redlock,
    );
    const holding = this.#holding;
    if (holding === undefined || holding.ended) {
      throw new NotAcquiredError(
        `Lock '${this.name}' is not acquired by this instance`,
      );
    }
    await this.#extendHolding(holding, ms);
  }

  async #extendHolding(holding: Holding, ms: number): Promise<void> {
    const { masters, quorum, masterTimeout } = this.#redlock;
    const started = now();
    const extended = await Promise.all(masters.map(({ connection }) =>
      within(
        (gaveUp) =>
          extendScript.run(
            connection,
            [this.#keys.lock],
            [this.id, String(ms)],
            gaveUp,
          ),
        masterTimeout,
      ).then((reply) => reply === 1 ? 1 : 0, () => -1)
    ));
    const count = extended.filter((e) => e === 1).length;
    const end = started + ms - (Math.floor(ms * 0.01) + 2);
    if (count >= quorum && now() < end) {
      holding.extendTo(end);
      return;
    }
    if (extended.every((e) => e === 0)) {
      holding.lose(`Lock '${this.name}' is held by no master any more`);
      throw new NotAcquiredError(
        `Lock '${this.name}' is not acquired with id '${this.id}' on any master`,
      );
    }
    throw new LockError(
      `Cannot extend lock '${this.name}': extended on ${count} of ${masters.length} masters, a quorum is ${quorum}`,
    );
  }

  /**
   * Releases the lock on every master and wakes a waiter on each.
   *
   * @throws {NotAcquiredError} When every master answered that it did not
   * hold it with this id.
   * @throws {LockError} When no master released it and some failed (their
   * errors in `cause`): the release may still run there.
   */
  async release(): Promise<void> {
    this.#holding?.end(new LockError(`Lock '${this.name}' was released`));
    const { released, failed } = await this.#letGo();
    if (released > 0) return;
    if (failed.length > 0) {
      // Unanswered is not unheld: the let-go may still run there.
      throw new LockError(
        `Cannot release lock '${this.name}': ${failed.length} of ${this.#redlock.masters.length} masters failed (${
          describe(failed.map(({ index }) => index))
        }) and no other held it`,
        { cause: new AggregateError(failed.map(({ error }) => error)) },
      );
    }
    throw new NotAcquiredError(
      `Lock '${this.name}' is not acquired with id '${this.id}' on any master, or it expired`,
    );
  }

  /** Whether a quorum of masters holds the lock, with any id. */
  async locked(): Promise<boolean> {
    return await this.ownerId() !== null;
  }

  /** The id holding the lock on a quorum of masters, or `null`. */
  async ownerId(): Promise<string | null> {
    const { masters, quorum, masterTimeout } = this.#redlock;
    const ids = await Promise.all(
      masters.map(({ connection }) =>
        within(() => connection.send("GET", [this.#keys.lock]), masterTimeout)
          .then((reply) => reply === null ? null : String(reply), () => null)
      ),
    );
    const counts = new Map<string, number>();
    for (const id of ids) {
      if (id !== null) counts.set(id, (counts.get(id) ?? 0) + 1);
    }
    for (const [id, count] of counts) if (count >= quorum) return id;
    return null;
  }

  /**
   * Releases the lock if held; a holding whose validity ended is let go on
   * the masters and reported by rejecting with its {@linkcode LockLostError}.
   */
  async [Symbol.asyncDispose](): Promise<void> {
    const holding = this.#holding;
    if (holding === undefined) return;
    if (!holding.ended) {
      await this.release();
      return;
    }
    if (!holding.lost) return;
    await this.#letGo();
    throw holding.reason;
  }
}

/** The wake-ups of every master for one lock, heard while an acquire waits. */
class WakeUps {
  readonly #stops: (() => void)[];
  /** A wake-up came since the last `next()`. */
  #pending = false;
  /** Set once `shutdown()` of a master's client ended the listening. */
  shutDown = false;
  #ring: (() => void) | undefined;

  constructor(
    masters: readonly Master[],
    keys: LockKeys,
    signalExpire: number,
  ) {
    const ring = (shutDown: boolean) => {
      this.#pending = true;
      if (shutDown) this.shutDown = true;
      this.#ring?.();
    };
    this.#stops = masters.map(({ connection }) =>
      waiterOf(connection).listen(keys, signalExpire, ring)
    );
  }

  /**
   * Resolves `true` at the next wake-up (at once if one came since the
   * last call), `false` after `ms` or when `signal` aborts.
   */
  async next(ms: number, signal: AbortSignal | undefined): Promise<boolean> {
    if (!this.#pending) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const onAbort = () => this.#ring?.();
      try {
        await new Promise<void>((resolve) => {
          this.#ring = resolve;
          timer = setTimeout(resolve, ms);
          signal?.addEventListener("abort", onAbort, { once: true });
        });
      } finally {
        this.#ring = undefined;
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      }
    }
    const woken = this.#pending;
    this.#pending = false;
    return woken;
  }

  /** Stops listening on every master. */
  stop(): void {
    for (const stop of this.#stops) stop();
  }
}

/** One holding of a Redlock lock: its token, validity and signal. */
class Holding {
  readonly token: number;
  readonly #name: string;
  #deadline: number;
  #expiryTimer: ReturnType<typeof setTimeout> | undefined;
  #renewTimer: ReturnType<typeof setTimeout> | undefined;
  readonly #controllers = new Set<AbortController>();
  #reason: LockError | undefined;

  constructor(name: string, token: number, deadline: number) {
    this.#name = name;
    this.token = token;
    this.#deadline = deadline;
  }

  get deadline(): number {
    return this.#deadline;
  }

  get ended(): boolean {
    if (this.#reason === undefined && now() >= this.#deadline) this.#expire();
    return this.#reason !== undefined;
  }

  get lost(): boolean {
    return this.#reason instanceof LockLostError;
  }

  get reason(): LockError | undefined {
    return this.#reason;
  }

  /**
   * Aborts `controller` when the holding ends. The expiry timer runs only
   * while someone listens; otherwise the end is noticed when asked.
   */
  attach(controller: AbortController): void {
    if (this.ended) {
      controller.abort(this.#reason);
      return;
    }
    this.#controllers.add(controller);
    if (this.#expiryTimer === undefined) this.#arm();
  }

  extendTo(deadline: number): void {
    if (this.#reason !== undefined) return;
    this.#deadline = deadline;
    if (this.#controllers.size > 0) this.#arm();
  }

  renewIn(ms: number, renew: () => void): void {
    clearTimeout(this.#renewTimer);
    if (this.#reason !== undefined) return;
    this.#renewTimer = setTimeout(renew, ms);
    unrefTimer(this.#renewTimer);
  }

  lose(message: string): void {
    this.end(new LockLostError(message));
  }

  end(reason: LockError): void {
    if (this.#reason !== undefined) return;
    this.#reason = reason;
    clearTimeout(this.#expiryTimer);
    clearTimeout(this.#renewTimer);
    for (const controller of this.#controllers) controller.abort(reason);
    this.#controllers.clear();
  }

  #expire(): void {
    this.lose(
      `Lock '${this.#name}' lost: its validity ended without an extension`,
    );
  }

  #arm(): void {
    clearTimeout(this.#expiryTimer);
    at(this.#deadline, () => {
      if (now() >= this.#deadline) this.#expire();
    }, (timer) => this.#expiryTimer = timer);
  }
}
