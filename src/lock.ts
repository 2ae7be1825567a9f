/**
 * The lock: one name in Redis, held by one owner id at a time.
 *
 * @module
 */

import {
  type Connection,
  type RedisClient,
  type Reply,
  toConnection,
} from "./clients.ts";
import {
  AcquireTimeoutError,
  AlreadyAcquiredError,
  LockError,
  NotAcquiredError,
  NotExpirableError,
} from "./errors.ts";
import {
  HOLDER_TENURE,
  HOLDER_TURN,
  HOLDER_TURNS,
  type LockKeys,
  lockKeys,
  TURN_LEASE,
} from "./keys.ts";
import { type Keeping, Lease } from "./lease.ts";
import {
  ACQUIRE_OPTIONS,
  type AcquireLockOptions,
  type AcquireOptions,
  invalid,
  LOCK_OPTIONS,
  optionsObject,
  positiveInteger,
  validateAcquireOptions,
  validateLockOptions,
  validateName,
} from "./options.ts";
import type { LockOptions, Transport } from "./options.ts";
import {
  ACQUIRE,
  C_ACQUIRE,
  C_CANCEL,
  C_RELEASE,
  C_RELEASE_ALONE,
  C_RESET,
  C_RESET_ALONE,
  CLAIM,
  EXTEND,
  KEEP,
  RELEASE,
  RELEASE_ALONE,
  RENEW,
  RESET,
  RESET_ALONE,
  Script,
  type Sender,
  TRY,
} from "./scripts.ts";
import {
  Redlock,
  REDLOCK_OPTIONS,
  type RedlockLock,
  type RedlockLockOptions,
  refusalOf,
} from "./redlock.ts";
import {
  type Acquisition,
  drivesName,
  randomProcessId,
  shutDown,
  type Waiter,
  waiterFor,
  waiterOf,
} from "./waiter.ts";
import { type ServerView, viewOf } from "./_server_view.ts";
import { classify } from "./_failure.ts";
import { holderTurnsOf } from "./_holder_turns.ts";
import {
  CLUSTER_POLL_MAX,
  CLUSTER_TICK,
  clusterWaitsOf,
} from "./_cluster_waits.ts";

/**
 * A script that takes every key of a lock, in its variant for one server
 * and for a Cluster; the keys choose.
 */
function variants(one: string, cluster: string): (keys: LockKeys) => Script {
  const onOne = new Script(one, (keys) => keys.all);
  const onCluster = new Script(cluster, (keys) => keys.all);
  return (keys) => keys.cluster ? onCluster : onOne;
}

const acquireScript = variants(ACQUIRE, C_ACQUIRE);
const releaseScripts = [
  variants(RELEASE_ALONE, C_RELEASE_ALONE),
  variants(RELEASE, C_RELEASE),
];
const cancelOnClusterScript = new Script(C_CANCEL, (keys) => keys.all);
const extendScript = new Script(EXTEND, (keys) => keys.onlyLock);
const keepScript = new Script(KEEP, (keys) => keys.onlyLock);
const renewScript = new Script(RENEW, (keys) => keys.onlyLock);
const resetScripts = [
  variants(RESET_ALONE, C_RESET_ALONE),
  variants(RESET, C_RESET),
];
const claimScript = new Script(CLAIM, (keys) => keys.forClaim);
const tryScript = new Script(TRY, (keys) => keys.forClaim);

/** 18 random bytes in base64, as python-redis-lock makes its ids. */
function randomId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(18));
  return btoa(String.fromCharCode(...bytes));
}

/**
 * Resolves after `ms`, or at once when `signal` aborts or `early`
 * resolves.
 */
function pause(
  ms: number,
  signal?: AbortSignal,
  early?: Promise<void>,
): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
    early?.then(done);
  });
}

/** Runs a command, turning a Redis failure into a {@linkcode LockError}. */
function attempt<T>(
  action: string,
  name: string,
  command: () => Promise<T>,
): Promise<T> {
  return command().catch((error) => {
    throw new LockError(`Cannot ${action} lock '${name}': Redis failed`, {
      cause: error,
    });
  });
}

/**
 * Resets a lock: deletes it whoever holds it, and lets it go as a release
 * does. The holder is read first and the reset applies to that holder only,
 * so that a reset that a client runs twice (re-sent after a lost reply) does
 * not take the lock from the waiter the first run handed it to; if the
 * holder changes in between, it is read again. Resolves whether there was a
 * lock. `pythonPeers` false: no wake-up is left for Python.
 */
export async function resetLock(
  connection: Connection,
  keys: LockKeys,
  signalExpire: number,
  pythonPeers = true,
): Promise<boolean> {
  for (let attempt = 0;; attempt++) {
    const holder = await connection.send("GET", [keys.lock]);
    const [status] = await resetScripts[+pythonPeers](keys).handOver(
      connection,
      keys,
      signalExpire,
      [holder === null ? "" : String(holder)],
    ) as [number];
    // The lock changed hands by itself: the holder meant to go has gone.
    if (status !== 2 || attempt === 2) return status === 1;
  }
}

