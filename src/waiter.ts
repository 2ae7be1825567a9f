/**
 * Waiting for busy locks, for a whole process: one waiter per client, with
 * two connections of its own however many locks wait (one for its
 * commands, one for its `BLPOP`).
 *
 * - Each lock name has its waits and one driver that sends every command
 *   about them: see `_name_waits.ts` for the per-name state machine and
 *   its invariants.
 * - A release hands the lock to the first queued entry whose process is
 *   alive and pushes `<ticket>:<token>` to that process's wake list; the
 *   waiter routes it to the name by its ticket.
 * - One `BLPOP` covers the wake list and the signal lists of the names
 *   waited for (where python-redis-lock's releases push): see
 *   `_blocking_pop.ts`.
 * - Every `TICK` the waiter looks at each name again, which keeps its
 *   entries and its process alive in Redis and finds what a lost wake-up
 *   or a dead process left behind.
 * - The waiter's commands run on a connection it owns, never re-sent by
 *   the client: a command whose reply is lost ran once or not at all, and
 *   the driver reads Redis to find out which.
 *
 * @module
 */

import { holderTurnsOf } from "./_holder_turns.ts";
import { type Connection, type RedisClient, toConnection } from "./clients.ts";
import { LockError } from "./errors.ts";
import {
  HAND_OVER_EXPIRE,
  type LockKeys,
  lockKeys,
  PUBSUB_MARK,
  SIGNAL_PREFIX,
  WAKE_PREFIX,
} from "./keys.ts";
import { INSPECT, INTERRUPT as INTERRUPT_SCRIPT, Script } from "./scripts.ts";
import { BlockingPop, INTERRUPT } from "./_blocking_pop.ts";
import type { PopOwner, WakeTransport } from "./_wake_transport.ts";
import { shutdownClusterWaits } from "./_cluster_waits.ts";
import { PollingPop } from "./_polling_pop.ts";
import { PubSubPop } from "./_pubsub_pop.ts";
import type { Transport } from "./options.ts";
import { type Lent, NameWaits, type WaiterContext } from "./_name_waits.ts";
import { OwnedConnection, sleep } from "./_owned_connection.ts";
import { type ServerView, viewOf } from "./_server_view.ts";
import { type Acquisition, Wait, type WaitRequest } from "./_wait.ts";
import { unrefTimer } from "./_runtime.ts";

export type { Acquisition, WaitRequest } from "./_wait.ts";

const inspectScript = new Script(INSPECT, (keys) => keys.all);
const interruptScript = new Script(INTERRUPT_SCRIPT, () => []);

/** Seconds a `BLPOP` blocks, and the period of the waiter's look at its names. */
const TICK = 1;

/** Milliseconds between polls for listeners, with the `"poll"` transport. */
const LISTEN_POLL = 100;

/** Milliseconds an idle waiter keeps its connections before closing them. */
const IDLE = 1_000;

/** Milliseconds `shutdown()` waits for Redis to clean up. */
const SHUTDOWN_TIMEOUT = 2_000;

type Timer = ReturnType<typeof setTimeout>;

const now = () => performance.now();

/** A random process id (base64url, 16 characters). */
export function randomProcessId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return btoa(String.fromCharCode(...bytes)).replaceAll("+", "-")
    .replaceAll("/", "_");
}

/** The error of a wait that `shutdown()` ended. */
export function shutDown(name: string): LockError {
  return new LockError(`Stopped waiting for lock '${name}': shut down`);
}

