/**
 * Waiting for busy locks, for a whole process: one waiter per client, on one
 * connection of its own however many locks wait.
 *
 * - Each lock name has a local first-come first-served queue. Only its head
 *   has an entry in the lock's queue in Redis (`lock-queue:<name>`), so
 *   later local waiters cost Redis nothing.
 * - A release hands the lock to the first entry in Redis and pushes
 *   `<ticket>:<token>` to the wake list of that entry's process: the new
 *   holder learns it holds the lock from the push itself, with no further
 *   round trip.
 * - One `BLPOP` covers the wake list and the signal lists of the names
 *   waited for (where python-redis-lock's releases push): see
 *   `_blocking_pop.ts`.
 * - A timer per name wakes the waiter when the holder's expiry passes; every
 *   `TICK` the waiter looks at each name again, which finds a process that
 *   died after being handed a lock.
 * - A waiter that gives up leaves its place in Redis to the next local
 *   waiter, and if the lock was already handed to it, passes the lock on.
 * - With `fair: false` a head does not queue in Redis: it waits for a
 *   wake-up in the signal list and races for the lock.
 *
 * The file is long because these steps share one set of invariants (a
 * wait's entry, ticket and place in its queue change together, one Redis
 * operation per name at a time); split, they would be harder to check.
 *
 * @module
 */

import {
  type Connection,
  type RedisClient,
  type Reply,
  toConnection,
} from "./clients.ts";
import { AlreadyAcquiredError, LockError } from "./errors.ts";
import {
  HAND_OVER_EXPIRE,
  type LockKeys,
  lockKeys,
  SIGNAL_PREFIX,
  WAKE_PREFIX,
} from "./keys.ts";
import { MAX_TIMER_DELAY } from "./options.ts";
import { ACQUIRE, CANCEL, INSPECT, RELEASE, Script } from "./scripts.ts";
import { BlockingPop } from "./_blocking_pop.ts";
import {
  type Acquisition,
  NameQueue,
  Wait,
  type WaitRequest,
} from "./_wait.ts";

export type { Acquisition, WaitRequest } from "./_wait.ts";

const acquireScript = new Script(ACQUIRE, (keys) => keys.forAcquire);
const releaseScript = new Script(RELEASE);
const inspectScript = new Script(INSPECT);
const cancelScript = new Script(CANCEL);

/** Seconds a `BLPOP` blocks before the waiter looks at every name again. */
const TICK = 1;

/** Milliseconds an idle waiter keeps its connection before closing it. */
const IDLE = 1_000;

type Timer = ReturnType<typeof setTimeout>;

/** No acquire waits for a first try: shared, never changed. */
const NONE: (() => void)[] = [];

function shutDown({ name }: WaitRequest): LockError {
  return new LockError(`Stopped waiting for lock '${name}': shut down`);
}

function alreadyHeld({ name, id }: WaitRequest): AlreadyAcquiredError {
  return new AlreadyAcquiredError(
    `Lock '${name}' is already held with id '${id}'`,
  );
}

/** Runs INSPECT: `[state, pttl, queued, owner]`. */
async function inspect(
  connection: Connection,
  keys: LockKeys,
  signalExpire: number | undefined,
  entry: string | undefined,
  passOn: boolean,
): Promise<Reply[]> {
  return await inspectScript.handOver(connection, keys, signalExpire ?? 1000, [
    entry ?? "",
    passOn ? "1" : "",
  ]) as Reply[];
}

const now = () => performance.now();

function randomProcessId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return btoa(String.fromCharCode(...bytes)).replaceAll("+", "-")
    .replaceAll("/", "_");
}