/**
 * How a lease keeps its lock, made from plain values so that it does not
 * keep the `Lock` alive.
 */
function keeping(
  connection: Connection,
  keys: LockKeys,
  id: string,
  expire: number | undefined,
  autoRenewal: boolean,
): Keeping {
  return {
    expire,
    autoRenewal,
    keep: async (ms) =>
      await keepScript.call(connection, keys, [
        id,
        ms === undefined ? "" : String(ms),
      ]) === 0,
    renew: async (ms) =>
      await renewScript.call(connection, keys, [id, String(ms)]) === 0,
  };
}

/**
 * A named lock in Redis, compatible with python-redis-lock 4.x: both keep
 * the holder's id in `lock:<name>` and wake waiters through
 * `lock-signal:<name>`. Constructing one sends nothing to Redis.
 *
 * @example Try once, python-redis-lock style
 * ```ts ignore
 * import { Lock } from "@x/redis-lock";
 *
 * const lock = new Lock(client, "report:42", { expire: 10_000 });
 * if (await lock.acquire({ blocking: false })) {
 *   try {
 *     // … the work only one process may do …
 *   } finally {
 *     await lock.release();
 *   }
 * }
 * ```
 *
 * @example Hold it for a scope
 * ```ts ignore
 * import { Lock } from "@x/redis-lock";
 *
 * await using lock = new Lock(client, "report:42", { expire: 30_000, autoRenewal: true });
 * await lock.acquire({ timeout: 5_000 });
 * await work(lock.signal); // aborted if the lock is lost
 * ```
 */
export class Lock implements AsyncDisposable {
  /** The lock's name: the part of its key after `lock:`. */
  readonly name: string;
  /** The owner id this instance acquires with: the lock key's value while held. */
  readonly id: string;
  readonly #connection: Connection;
  readonly #keys: LockKeys;
  readonly #expire: number | undefined;
  readonly #autoRenewal: boolean;
  readonly #signalExpire: number;
  readonly #turns: boolean;
  readonly #pythonPeers: boolean;
  readonly #transport: Transport | undefined;
  readonly #pollInterval: number;
  /** Behind `lock.signal`; made when first read. */
  #controller: AbortController | undefined;
  #released: LockError | undefined;
  #keeping: Keeping | undefined;
  #lease: Lease | undefined;
  /**
   * The lock's value while the latest holding lasts: `id`, or the turn's
   * mark for a holding taken from a holder's turn with no command (no other
   * holding ever has it).
   */
  #holdingId: string;
  /** The holder's remaining life at the last try that found it busy (ms). */
  #busyFor = -1;
  /** Set while an `acquire()` of this instance is on its way. */
  #acquiring = false;
  /** Whether the id is this instance's own making (random). */
  readonly #ownId: boolean;
  /**
   * Whether the `acquire()` on its way, then the holding it brought, began
   * right after a release of this name by this process: only such a
   * holding asks for a holder's turn (see `_holder_turns.ts`).
   */
  #looping = false;
  /**
   * The holding's tenure: `performance.now()` when the lock came to this
   * process (from another process, or free): at or before it when taken
   * free, just after the hand-over reached the process when handed over.
   */
  #tenure = 0;
  /** `performance.now()` when the holding began, in this process. */
  #heldFrom = 0;

  /**
   * Creates a lock. Nothing is sent to Redis.
   *
   * @param client The application's Redis client: ioredis, redis, Bun's
   * `RedisClient`, `@db/redis` (through {@linkcode withConnect}), or any
   * object with `send(command, args)`.
   * @param name The lock's name, a non-empty string; the key is `lock:<name>`.
   * @param options Expiry, owner id, auto-renewal and signal expiry.
   * @throws {TypeError} When the client is not supported or an option has the wrong type.
   * @throws {RangeError} When a number is out of range.
   */
  constructor(client: RedisClient, name: string, options?: LockOptions) {
    this.name = validateName(name);
    const valid = validateLockOptions(options);
    this.#connection = toConnection(client);
    this.#keys = lockKeys(this.name, this.#connection.cluster);
    this.id = valid.id ?? randomId();
    this.#holdingId = this.id;
    this.#ownId = valid.id === undefined;
    this.#expire = valid.expire;
    this.#autoRenewal = valid.autoRenewal;
    this.#signalExpire = valid.signalExpire;
    this.#turns = valid.turns;
    this.#pythonPeers = valid.pythonPeers;
    this.#transport = valid.transport;
    this.#pollInterval = valid.pollInterval;
    this.#checkTransport();
  }