/** Every wait of this process on one client. */
export class Waiter implements WaiterContext {
  readonly process: string;
  readonly view: ServerView;
  readonly control: OwnedConnection;
  readonly #wakeKey: string;
  readonly #names = new Map<string, NameWaits>();
  /** Names waited for lately, and when their waits ended. */
  readonly #lately = new Map<string, number>();
  /**
   * Signal lists listened to without a wait of this library's queue
   * (Redlock's waiters), with their signal expiry and who to wake.
   */
  readonly #listeners = new Map<
    string,
    {
      readonly signalExpire: number;
      readonly wake: Set<(shutDown: boolean) => void>;
    }
  >();
  /** Tickets that may receive a hand-over, and their names. */
  readonly #tickets = new Map<number, NameWaits>();
  readonly #pop: WakeTransport;
  #sequence = 0;
  #emptyAt = -Infinity;
  #tickTimer: Timer | undefined;
  #idleTimer: Timer | undefined;
  /** Commands no name owns (wake-ups put back, interrupts), for shutdown. */
  readonly #loose = new Set<Promise<unknown>>();
  #closed = false;
  #abandoned = false;

  /**
   * @param main The application's connection.
   * @param transport How hand-overs and wake-ups reach this process.
   */
  constructor(main: Connection, transport: Transport) {
    this.process = (transport === "pubsub" ? PUBSUB_MARK : "") +
      randomProcessId();
    this.#wakeKey = WAKE_PREFIX + this.process;
    this.view = viewOf(main);
    // A client that cannot open connections can still poll on its own.
    this.control = new OwnedConnection(main, !main.canDuplicate);
    const owner: PopOwner = {
      wanted: () => this.#wanted(),
      popped: (key, value, signalExpire) =>
        key === this.#wakeKey
          ? this.#onWake(value)
          : this.#onSignal(key, value, signalExpire),
      empty: (sentAt) => this.#emptyAt = Math.max(this.#emptyAt, sentAt),
      recovered: (keys) => this.#recovered(keys),
      failed: (error) => {
        for (const waits of this.#names.values()) waits.failAll(error);
      },
      interrupt: () => this.#interrupt(),
    };
    this.#pop = transport === "poll"
      ? new PollingPop(
        this.control,
        owner,
        this.#wakeKey,
        () => this.#pollInterval(),
      )
      : transport === "pubsub"
      ? new PubSubPop(this.control, owner, this.#wakeKey, main, TICK * 1000)
      : new BlockingPop(main, owner, this.#wakeKey, TICK);
  }

  /** The shortest poll interval among the waits, in ms. */
  #pollInterval(): number {
    let interval = Infinity;
    for (const waits of this.#names.values()) {
      for (const wait of waits.waits) {
        interval = Math.min(interval, wait.request.pollInterval);
      }
    }
    if (this.#listeners.size > 0) interval = Math.min(interval, LISTEN_POLL);
    return interval === Infinity ? TICK * 1000 : interval;
  }

  get abandoned(): boolean {
    return this.#abandoned;
  }

  /**
   * Acquires the lock, waiting for it: resolves with the acquisition, or
   * `undefined` when the deadline passed; rejects with the signal's reason
   * when aborted.
   */
  acquire(request: WaitRequest): Promise<Acquisition | undefined> {
    const { name } = request;
    if (this.#closed) return Promise.reject(shutDown(name));
    let waits = this.#names.get(name);
    if (waits === undefined) {
      waits = new NameWaits(name, request.keys, this);
      this.#names.set(name, waits);
    }
    const owner = waits;
    const wait = new Wait(
      request,
      () => owner.poke(),
      () => this.#unreachable(name),
    );
    waits.join(wait);
    clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
    this.#tick();
    return wait.promise;
  }

  /**
   * Whether this process waits for the lock `name`, or did within the last
   * `IDLE` ms: then its next acquire goes straight to the waiter, which
   * tries the lock and queues in one round trip.
   */
  waitsFor(name: string): boolean {
    if (this.#names.has(name)) return true;
    const ended = this.#lately.get(name);
    if (ended === undefined) return false;
    if (now() - ended < IDLE) return true;
    this.#lately.delete(name);
    return false;
  }

  /** Whether a driver of this process still acts on the lock `name`. */
  drives(name: string): boolean {
    return this.#names.has(name);
  }

  /** A timeout while Redis cannot be reached is an error that says so. */
  #unreachable(name: string): LockError | undefined {
    const failing = this.control.failing ?? this.#pop.failing;
    if (failing === undefined) return undefined;
    return new LockError(
      `Cannot acquire lock '${name}': Redis unreachable for ${
        Math.round(now() - failing.since)
      } ms`,
      { cause: failing.error },
    );
  }

  ticket(): string {
    return String(++this.#sequence);
  }

  /**
   * A release of this process handed the lock to one of its waiters: the
   * release's reply carries `<ticket>`, the token, and when it was sent.
   */
  handedHere(ticket: string, token: number, sentAt: number): void {
    this.#tickets.get(Number(ticket))?.mail(ticket, token, sentAt, true);
  }

  /**
   * A release of the lock `name` by this process is about to be sent: the
   * next local wait to queue in the same script, if any (see
   * `NameWaits.lend`).
   */
  lend(name: string): Lent | undefined {
    return this.#names.get(name)?.lend();
  }

  register(ticket: string, waits: NameWaits): void {
    this.#tickets.set(Number(ticket), waits);
  }

  retire(ticket: string): void {
    this.#tickets.delete(Number(ticket));
  }

  pump(): void {
    this.#pop.pump();
  }

  forget(waits: NameWaits): void {
    if (this.#names.get(waits.name) !== waits) return;
    this.#names.delete(waits.name);
    const at = now();
    if (this.#lately.size >= 256) {
      for (const [name, ended] of this.#lately) {
        if (at - ended >= IDLE) this.#lately.delete(name);
      }
    }
    this.#lately.set(waits.name, at);
    if (this.#names.size === 0) this.#idleSoon();
  }

  /**
   * The signal lists the `BLPOP` covers (with their signal expiry), or
   * `undefined` when no name waits in Redis.
   */
  #wanted(): Map<string, number> | undefined {
    let keys: Map<string, number> | undefined;
    for (const waits of this.#names.values()) {
      if (!waits.listens) continue;
      keys ??= new Map();
      keys.set(waits.keys.signal, waits.signalExpire);
    }
    for (const [key, { signalExpire }] of this.#listeners) {
      keys ??= new Map();
      keys.set(key, signalExpire);
    }
    if (keys === undefined && this.#tickets.size > 0) keys = new Map();
    return keys;
  }

  /**
   * Calls `wake` at every wake-up left in the signal list of `keys` (by a
   * release or a reset on this server, of either library), when the
   * transport recovers from a failure that may have lost one, and at
   * shutdown (with `shutDown` true). The wake-up is taken: whoever listens
   * races for the lock. The returned function stops listening; it must be
   * called on every path.
   */
  listen(
    keys: LockKeys,
    signalExpire: number,
    wake: (shutDown: boolean) => void,
  ): () => void {
    if (this.#closed) {
      wake(true);
      return () => {};
    }
    let listener = this.#listeners.get(keys.signal);
    if (listener === undefined) {
      listener = { signalExpire, wake: new Set() };
      this.#listeners.set(keys.signal, listener);
    }
    listener.wake.add(wake);
    clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
    this.#pop.pump();
    return () => {
      const current = this.#listeners.get(keys.signal);
      if (current?.wake.delete(wake) && current.wake.size === 0) {
        this.#listeners.delete(keys.signal);
      }
      if (this.#names.size === 0 && this.#listeners.size === 0) {
        this.#idleSoon();
      }
    };
  }

  /** Wakes the listeners of a signal list; whether there were any. */
  #wakeListeners(key: string, shutDown = false): boolean {
    const listener = this.#listeners.get(key);
    if (listener === undefined) return false;
    for (const wake of listener.wake) wake(shutDown);
    return true;
  }

  /** A hand-over, or an interrupt, from the wake list. */
  #onWake(value: string): void {
    if (value === INTERRUPT) return;
    const colon = value.indexOf(":");
    const ticket = value.slice(0, colon);
    // A ticket no longer routed belongs to a presence already ended: the
    // driver that ended it passed on whatever was handed to it.
    this.#tickets.get(Number(ticket))?.mail(
      ticket,
      Number(value.slice(colon + 1)),
      this.#emptyAt,
    );
  }

  /**
   * A release of python-redis-lock (or a reset) left a wake-up for a name.
   * A name nobody here waits for any more gets it back.
   */
  #onSignal(key: string, value: string, signalExpire: number): void {
    const name = key.slice(SIGNAL_PREFIX.length);
    const waits = this.#names.get(name);
    if (waits?.listens) {
      waits.signalled(value);
      return;
    }
    if (this.#wakeListeners(key)) return;
    this.putBack(lockKeys(name), signalExpire, value);
  }

  /**
   * A look at a lock on behalf of nobody here: hands a free lock to the
   * first queued waiter, or puts the wake-up `value` back (`""`: leaves one
   * if the lock is free and nobody is queued).
   */
  putBack(keys: LockKeys, signalExpire: number, value: string): void {
    this.#send(
      inspectScript.handOver(this.control, keys, signalExpire, [
        "",
        "",
        "",
        value,
      ]),
    );
  }

  /**
   * The waiting connection answers again: every name is looked at, and so
   * are the signal lists the failed `BLPOP` covered, whose wake-up may have
   * been popped with a reply that was lost.
   */
  #recovered(keys: ReadonlyMap<string, number>): void {
    this.#checkAll();
    for (const [key, signalExpire] of keys) {
      const name = key.slice(SIGNAL_PREFIX.length);
      if (this.#names.get(name)?.listens || this.#wakeListeners(key)) continue;
      this.putBack(lockKeys(name), signalExpire, "");
    }
  }

  #interrupt(): void {
    this.#send(interruptScript.run(this.control, [this.#wakeKey], [
      INTERRUPT,
      String(HAND_OVER_EXPIRE),
    ]));
  }

  /** A command no name owns: errors are ignored, shutdown waits for it. */
  #send(command: Promise<unknown>): void {
    const sent = command.catch(() => {}).finally(() =>
      this.#loose.delete(sent)
    );
    this.#loose.add(sent);
  }

  #checkAll(): void {
    for (const waits of this.#names.values()) waits.check();
  }

  /**
   * Every `TICK`, each name is looked at again. The timer keeps the
   * process alive while a wait wants the lock, and only then.
   */
  #tick(): void {
    if (this.#tickTimer !== undefined || this.#closed) return;
    this.#tickTimer = setTimeout(() => {
      this.#tickTimer = undefined;
      if (this.#names.size === 0) return;
      this.#checkAll();
      this.#tick();
    }, TICK * 1000);
    const wanting = [...this.#names.values()].some((waits) =>
      waits.waits.some((wait) => wait.wants)
    );
    if (!wanting) unrefTimer(this.#tickTimer);
  }

  /** Closes the connections once nothing has waited for a while. */
  #idleSoon(): void {
    if (this.#idleTimer !== undefined || this.#closed) return;
    this.#idleTimer = setTimeout(() => {
      this.#idleTimer = undefined;
      // Their end brings another idle spell.
      if (this.#names.size > 0 || this.#listeners.size > 0) return;
      if (this.#loose.size > 0 || this.#pop.running || !this.control.idle) {
        // The last BLPOP or command is still on its way: look again later.
        this.#idleSoon();
        return;
      }
      clearTimeout(this.#tickTimer);
      this.#tickTimer = undefined;
      void this.#pop.closeIfIdle();
      void this.control.close();
    }, IDLE);
    unrefTimer(this.#idleTimer);
  }

  /**
   * Stops waiting: every pending `acquire()` rejects, their entries leave
   * the queues in Redis (if Redis answers within `SHUTDOWN_TIMEOUT`), and
   * the connections close.
   */
  async shutdown(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#idleTimer);
    clearTimeout(this.#tickTimer);
    this.#idleTimer = this.#tickTimer = undefined;
    const names = [...this.#names.values()];
    for (const waits of names) {
      for (const wait of waits.waits) {
        wait.giveUp({ reason: shutDown(waits.name) });
      }
    }
    for (const key of [...this.#listeners.keys()]) {
      this.#wakeListeners(key, true);
    }
    this.#listeners.clear();
    const cleaned = Promise.all([
      ...names.map((waits) => waits.drained),
      ...this.#loose,
    ]).then(() => {});
    await sleep(SHUTDOWN_TIMEOUT, { promise: cleaned });
    // Whatever Redis has not answered by now fails with the connections.
    this.#abandoned = true;
    await Promise.all([this.#pop.close(), this.control.close(true)]);
    for (const waits of names) waits.poke();
    await Promise.all(names.map((waits) => waits.drained));
  }
}

/** The waiters of each client's connection, one per transport. */
const waiters = new WeakMap<Connection, Map<Transport, Waiter>>();

/**
 * The waiter of a client's connection for a transport, made on first use.
 * Without a transport: `"blpop"`; for a client that cannot open
 * connections, `"pubsub"` if it subscribes, else `"poll"`.
 */
export function waiterOf(
  connection: Connection,
  transport: Transport = connection.canDuplicate
    ? "blpop"
    : connection.canSubscribe
    ? "pubsub"
    : "poll",
): Waiter {
  let byTransport = waiters.get(connection);
  if (byTransport === undefined) {
    byTransport = new Map();
    waiters.set(connection, byTransport);
  }
  let waiter = byTransport.get(transport);
  if (waiter === undefined) {
    waiter = new Waiter(connection, transport);
    byTransport.set(transport, waiter);
  }
  return waiter;
}

/**
 * The waiter of the client that waits for the lock `name`, if any: a
 * release hands the lock to its waiters in the reply.
 */
export function waiterFor(
  connection: Connection,
  name: string,
): Waiter | undefined {
  return [...waiters.get(connection)?.values() ?? []].find((waiter) =>
    waiter.drives(name)
  );
}

/**
 * Whether a waiter of the client still acts on the lock `name` (a wait, or
 * the clean-up after one that gave up).
 */
export function drivesName(connection: Connection, name: string): boolean {
  return [...waiters.get(connection)?.values() ?? []].some((waiter) =>
    waiter.drives(name)
  );
}

/** Shuts the client's waiters down, if any; the next wait makes new ones. */
export async function shutdownWaiter(connection: Connection): Promise<void> {
  const byTransport = waiters.get(connection);
  waiters.delete(connection);
  await Promise.all(
    [...byTransport?.values() ?? []].map((waiter) => waiter.shutdown()),
  );
}

/**
 * Stops this library's waiting on `client`: every pending `acquire()` on it
 * rejects with a {@linkcode LockError}, its place in the lock queues in Redis
 * is given up, and the waiting connections close; a holder's turn of the
 * client not yet taken is handed on, and the connection that hands turns on
 * closes. Held locks are not touched. Without it, the library's connections
 * close by themselves about a second after the last wait or hand-on; call
 * it when shutting down, or in tests that check for leaked sockets. A later
 * wait opens new connections.
 *
 * @param client The application's client, as given to {@linkcode Lock}.
 *
 * @example
 * ```ts ignore
 * import { shutdown } from "@x/redis-lock";
 *
 * await shutdown(redis);
 * await redis.quit();
 * ```
 */
export async function shutdown(client: RedisClient): Promise<void> {
  const connection = toConnection(client);
  await Promise.all([
    shutdownWaiter(connection),
    shutdownClusterWaits(connection),
    holderTurnsOf(connection).endAll(),
  ]);
}