/** Every wait of this process on one client. */
export class Waiter {
  readonly #main: Connection;
  readonly #process = randomProcessId();
  readonly #wakeKey = WAKE_PREFIX + this.#process;
  readonly #queues = new Map<string, NameQueue>();
  /** Acquires that wait for another's first try of the same name. */
  readonly #trying = new Map<string, (() => void)[]>();
  /**
   * Tickets whose queueing command is on its way, with a hand-over that
   * arrived before its reply.
   */
  readonly #sent = new Map<string, string | undefined>();
  /** Commands no wait owns yet (first tries, wake-ups put back), for shutdown(). */
  #unowned = 0;
  #drained: (() => void) | undefined;
  /** Waits with an entry in Redis, by ticket. */
  readonly #tickets = new Map<string, Wait>();
  #sequence = 0;
  readonly #pop: BlockingPop;
  /** Sent time of the latest `BLPOP` that found the wake list empty. */
  #emptyAt = -Infinity;
  /** When every name was last looked at. */
  #lastTick = now();
  #closed = false;

  constructor(main: Connection) {
    this.#main = main;
    this.#pop = new BlockingPop(
      main,
      {
        wantedKeys: () => this.#wantedKeys(),
        popped: (key, value) =>
          key === this.#wakeKey ? this.#onWake(value) : this.#onSignal(key),
        empty: (keys, sentAt) => {
          // The wake list was empty when that BLPOP ended: whatever it holds
          // later was pushed after it was sent.
          if (keys.has(this.#wakeKey)) {
            this.#emptyAt = Math.max(this.#emptyAt, sentAt);
          }
        },
        ended: () => {
          if (now() - this.#lastTick >= TICK * 1000) {
            this.#lastTick = now();
            this.#tick();
          }
        },
        failed: (error) => this.#failAll(error),
      },
      TICK,
      IDLE,
    );
  }

  /**
   * Acquires the lock, waiting for it: resolves with the acquisition, or
   * `undefined` when the deadline passed; rejects with the signal's reason
   * when aborted.
   */
  acquire(request: WaitRequest): Promise<Acquisition | undefined> {
    if (this.#closed) return Promise.reject(shutDown(request));
    const { name } = request;
    if (this.#queues.has(name)) return this.#join(request);
    const deferred = this.#trying.get(name);
    if (deferred !== undefined) {
      // Another acquire here is trying this name: its answer decides.
      const { promise, resolve } = Promise.withResolvers<
        Acquisition | undefined
      >();
      const next = () => resolve(this.acquire(request));
      if (deferred === NONE) this.#trying.set(name, [next]);
      else deferred.push(next);
      return promise;
    }
    // Nobody here waits for this name: try at once, queueing if busy.
    this.#trying.set(name, NONE);
    const ticket = this.#ticket();
    const { keys, id, expire, fair } = request;
    if (fair) this.#sent.set(ticket, undefined);
    const sentAt = now();
    // Once the answer is known (and the wait joined, if it must), the
    // acquires that waited for it go on in order.
    const answered = () => {
      this.#done();
      this.#sent.delete(ticket);
      const waiting = this.#trying.get(name)!;
      this.#trying.delete(name);
      for (const next of waiting) next();
    };
    this.#unowned++;
    return acquireScript.call(this.#main, keys, [
      id,
      expire === undefined ? "" : String(expire),
      fair ? `${this.#process}|${ticket}` : "",
    ]).then((reply) => {
      if (typeof reply === "number") {
        answered();
        return { token: reply, since: sentAt, initial: expire };
      }
      const [status, value] = reply as number[];
      if (status === 2) {
        answered();
        throw alreadyHeld(request);
      }
      const joined = this.#join(request, { ticket, sentAt, pttl: value });
      answered();
      return joined;
    }, (error) => {
      answered();
      throw error;
    });
  }

  /** A command no wait owned has settled. */
  #done(): void {
    if (--this.#unowned === 0) this.#drained?.();
  }

  #ticket(): string {
    return String(++this.#sequence);
  }

  #entry(ticket: string, { id, expire }: WaitRequest): string {
    return `${this.#process}|${ticket}|${expire ?? ""}|${id}`;
  }