  /** Throws when the client cannot wait with the chosen transport. */
  #checkTransport(): void {
    const transport = this.#transport;
    const connection = this.#connection;
    let needs: string | undefined;
    if (connection.cluster) {
      if (transport === "blpop") {
        needs =
          'cannot wait on a Redis Cluster (one BLPOP would span many slots): use "pubsub" or "poll"';
      } else if (transport === "pubsub" && !connection.canShardSubscribe) {
        needs =
          "needs a Cluster client that opens connections (an ioredis Cluster, or a redis createCluster() client)";
      }
    } else if (transport === "pubsub" && !connection.canSubscribe) {
      needs =
        "needs a client that subscribes (ioredis, redis, or subscribe() on a { send } client)";
    } else if (transport === "blpop" && !connection.canDuplicate) {
      needs =
        'needs a client that opens connections (duplicate(), or withConnect(client, connect)); "poll" does not';
    }
    if (needs !== undefined) {
      throw new TypeError(
        invalid("create lock", "transport", needs, transport),
      );
    }
  }

  /**
   * Aborts when the current holding ends: with a {@linkcode LockLostError}
   * when the lock is lost (renewal or `extend()` found it gone or held by
   * another id, its expiry passed without renewal, or it was reset), and with
   * a {@linkcode LockError} when it is released. Each acquisition after an
   * ended holding brings a new signal.
   */
  get signal(): AbortSignal {
    this.#controller ??= new AbortController();
    this.#lease?.attach(this.#controller);
    return this.#controller.signal;
  }

  /**
   * The fencing token of the latest acquisition by this instance: strictly
   * increasing over the acquisitions of a name on one Redis deployment.
   * Storage that remembers the highest token it has seen can refuse writes
   * from a holder whose lock has since passed to another.
   *
   * @throws {NotAcquiredError} When this instance has never acquired the lock.
   */
  get token(): number {
    if (this.#lease === undefined) {
      throw new NotAcquiredError(
        `Lock '${this.name}' has no token as this instance never acquired it`,
      );
    }
    return this.#lease.token;
  }

  /**
   * Acquires the lock, waiting while it is busy unless `blocking` is false.
   * A waiter sleeps until the holder releases, the holder's expiry passes,
   * its `timeout` elapses or its `signal` aborts: it never polls, unless
   * told to by `transport: "poll"` (or its client cannot open connections).
   *
   * @param options `blocking`, `timeout` (ms) and `signal`.
   * @returns `true` when acquired; `false` when busy with `blocking: false`,
   * or when `timeout` elapsed.
   * @throws {AlreadyAcquiredError} When this id already holds the lock, or
   * an `acquire()` of this instance is on its way.
   * @throws {TypeError} When `timeout` is given with `blocking: false`, or
   * an option has the wrong type or is not an option.
   * @throws {RangeError} When `timeout` is negative, NaN or beyond 2^53 - 1.
   * @throws {LockError} When Redis fails on a try (the client's error is the
   * `cause`), or is still unreachable when a waiting acquire's `timeout`
   * elapses. A waiting acquire lives through connection failures and
   * restarts otherwise. An aborted `signal` rejects with `signal.reason`.
   *
   * @example
   * ```ts ignore
   * const lock = new Lock(client, "report:42", { expire: 10_000 });
   * if (await lock.acquire({ timeout: 2_000 })) {
   *   try { /* … *\/ } finally { await lock.release(); }
   * }
   * ```
   */
  async acquire(options?: AcquireOptions): Promise<boolean> {
    const valid = validateAcquireOptions(options);
    const { blocking, signal } = valid;
    let { timeout } = valid;
    signal?.throwIfAborted();
    if (this.#acquiring) {
      throw new AlreadyAcquiredError(
        `Lock '${this.name}' is already being acquired by this instance`,
      );
    }
    if (this.#lease !== undefined && !this.#lease.ended) {
      throw new AlreadyAcquiredError(
        `Lock '${this.name}' is already acquired by this instance`,
      );
    }
    this.#acquiring = true;
    this.#looping = this.#turns && !this.#keys.cluster &&
      holderTurnsOf(this.#connection).looping(this.name);
    try {
      // A holder's turn with the next token drawn is taken with no command,
      // by an instance whose id only it has (another with the same id could
      // not release a holding under the mark) and whose expiry the mark has,
      // at once (a turn a stalled process kept is taken with a look at
      // Redis), while the process knows the token's epoch and gives racers
      // no turn; else as any turn, below.
      if (this.#ownId && !this.#keys.cluster) {
        const view = viewOf(this.#connection, this.#keys.fence);
        const taken = holderTurnsOf(this.#connection).takeLocally(
          this.name,
          ({ epoch, px, since }) =>
            px === this.#expire && epoch === view.known &&
            performance.now() - since < HOLDER_TURN && !this.#heldBack(view),
        );
        if (taken !== undefined) {
          const { local, tenure, mark } = taken;
          return await this.#take(
            { token: local.token, since: local.since, initial: local.px },
            signal,
            tenure,
            mark,
          );
        }
      }
      if (!blocking || timeout === 0) {
        return await this.#tryOnce(signal) ?? false;
      }
      if (this.#connection.cluster) {
        const deadline = performance.now() + timeout;
        if (await this.#tryOnce(signal)) return true;
        const left = Math.max(0, deadline - performance.now());
        return await this.#waitOnCluster(left, signal);
      }
      // Taken now, so that a shutdown() from here on rejects this acquire.
      const waiter = waiterOf(this.#connection, this.#transport);
      // A free lock is taken on the application's connection, in one round
      // trip and with no waiting machinery; waiters of this process come
      // first, though, and racers in the turn this process gave them. A
      // holder's turn of this process is taken the same way.
      const view = viewOf(this.#connection, this.#keys.fence);
      const turn = holderTurnsOf(this.#connection).has(this.name);
      if (
        (turn || !waiter.waitsFor(this.name)) && !view.inTurn(this.name)
      ) {
        // A wait with no timeout reads no clock: this runs at every acquire.
        const deadline = timeout === Infinity
          ? Infinity
          : performance.now() + timeout;
        if (await this.#tryOnce(signal)) return true;
        if (deadline !== Infinity) {
          timeout = Math.max(0, deadline - performance.now());
        }
      }
      return await this.#wait(waiter, timeout, signal);
    } finally {
      this.#acquiring = false;
    }
  }

  /** Waits for the lock through the client's waiter. */
  async #wait(
    waiter: Waiter,
    timeout: number,
    signal?: AbortSignal,
  ): Promise<boolean> {
    const deadline = timeout === Infinity
      ? Infinity
      : performance.now() + timeout;
    for (;;) {
      let acquisition: Acquisition | undefined;
      try {
        acquisition = await waiter.acquire({
          name: this.name,
          keys: this.#keys,
          id: this.id,
          expire: this.#expire,
          signalExpire: this.#signalExpire,
          pollInterval: this.#pollInterval,
          deadline,
          signal,
        });
      } catch (error) {
        if (
          error instanceof LockError || error instanceof TypeError ||
          error === signal?.reason
        ) {
          throw error;
        }
        throw new LockError(
          `Cannot acquire lock '${this.name}': Redis failed`,
          { cause: error },
        );
      }
      if (acquisition === undefined) return false;
      const { initial, since } = acquisition;
      // The waiter claims a hand-over that sat long; only a process stalled
      // right after that finds its holding already over: it lets go.
      if (initial === undefined || performance.now() - since < initial) {
        // Its tenure counts from now: the hand-over reached the process
        // just before (`since` may go back to when the wait began).
        return this.#take(acquisition, signal, performance.now());
      }
      await this.#releaseQuietly();
    }
  }

  /**
   * One attempt on the application's connection, never queued: `true`
   * acquired, `false` busy (or within the grace after Redis lost the lock
   * data), `undefined` when the reply came too late to count.
   */
  async #tryOnce(
    signal?: AbortSignal,
    entry = "",
  ): Promise<boolean | undefined> {
    const view = viewOf(this.#connection, this.#keys.fence);
    if (this.#heldBack(view)) return false;
    const sentAt = performance.now();
    const turns = entry === "" ? holderTurnsOf(this.#connection) : undefined;
    const turn = turns?.take(this.name);
    const tenure = turn?.tenure;
    const reply = await this.#try(view, entry, turn?.mark ?? "");
    let token: number;
    if (typeof reply === "number") {
      token = reply;
    } else {
      const [status, value, epoch] = reply as [number, number, string];
      if (status === 2) {
        // A wait on a Cluster that queued `entry` was handed the lock.
        if (entry !== "") return this.#claimResent(signal);
        if (!this.#ownId) throw this.#alreadyHeld();
        // A wait of this instance that gave up may still be passing on a
        // lock handed to it: that lock is not this acquire's to take.
        if (drivesName(this.#connection, this.name)) return false;
        // With an id of its own making, only this instance can hold the
        // lock with it: a client that re-sent the acquire after a lost reply
        // ran it twice, and the first run took the lock.
        return this.#claimResent(signal);
      }
      if (status === 3) {
        view.restarted(String(value), Number(epoch));
        // A turn it took went back to its mark: the turn ends now.
        if (turn !== undefined) {
          turns!.mayHaveLeft(() => this.#endTurn(turn.mark));
        }
        return false;
      }
      if (epoch !== undefined) view.learn(String(epoch));
      if (status === 0) {
        this.#busyFor = Number(value);
        return false;
      }
      token = value;
    }
    const expire = this.#expire;
    if (expire !== undefined && performance.now() - sentAt >= expire) {
      // The reply came after the lock may have expired: not a holding.
      await this.#releaseQuietly();
      return undefined;
    }
    return this.#take(
      { token, since: sentAt, initial: expire },
      signal,
      tenure,
    );
  }

  /**
   * Waits on a Redis Cluster (see `_cluster_waits.ts`): queued in the
   * lock's slot as a process of its own, subscribed to the lock's sharded
   * channel before the attempt that may queue it (unless `transport:
   * "poll"`); claims the lock when a hand-over to it is announced, and
   * tries again (which also keeps it alive in the queue) when the lock is
   * announced free, at the holder's expiry, and every tick (`CLUSTER_TICK`
   * ms, or `pollInterval` up to 2 s when polling; plus up to half of it, at
   * random), until `timeout`. Leaves nothing in Redis unless it acquires.
   */
  async #waitOnCluster(
    timeout: number,
    signal?: AbortSignal,
  ): Promise<boolean> {
    const deadline = performance.now() + timeout;
    const announced = this.#transport !== "poll" &&
      this.#connection.canShardSubscribe;
    const tick = announced
      ? CLUSTER_TICK
      : Math.min(this.#pollInterval, CLUSTER_POLL_MAX);
    const process = randomProcessId();
    const entry = `${process}|c`;
    const watch = clusterWaitsOf(this.#connection).watch(
      announced ? this.#keys.signal : "",
      process,
    );
    let queued = false;
    let acquired = false;
    try {
      let handed = false;
      for (;;) {
        if (watch.shutDown) throw shutDown(this.name);
        await watch.ready(
          Math.max(0, Math.min(tick, deadline - performance.now())),
        );
        let message: string | undefined;
        const woken = watch.next().then((value) => {
          message = value;
        });
        this.#busyFor = -1;
        queued = true;
        acquired = (handed
          ? await this.#claimResent(signal)
          : await this.#tryOnce(signal, entry)) === true;
        if (acquired) {
          return true;
        }
        const left = deadline - performance.now();
        if (left <= 0) {
          return false;
        }
        const expiry = this.#busyFor >= 0 ? this.#busyFor + 1 : Infinity;
        await pause(
          Math.min(tick * (1 + Math.random() / 2), expiry, left),
          signal,
          woken,
        );
        handed = message === process;
        signal?.throwIfAborted();
      }
    } finally {
      watch.end();
      if (queued && !acquired) await this.#cancelOnCluster(entry);
    }
  }

  /**
   * Takes a wait on a Cluster (`<process>|c`) out of the queue, passing on
   * a lock handed to it; tries again (a few times) when the reply is lost. Whatever stays
   * behind goes with the wait's field in `ALIVE_TTL`.
   */
  async #cancelOnCluster(wait: string): Promise<void> {
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await cancelOnClusterScript.handOver(
          this.#connection,
          this.#keys,
          this.#signalExpire,
          [this.id, `${wait}|${this.#expire ?? ""}|${this.id}`],
        );
        return;
      } catch (error) {
        if (classify(error) === "permanent") return;
        await new Promise((resolve) => setTimeout(resolve, 100 * 3 ** attempt));
      }
    }
  }

  #alreadyHeld(): AlreadyAcquiredError {
    return new AlreadyAcquiredError(
      `Lock '${this.name}' is already held with id '${this.id}'`,
    );
  }

  /** Takes a lock that a re-sent acquire of this instance set. */
  async #claimResent(signal?: AbortSignal): Promise<boolean> {
    const sentAt = performance.now();
    let status: number, token: number;
    try {
      [status, token] = await claimScript.call(
        this.#connection,
        this.#keys,
        [this.id, this.#expire === undefined ? "" : String(this.#expire)],
      ) as [number, number];
    } catch (error) {
      // Held by this id whatever became of the claim: let it go.
      await this.#releaseQuietly();
      throw new LockError(`Cannot acquire lock '${this.name}': Redis failed`, {
        cause: error,
      });
    }
    if (status !== 0) return false;
    return this.#take({ token, since: sentAt, initial: this.#expire }, signal);
  }

  /** One attempt, never queued: see ACQUIRE for the replies. */
  async #try(
    view: ServerView,
    entry: string,
    mark: string,
  ): Promise<number | (number | string)[]> {
    const expire = this.#expire === undefined ? "" : String(this.#expire);
    try {
      const args = entry === ""
        ? [this.id, expire, view.known]
        : [this.id, expire, entry, view.known];
      if (mark !== "") args.push(mark);
      return await (entry === "" ? tryScript : acquireScript(this.#keys)).call(
        this.#connection,
        this.#keys,
        args,
      ) as number | (number | string)[];
    } catch (error) {
      // The reply may be lost after the script ran: leave nothing behind,
      // nor the turn's mark.
      await this.#releaseQuietly();
      if (mark !== "") await this.#endTurn(mark).catch(() => {});
      throw new LockError(`Cannot acquire lock '${this.name}': Redis failed`, {
        cause: error,
      });
    }
  }

  /**
   * Whether this process must not take the lock now: within the grace after
   * Redis lost the lock data, or in the racers' turn it gave.
   */
  #heldBack(view: ServerView): boolean {
    const grace = view.graceUntil(this.#expire);
    return (grace !== -Infinity && performance.now() < grace) ||
      view.inTurn(this.name);
  }

  /**
   * How a holding with the lock set to `id` is kept: this id's keeping, or
   * one for a turn's mark (each holding has a mark of its own).
   */
  #keeper(id: string): Keeping {
    const make = () =>
      keeping(
        this.#connection,
        this.#keys,
        id,
        this.#expire,
        this.#autoRenewal,
      );
    return id === this.id ? this.#keeping ??= make() : make();
  }

  /**
   * Starts holding, with the tenure of the holder's turn it took, if any;
   * with the signal aborted meanwhile, releases instead.
   */
  #take(
    acquisition: Acquisition,
    signal?: AbortSignal,
    tenure?: number,
    holdingId: string = this.id,
  ): true | Promise<never> {
    if (signal?.aborted) {
      return this.#releaseQuietly(holdingId).then(() => {
        throw signal.reason;
      });
    }
    // Set with the lease they go with: a release or disposal of an earlier
    // holding still names that holding's value.
    this.#tenure = tenure ?? acquisition.since;
    this.#heldFrom = performance.now();
    this.#holdingId = holdingId;
    if (this.#controller?.signal.aborted) this.#controller = undefined;
    this.#lease = new Lease(
      this.name,
      acquisition.token,
      this,
      acquisition.since,
      acquisition.initial,
      this.#keeper(holdingId),
      this.#controller,
      viewOf(this.#connection, this.#keys.fence),
    );
    return true;
  }

  /**
   * Releases if `id` (this id, or the mark of a holding under a turn's mark)
   * holds the lock, ignoring the outcome; tries again (a few times) when the
   * reply is lost, since the lock may still be held.
   */
  async #releaseQuietly(id: string = this.id): Promise<void> {
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await this.#letGo(id, this.#waiterHere());
        return;
      } catch (error) {
        if (classify(error) === "permanent") return;
        await new Promise((resolve) => setTimeout(resolve, 100 * 3 ** attempt));
      }
    }
  }

  /** The waiter of this process that waits for the name, if any. */
  #waiterHere(): Waiter | undefined {
    return this.#keys.cluster
      ? undefined
      : waiterFor(this.#connection, this.name);
  }

  /**
   * Runs RELEASE for `id`; `turn` (the mark, the epoch known, the next
   * holding's expiry) asks for a holder's turn. A hand-over draws its token
   * in one write while the process knows the counter's epoch. A waiter of this process that waits
   * for the name (`here`) is handed the lock in the reply; when one of its
   * waits took the lock, the release queues its next wait first (see
   * `NameWaits.lend`), which is settled on every path.
   */
  async #letGo(
    id: string,
    here: Waiter | undefined,
    turn?: readonly [mark: string, known: string, px: string],
  ): Promise<Reply> {
    const lent = here?.lend(this.name);
    const known = viewOf(this.#connection, this.#keys.fence).known;
    // Only a waiter of this process needs the time (a loop would pay it).
    const sentAt = here === undefined ? 0 : performance.now();
    let reply: Reply | undefined;
    try {
      reply = await releaseScripts[+this.#pythonPeers](this.#keys).handOver(
        this.#connection,
        this.#keys,
        this.#signalExpire,
        turn !== undefined ? [id, "", ...turn] : [
          id,
          here?.process ?? "",
          "",
          known,
          ...(lent === undefined ? [] : ["", lent.entry]),
        ],
      );
    } finally {
      lent?.settle(reply, sentAt);
    }
    if (Array.isArray(reply) && reply[0] === 3) {
      here?.handedHere(String(reply[1]), Number(reply[2]), sentAt);
    }
    return reply;
  }

  /**
   * Releases the lock and wakes a waiter. Works from any instance with the
   * holder's id, as in python-redis-lock (a holding taken from a holder's
   * turn with no round trip is under the turn's mark: only the
   * instance that holds it releases it).
   *
   * @throws {NotAcquiredError} When this id does not hold the lock: it
   * expired, was reset, or was never acquired.
   * @throws {LockError} When Redis fails.
   *
   * @example
   * ```ts ignore
   * await lock.acquire();
   * try { /* … *\/ } finally { await lock.release(); }
   * ```
   */
  async release(): Promise<void> {
    const lease = this.#lease;
    // Only a current holding asks for a turn: a release of an ended one (a
    // second release) would end the turn of the process's next holding.
    const current = lease !== undefined && !lease.ended;
    const id = this.#holdingId;
    const wasLost = lease?.lost ?? false;
    lease?.end(
      this.#released ??= new LockError(`Lock '${this.name}' was released`),
    );
    // A waiter of this process is handed the lock in the reply; else a
    // holding that loops asks for a holder's turn.
    const here = this.#waiterHere();
    const turns = this.#keys.cluster
      ? undefined
      : holderTurnsOf(this.#connection);
    const tenure = this.#tenure;
    const sentAt = performance.now();
    const askTurn = here === undefined && turns !== undefined && current &&
      this.#looping && sentAt - this.#heldFrom < HOLDER_TURN &&
      sentAt - tenure < HOLDER_TENURE &&
      turns.turnsIn(this.name, tenure) < HOLDER_TURNS;
    // The next holding's token is drawn for a lock with an expiry: one
    // without has no deadline, which a mark's cannot be.
    const px = this.#expire;
    const known = px === undefined
      ? ""
      : viewOf(this.#connection, this.#keys.fence).known;
    // A release whose reply is lost (or that a re-sent run finds done) may
    // have left the turn's mark: it ends the turn at once.
    const mark = askTurn ? turns!.nextMark() : "";
    const endTurn = (via?: Sender) => this.#endTurn(mark, via);
    const reply = await attempt(
      "release",
      this.name,
      () =>
        askTurn
          ? this.#letGo(id, undefined, [
            mark,
            known,
            String(px ?? TURN_LEASE),
          ])
          : this.#letGo(id, here),
    ).catch((error) => {
      if (askTurn) turns!.mayHaveLeft(endTurn);
      throw error;
    });
    if (lease !== undefined && reply !== 1) turns?.released(this.name);
    if (reply === 4 || (Array.isArray(reply) && reply[0] === 4)) {
      // With the next token drawn, an acquire takes the turn with no command.
      const local = Array.isArray(reply)
        ? { token: Number(reply[1]), epoch: known, px: px!, since: sentAt }
        : undefined;
      turns!.given(this.name, mark, tenure, endTurn, local);
      return;
    }
    if (reply === 1 && askTurn) turns!.mayHaveLeft(endTurn);
    // Handed to a waiter of this process (see #letGo).
    if (Array.isArray(reply)) return;
    if (reply === 1) {
      throw new NotAcquiredError(
        `Lock '${this.name}' is not acquired with id '${this.id}' or it already expired`,
        { cause: wasLost ? lease?.reason : undefined },
      );
    }
    if (reply === 2) {
      viewOf(this.#connection, this.#keys.fence).turnOpened(this.name);
    }
  }

  /**
   * Ends a holder's turn of this process that no acquire took: the lock,
   * still set to the turn's mark, is let go as a release does.
   */
  async #endTurn(
    mark: string,
    via: Sender = this.#connection,
  ): Promise<unknown> {
    return await resetScripts[+this.#pythonPeers](this.#keys).handOver(
      via,
      this.#keys,
      this.#signalExpire,
      [mark],
    );
  }

  /**
   * Sets the lock's remaining life to `expire` ms (default: the lock's own
   * `expire`). Works from any instance with the holder's id (but for a
   * holding under a turn's mark: see `release()`).
   *
   * @param expire New expiry in ms, a positive integer.
   * @throws {TypeError} When neither `expire` nor the lock's `expire` is set.
   * @throws {RangeError} When `expire` is not a positive integer.
   * @throws {NotAcquiredError} When this id does not hold the lock; this
   * instance's `signal` then aborts with a {@linkcode LockLostError}.
   * @throws {NotExpirableError} When the lock is held without expiry.
   * @throws {LockError} When Redis fails.
   *
   * @example
   * ```ts ignore
   * const lock = new Lock(client, "report:42", { expire: 10_000 });
   * await lock.acquire();
   * await lock.extend(60_000); // a long step ahead
   * ```
   */
  async extend(expire?: number): Promise<void> {
    const action = "extend lock";
    if (expire !== undefined) positiveInteger(action, "expire", expire);
    const ms = expire ?? this.#expire;
    if (ms === undefined) {
      throw new TypeError(
        invalid(
          action,
          "expire",
          "must be given as the lock has no expire of its own",
          expire,
        ),
      );
    }
    const lease = this.#lease?.ended === false ? this.#lease : undefined;
    const setting = lease?.setting(ms, true);
    let reply;
    try {
      reply = await attempt(
        "extend",
        this.name,
        () =>
          extendScript.call(this.#connection, this.#keys, [
            this.#holdingId,
            String(ms),
          ]),
      );
    } catch (error) {
      // The extension may have run: the lock may now die sooner.
      if (setting !== undefined) lease!.settled(setting, undefined);
      throw error;
    }
    if (setting !== undefined) {
      lease!.settled(setting, reply === 1 ? false : reply === 0 ? true : null);
    }
    if (reply === 1) {
      throw new NotAcquiredError(
        `Lock '${this.name}' is not acquired with id '${this.id}' or it already expired`,
      );
    }
    if (reply === 2) {
      throw new NotExpirableError(
        `Lock '${this.name}' has no expiry to extend`,
      );
    }
  }

  /**
   * Whether anyone holds the lock.
   *
   * @example
   * ```ts ignore
   * if (await new Lock(client, "report:42").locked()) console.log("busy");
   * ```
   */
  async locked(): Promise<boolean> {
    const reply = await attempt(
      "inspect",
      this.name,
      () => this.#connection.send("EXISTS", [this.#keys.lock]),
    );
    return reply === 1;
  }

  /**
   * The id of the current holder, or `null` when the lock is free. This
   * instance's own id while it holds the lock under a holder's turn's mark
   * (which others read: see `release()`).
   *
   * @example
   * ```ts ignore
   * const owner = await new Lock(client, "report:42").ownerId();
   * ```
   */
  async ownerId(): Promise<string | null> {
    const holdingId = this.#holdingId;
    const reply = await attempt(
      "inspect",
      this.name,
      () => this.#connection.send("GET", [this.#keys.lock]),
    );
    if (reply === null) return null;
    // A holding of this instance under a turn's mark is this instance's.
    return holdingId !== this.id && reply === holdingId
      ? this.id
      : String(reply);
  }

  /**
   * Deletes the lock whoever holds it, and lets it go as a release does
   * (to the first queued waiter, or waking one). Use with care: the holder
   * loses the lock without being asked, and learns of it only at its next
   * renewal, `extend()` or `release()`. The holder is read first and the
   * reset applies to that holder, so that a reset a client re-sends after a
   * lost reply does not take the lock from the waiter it was handed to.
   *
   * @example
   * ```ts ignore
   * await new Lock(client, "report:42").reset(); // after a crash left it held
   * ```
   */
  async reset(): Promise<void> {
    // Told before the reset is sent: it may run, and hand the lock on,
    // whatever becomes of its reply.
    this.#lease?.lose(`Lock '${this.name}' was reset`);
    await attempt(
      "reset",
      this.name,
      () =>
        resetLock(
          this.#connection,
          this.#keys,
          this.#signalExpire,
          this.#pythonPeers,
        ),
    );
  }

  /**
   * Releases the lock if this instance holds it: `await using` leaves the
   * scope with the lock released. A lock lost while in scope is reported
   * here, by rejecting with the {@linkcode LockLostError}.
   */
  async [Symbol.asyncDispose](): Promise<void> {
    const lease = this.#lease;
    if (lease === undefined) return;
    if (!lease.ended) {
      await this.release();
      return;
    }
    if (!lease.lost) return;
    // Lost as far as this process can tell (its expiry passed without a
    // renewal it could confirm): Redis may still hold it with this id.
    await this.#releaseQuietly(this.#holdingId);
    throw lease.reason;
  }
}

/**
 * Creates a {@linkcode Lock} and acquires it: the one-call form for
 * `await using`.
 *
 * @param client The application's Redis client.
 * @param name The lock's name.
 * @param options The lock's options and the acquisition's.
 * @returns The held lock; leaving an `await using` scope releases it.
 * @throws {AcquireTimeoutError} When `timeout` elapsed.
 * @throws {NotAcquiredError} When the lock is busy and `blocking` is false.
 *
 * @example
 * ```ts ignore
 * import { acquire } from "@x/redis-lock";
 *
 * await using lock = await acquire(client, "report:42", {
 *   expire: 30_000,
 *   autoRenewal: true,
 *   timeout: 5_000,
 * });
 * await work(lock.signal);
 * ```
 */
export function acquire(
  client: RedisClient,
  name: string,
  options?: AcquireLockOptions,
): Promise<Lock>;
/**
 * Creates a {@linkcode RedlockLock} over the masters of `redlock` and
 * acquires it.
 *
 * @param redlock The masters.
 * @param name The lock's name.
 * @param options The lock's options and the acquisition's.
 * @returns The held lock; leaving an `await using` scope releases it.
 * @throws {AcquireTimeoutError} When `timeout` elapsed.
 * @throws {NotAcquiredError} When the lock is busy and `blocking` is false.
 * @throws {LockError} When too many masters failed, at the last attempt.
 *
 * @example
 * ```ts ignore
 * import { acquire, Redlock } from "@x/redis-lock";
 *
 * const redlock = new Redlock([redisA, redisB, redisC]);
 * await using lock = await acquire(redlock, "report:42", { expire: 10_000 });
 * ```
 */
export function acquire(
  redlock: Redlock,
  name: string,
  options?: RedlockLockOptions & AcquireOptions,
): Promise<RedlockLock>;
export async function acquire(
  target: RedisClient | Redlock,
  name: string,
  options?: AcquireLockOptions,
): Promise<Lock | RedlockLock> {
  const redlock = target instanceof Redlock ? target : undefined;
  const { blocking, timeout, signal, ...lockOptions } = optionsObject(
    "acquire",
    options,
    [...(redlock ? REDLOCK_OPTIONS : LOCK_OPTIONS), ...ACQUIRE_OPTIONS],
  ) as AcquireLockOptions;
  const lock = redlock
    ? redlock.lock(name, lockOptions)
    : new Lock(target as RedisClient, name, lockOptions);
  if (await lock.acquire({ blocking, timeout, signal })) return lock;
  if (blocking === false) {
    throw (redlock && refusalOf(lock as RedlockLock)) ||
      new NotAcquiredError(`Lock '${name}' is held by another owner`);
  }
  throw new AcquireTimeoutError(
    `Lock '${name}' was not acquired within ${timeout} ms`,
  );
}