  /**
   * Joins the local queue of the name, after a try that found the lock
   * busy (and queued in Redis if fair), or without one.
   */
  #join(
    request: WaitRequest,
    tried?: { ticket: string; sentAt: number; pttl: number },
  ): Promise<Acquisition | undefined> {
    const { promise, resolve, reject } = Promise.withResolvers<
      Acquisition | undefined
    >();
    const wait = new Wait(request, resolve, reject);
    let queue = this.#queues.get(request.name);
    if (queue === undefined) {
      queue = new NameQueue(request.keys);
      this.#queues.set(request.name, queue);
    }
    queue.waits.push(wait);

    const { deadline, signal } = request;
    if (deadline !== Infinity) {
      const expire = () => {
        const left = deadline - now();
        if (left > 0) {
          wait.timer = setTimeout(expire, Math.min(left, MAX_TIMER_DELAY));
        } else {
          this.#giveUp(queue, wait, undefined);
        }
      };
      expire();
    }
    if (signal !== undefined) {
      wait.onAbort = () => this.#giveUp(queue, wait, { reason: signal.reason });
      signal.addEventListener("abort", wait.onAbort, { once: true });
    }

    if (tried !== undefined) {
      this.#waitFor(queue, wait, tried.ticket, tried.sentAt, tried.pttl);
    } else if (queue.waits.length === 1) {
      this.#serial(queue, () => this.#advance(queue));
    }
    if (signal?.aborted) wait.onAbort!();
    return promise;
  }

  /** Runs `operation` after every earlier operation on the same name. */
  #serial(queue: NameQueue, operation: () => Promise<void>): void {
    queue.chain = queue.chain.then(operation).catch((error) =>
      this.#failQueue(queue, error)
    );
  }

  /**
   * A failure fails the name's waits; their entries leave the queue in
   * Redis if Redis still answers.
   */
  async #failQueue(queue: NameQueue, error: unknown): Promise<void> {
    const failure = error instanceof TypeError ? error : undefined;
    for (const wait of queue.waits.splice(0)) {
      if (wait.entry !== undefined) {
        await this.#cancel(wait, "").catch(() => {});
      }
      wait.reject(
        failure ??
          new LockError(
            `Cannot wait for lock '${wait.request.name}': Redis failed`,
            { cause: error },
          ),
      );
    }
    this.#forget(queue);
  }

  /** A try found the lock busy: the wait now waits in Redis's way for it. */
  #waitFor(
    queue: NameQueue,
    wait: Wait,
    ticket: string,
    sentAt: number,
    pttl?: number,
  ): void {
    if (wait.request.fair) {
      wait.ticket = ticket;
      wait.entry = this.#entry(ticket, wait.request);
      wait.since = sentAt;
      this.#tickets.set(ticket, wait);
      const early = this.#sent.get(ticket);
      this.#sent.delete(ticket);
      if (early !== undefined) return this.#onWake(early);
    } else {
      wait.armed = true;
    }
    if (pttl !== undefined) this.#armExpiry(queue, pttl);
    this.#pop.pump();
  }

  /**
   * Lets the head of a name's queue try the lock, and queue in Redis when it
   * is busy; settles heads for as long as they get an answer at once.
   */
  async #advance(queue: NameQueue): Promise<void> {
    for (;;) {
      const head = queue.head;
      if (head === undefined) {
        this.#forget(queue);
        return;
      }
      if (head.entry !== undefined || head.armed) return;
      const { keys, id, expire, signalExpire, fair } = head.request;
      const queueIt = fair && !head.abandoned;
      const ticket = this.#ticket();
      if (queueIt) this.#sent.set(ticket, undefined);
      const sentAt = now();
      const reply = await acquireScript.call(this.#main, keys, [
        id,
        expire === undefined ? "" : String(expire),
        queueIt ? `${this.#process}|${ticket}` : "",
      ]).catch((error) => {
        this.#sent.delete(ticket);
        throw error;
      });
      const [status, value] = typeof reply === "number"
        ? [1, reply]
        : reply as number[];
      if (status === 0 && !head.abandoned) {
        this.#waitFor(queue, head, ticket, sentAt, value);
        return;
      }
      this.#sent.delete(ticket);
      queue.waits.shift();
      if (status === 0) {
        if (queueIt) {
          head.entry = this.#entry(ticket, head.request);
          await this.#cancel(head, "");
        }
        head.settleAbandoned();
      } else if (status === 2) {
        head.reject(alreadyHeld(head.request));
      } else if (head.aborted) {
        await releaseScript.handOver(this.#main, keys, signalExpire, [id]);
        head.settleAbandoned();
      } else {
        head.resolve({ token: value, since: sentAt, initial: expire });
      }
    }
  }

  /** Gives up a wait: on timeout (`abandoned` undefined) or on abort. */
  #giveUp(
    queue: NameQueue,
    wait: Wait,
    abandoned: { reason: unknown } | undefined,
  ): void {
    if (wait.settled || wait.abandoned) return;
    wait.abandoned = abandoned ?? { reason: undefined };
    const index = queue.waits.indexOf(wait);
    if (index > 0 && wait.entry === undefined) {
      // Not in Redis: nothing to undo there.
      queue.waits.splice(index, 1);
      wait.settleAbandoned();
      return;
    }
    // The head may be trying the lock right now: after that, it leaves.
    this.#serial(queue, async () => {
      if (wait.settled) return;
      if (wait.entry !== undefined) return this.#leave(queue, wait);
      if (wait.armed) {
        // Nothing in Redis to undo; the next local waiter tries in its turn.
        queue.waits.splice(queue.waits.indexOf(wait), 1);
        wait.settleAbandoned();
        await this.#advance(queue);
      }
    });
  }

  /**
   * Takes a wait that gave up out of the queue in Redis. The head leaves its
   * place to the next local waiter; a lock already handed to it is passed on.
   */
  async #leave(queue: NameQueue, wait: Wait): Promise<void> {
    const next = queue.head === wait
      ? queue.waits.find((other) =>
        other !== wait && other.entry === undefined && !other.abandoned
      )
      : undefined;
    const ticket = next === undefined ? "" : this.#ticket();
    const nextEntry = next === undefined
      ? ""
      : this.#entry(ticket, next.request);
    // A release may hand the place over before this reply comes back.
    if (next !== undefined) this.#sent.set(ticket, undefined);
    const sentAt = now();
    const [status, token] = await this.#cancel(wait, nextEntry).catch(
      (error) => {
        this.#sent.delete(ticket);
        throw error;
      },
    );
    queue.waits.splice(queue.waits.indexOf(wait), 1);
    wait.settleAbandoned();
    if (next !== undefined) {
      if (status === 0) return this.#waitFor(queue, next, ticket, sentAt);
      this.#sent.delete(ticket);
      if (status === 3) {
        queue.waits.splice(queue.waits.indexOf(next), 1);
        next.resolve({ token, since: sentAt, initial: next.handOverExpire });
      }
    }
    await this.#advance(queue);
  }

  async #cancel(wait: Wait, nextEntry: string): Promise<number[]> {
    const { keys, id, signalExpire } = wait.request;
    const entry = wait.entry ?? "";
    if (wait.ticket !== undefined) this.#tickets.delete(wait.ticket);
    wait.entry = undefined;
    return await cancelScript.handOver(this.#main, keys, signalExpire, [
      entry,
      nextEntry,
      id,
    ]) as number[];
  }

  /** A hand-over arrived on the wake list. */
  #onWake(value: string): void {
    const colon = value.indexOf(":");
    const ticket = value.slice(0, colon);
    const wait = this.#tickets.get(ticket);
    if (wait === undefined) {
      // The hand-over can overtake the reply that queued the wait.
      if (this.#sent.has(ticket)) this.#sent.set(ticket, value);
      return;
    }
    // A wait that gave up passes the lock on when it leaves the queue.
    if (wait.abandoned) return;
    this.#tickets.delete(wait.ticket!);
    const queue = this.#queues.get(wait.request.name)!;
    queue.waits.splice(queue.waits.indexOf(wait), 1);
    wait.entry = undefined;
    wait.resolve({
      token: Number(value.slice(colon + 1)),
      since: Math.max(wait.since, this.#emptyAt),
      initial: wait.handOverExpire,
    });
    this.#serial(queue, () => this.#advance(queue));
  }

  /**
   * Looks at a name's lock: hands it over when free, learns the holder's
   * expiry, and queues the head again if its entry was dropped. With
   * `passOn`, a wake-up taken from the signal list that nobody here needs
   * is put back.
   */
  async #inspect(queue: NameQueue, passOn: boolean): Promise<void> {
    const head = queue.head;
    if (head === undefined && !passOn) return;
    const sentAt = now();
    const [state, pttl, queued, owner] = await inspect(
      this.#main,
      queue.keys,
      head?.request.signalExpire,
      head?.entry,
      passOn,
    );
    if (head === undefined || queue.head !== head || head.entry === undefined) {
      return;
    }
    if (queued === 1) {
      head.since = Math.max(head.since, sentAt);
      // Handed to the first in the queue: if it died, its hold ends by then.
      this.#armExpiry(queue, state === 0 ? pttl as number : HAND_OVER_EXPIRE);
      return;
    }
    if (owner === head.request.id) return; // handed to it: the wake-up is coming
    this.#tickets.delete(head.ticket!);
    head.entry = undefined;
    await this.#advance(queue);
  }

  /**
   * A head that races for the lock (not fair) tries it, when a wake-up came
   * from the signal list, when the holder's expiry passed, or at a tick.
   * With `fromSignal`, a wake-up nobody here can use is put back.
   */
  async #race(queue: NameQueue, fromSignal: boolean): Promise<void> {
    const head = queue.head;
    if (head === undefined || !head.armed || head.abandoned) {
      if (fromSignal) {
        await inspect(
          this.#main,
          queue.keys,
          head?.request.signalExpire,
          "",
          true,
        );
      }
      return;
    }
    const { keys, id, expire, signalExpire } = head.request;
    // While it races it takes no further wake-up: one left in the signal
    // list goes to a waiter that can use it.
    head.armed = false;
    const sentAt = now();
    const reply = await acquireScript.call(this.#main, keys, [
      id,
      expire === undefined ? "" : String(expire),
      "",
    ]);
    if (typeof reply !== "number") {
      const [status, pttl] = reply as number[];
      if (status === 0) {
        head.armed = true;
        this.#armExpiry(queue, pttl);
        this.#pop.pump();
        return;
      }
      queue.waits.shift();
      head.reject(alreadyHeld(head.request));
    } else if (head.aborted) {
      queue.waits.shift();
      await releaseScript.handOver(this.#main, keys, signalExpire, [id]);
      head.settleAbandoned();
    } else {
      queue.waits.shift();
      head.resolve({ token: reply, since: sentAt, initial: expire });
    }
    await this.#advance(queue);
  }

  /** Looks at a name again: its head races, or a queued head inspects. */
  #look(queue: NameQueue, fromSignal: boolean): void {
    this.#serial(
      queue,
      () =>
        queue.head?.entry !== undefined
          ? this.#inspect(queue, fromSignal)
          : this.#race(queue, fromSignal),
    );
  }

  /** Wakes the name's head when the holder's expiry passes. */
  #armExpiry(queue: NameQueue, pttl: number): void {
    clearTimeout(queue.ttlTimer);
    queue.ttlTimer = undefined;
    if (pttl < 0) return;
    queue.ttlTimer = setTimeout(() => {
      queue.ttlTimer = undefined;
      this.#look(queue, false);
    }, Math.min(pttl + 1, MAX_TIMER_DELAY));
  }

  /** Drops a name with no waits left. */
  #forget(queue: NameQueue): void {
    if (queue.waits.length > 0) return;
    clearTimeout(queue.ttlTimer);
    queue.ttlTimer = undefined;
    for (const [name, q] of this.#queues) {
      if (q === queue) this.#queues.delete(name);
    }
    this.#pop.pump();
  }

  /**
   * The keys the `BLPOP` should cover: the wake list while a wait is queued
   * in Redis, and the signal list of every name with a waiting head.
   */
  #wantedKeys(): string[] {
    const keys = this.#tickets.size > 0 ? [this.#wakeKey] : [];
    for (const queue of this.#queues.values()) {
      if (queue.waits.some((wait) => wait.entry !== undefined || wait.armed)) {
        keys.push(queue.keys.signal);
      }
    }
    return keys;
  }

  /**
   * A python-redis-lock release (or a reset) left a wake-up for a name. A
   * name nobody here waits for any more gets it back.
   */
  #onSignal(key: string): void {
    const name = key.slice(SIGNAL_PREFIX.length);
    const queue = this.#queues.get(name);
    if (queue !== undefined) {
      this.#look(queue, true);
    } else {
      this.#unowned++;
      inspect(this.#main, lockKeys(name), undefined, undefined, true)
        .catch(() => {})
        .finally(() => this.#done());
    }
  }

  /** The periodic look at every name with a waiting head. */
  #tick(): void {
    for (const queue of this.#queues.values()) {
      const head = queue.head;
      if (head?.entry !== undefined || head?.armed) this.#look(queue, false);
    }
  }

  #failAll(error: unknown): void {
    for (const queue of this.#queues.values()) {
      this.#serial(queue, () => this.#failQueue(queue, error));
    }
  }

  /**
   * Stops waiting: every pending `acquire()` rejects, their entries leave
   * the queues in Redis, and the connection closes.
   */
  async shutdown(): Promise<void> {
    this.#closed = true;
    // First tries on their way join their queues first.
    while (this.#unowned > 0) {
      await new Promise<void>((resolve) => this.#drained = resolve);
    }
    this.#drained = undefined;
    const queues = [...this.#queues.values()];
    for (const queue of queues) {
      for (const wait of queue.waits) {
        wait.abandoned ??= { reason: shutDown(wait.request) };
      }
      this.#serial(queue, async () => {
        const head = queue.head;
        if (head?.entry !== undefined && !head.settled) {
          await this.#cancel(head, "");
        }
        for (const wait of queue.waits.splice(0)) wait.settleAbandoned();
        this.#forget(queue);
      });
    }
    await Promise.all(queues.map((queue) => queue.chain));
    await this.#pop.close();
  }
}

const waiters = new WeakMap<Connection, Waiter>();

/** The waiter of a client's connection, made on first use. */
export function waiterOf(connection: Connection): Waiter {
  let waiter = waiters.get(connection);
  if (waiter === undefined) {
    waiter = new Waiter(connection);
    waiters.set(connection, waiter);
  }
  return waiter;
}

/** Shuts the client's waiter down, if it has one; the next wait makes a new one. */
export async function shutdownWaiter(connection: Connection): Promise<void> {
  const waiter = waiters.get(connection);
  waiters.delete(connection);
  await waiter?.shutdown();
}

/**
 * Stops this library's waiting on `client`: every pending `acquire()` on it
 * rejects with a {@linkcode LockError}, its place in the lock queues in Redis
 * is given up, and the waiting connection closes. Held locks are not
 * touched. Without it, the waiting connection closes by itself about two
 * seconds after the last wait; call it when shutting down, or in tests that
 * check for leaked sockets. A later wait opens a new connection.
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
  await shutdownWaiter(toConnection(client));
}
