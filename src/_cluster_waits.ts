/**
 * Waiting on a Redis Cluster. Waits queue in the lock's own slot (first
 * come, first served): each wait is a process of its own in the queue,
 * alive while its field in the lock's liveness hash (`lock-alive:{name}`)
 * holds a time to come, which each of its tries pushes on. A release (and a
 * reset) hands the lock to the first alive and announces it on the lock's
 * sharded channel (`SPUBLISH lock-signal:{name} <wait>`, from the node that
 * owns the slot); a lock freed with nobody alive queued is announced with
 * an empty message, at which every wait of the name tries.
 *
 * Invariants:
 * - One sharded subscriber per client and process (one connection per
 *   node, however many names), subscribed to the channel of each name
 *   that a wait of this process watches, and to no other; it closes
 *   `LINGER` ms after the last watch ends, or at `shutdown()`.
 * - A waiter subscribes before the attempt that may make it wait, so a
 *   release after that attempt is announced to it. A message lost with a
 *   dropped subscription costs at most a tick: every wait also tries again
 *   at the holder's expiry and every `CLUSTER_TICK` ms.
 * - Each watch has one owner, the wait that made it, which ends it on
 *   every path; `shutdown()` wakes every watch, marked shut down.
 * - A wait that does not acquire takes its entry and its field out of
 *   Redis, and passes on a lock handed to it (C_CANCEL), on every path. A
 *   wait that died is skipped once its field's time has passed
 *   (`ALIVE_TTL` after its last try; it tries at least every 3 s); a lock
 *   handed to it before that is its for `HAND_OVER_EXPIRE` at most, and
 *   the others try again at that expiry.
 *
 * @module
 */

import type { Connection, ShardSubscriber } from "./clients.ts";
import { type Deferred, deferred } from "./_deferred.ts";

/** Milliseconds the subscriber stays open after the last watch. */
const LINGER = 1_000;

/**
 * Milliseconds between two tries of a waiter that hears no release, plus
 * up to half of it at random: what a message lost costs at most.
 */
export const CLUSTER_TICK = 1_000;

/**
 * The longest `pollInterval` a wait on a Cluster takes (plus up to half of
 * it): a queued wait tries, and so stays alive, well within `ALIVE_TTL`.
 */
export const CLUSTER_POLL_MAX = 2_000;

/** What a channel's watches share. */
interface Channel {
  readonly watches: Set<Watch>;
  /** Settles `true` once subscribed; `undefined` when not (yet). */
  subscribed: Promise<boolean> | undefined;
}

/** One wait's interest in the releases of one lock. */
export class Watch {
  readonly #owner: ClusterWaits;
  readonly channel: string;
  readonly #me: string;
  #wake: Deferred<string | undefined> | undefined;
  /** Set when `shutdown()` ended the watch. */
  shutDown = false;

  /**
   * @param owner The client's cluster waits.
   * @param channel The lock's signal channel ("" with no subscription).
   * @param me The wait's process in the queue: a hand-over's message.
   */
  constructor(owner: ClusterWaits, channel: string, me: string) {
    this.#owner = owner;
    this.channel = channel;
    this.#me = me;
  }

  /**
   * Subscribes, unless subscribed; resolves either way (a failure is tried
   * again at the next call), within `ms` at most: a wait never hangs on a
   * subscription, which only makes it hear of releases sooner.
   */
  async ready(ms: number): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.#owner.subscribe(this),
      new Promise<void>((resolve) => timer = setTimeout(resolve, ms)),
    ]).finally(() => clearTimeout(timer));
  }

  /**
   * A promise that the next message for this wait resolves with it: its
   * own process (handed the lock) or "" (the lock is free); a shutdown or
   * the end resolves it with `undefined`.
   */
  next(): Promise<string | undefined> {
    this.#wake = deferred();
    return this.#wake.promise;
  }

  /** Called by the owner at each message on the channel. */
  wake(message: string | undefined): void {
    if (message === undefined || message === "" || message === this.#me) {
      this.#wake?.resolve(message);
    }
  }

  /** Ends the watch. */
  end(): void {
    this.#wake?.resolve(undefined);
    this.#owner.release(this);
  }
}

/** The waits of one Cluster client in this process. */
export class ClusterWaits {
  readonly #connection: Connection;
  #subscriber: Promise<ShardSubscriber | undefined> | undefined;
  readonly #channels = new Map<string, Channel>();
  /** Watches without a subscription ("poll"), for shutdown. */
  readonly #plain = new Set<Watch>();
  #linger: ReturnType<typeof setTimeout> | undefined;
  #closed = false;

  /** @param connection The application's Cluster connection. */
  constructor(connection: Connection) {
    this.#connection = connection;
  }

  /**
   * A watch, for the wait whose process is `me`, of the releases of the
   * lock whose signal channel is `channel`, or of nothing ("" — a wait that
   * polls), until its `end()`.
   */
  watch(channel: string, me: string): Watch {
    const watch = new Watch(this, channel, me);
    if (this.#closed) {
      watch.shutDown = true;
      return watch;
    }
    clearTimeout(this.#linger);
    this.#linger = undefined;
    if (channel === "") {
      this.#plain.add(watch);
      return watch;
    }
    let entry = this.#channels.get(channel);
    if (entry === undefined) {
      entry = { watches: new Set(), subscribed: undefined };
      this.#channels.set(channel, entry);
    }
    entry.watches.add(watch);
    return watch;
  }

  /** Subscribes to the watch's channel, unless subscribed. */
  async subscribe(watch: Watch): Promise<void> {
    const entry = this.#channels.get(watch.channel);
    if (entry === undefined || !entry.watches.has(watch)) return;
    entry.subscribed ??= this.#add(watch.channel);
    if (
      !await entry.subscribed && this.#channels.get(watch.channel) === entry
    ) {
      entry.subscribed = undefined;
    }
  }

  async #add(channel: string): Promise<boolean> {
    const subscriber = await this.#open();
    if (subscriber === undefined) return false;
    try {
      await subscriber.add(channel);
      return true;
    } catch {
      return false;
    }
  }

  /** The subscriber, opened on first use; `undefined` when it failed. */
  #open(): Promise<ShardSubscriber | undefined> {
    if (this.#subscriber !== undefined) return this.#subscriber;
    const opening = this.#connection.shardSubscriber((channel, message) => {
      for (const watch of this.#channels.get(channel)?.watches ?? []) {
        watch.wake(message);
      }
    }).then((subscriber) => {
      // Closed, or given up on, while it opened.
      if (this.#closed || this.#subscriber !== opening) {
        return subscriber.close().then(() => undefined);
      }
      // Closed for good under the watches: each subscribes again.
      subscriber.ended.then(() => {
        if (this.#subscriber !== opening) return;
        this.#subscriber = undefined;
        for (const entry of this.#channels.values()) {
          entry.subscribed = undefined;
        }
      });
      return subscriber;
    }, () => {
      if (this.#subscriber === opening) this.#subscriber = undefined;
      return undefined;
    });
    this.#subscriber = opening;
    return opening;
  }

  /** Ends a watch: the last of a channel unsubscribes from it. */
  release(watch: Watch): void {
    this.#plain.delete(watch);
    const entry = this.#channels.get(watch.channel);
    if (entry?.watches.delete(watch) && entry.watches.size === 0) {
      this.#channels.delete(watch.channel);
      const subscribed = entry.subscribed;
      if (subscribed !== undefined) {
        const subscriber = this.#subscriber;
        subscribed.then(async (yes) => {
          // A new watch of the channel keeps it.
          if (!yes || this.#channels.has(watch.channel)) return;
          await (await subscriber)?.remove(watch.channel);
        }).catch(() => {});
      }
    }
    if (
      this.#channels.size === 0 && this.#plain.size === 0 &&
      this.#subscriber !== undefined && !this.#closed
    ) {
      clearTimeout(this.#linger);
      this.#linger = setTimeout(() => {
        this.#linger = undefined;
        void this.#close();
      }, LINGER);
    }
  }

  async #close(): Promise<void> {
    const subscriber = this.#subscriber;
    this.#subscriber = undefined;
    await (await subscriber)?.close().catch(() => {});
  }

  /** Ends every watch, marked shut down, and closes the subscriber. */
  async shutdown(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#linger);
    this.#linger = undefined;
    const watches = [
      ...this.#plain,
      ...[...this.#channels.values()].flatMap((entry) => [...entry.watches]),
    ];
    for (const watch of watches) {
      watch.shutDown = true;
      watch.wake(undefined);
    }
    await this.#close();
  }
}

/** The cluster waits of each client's connection. */
const registry = new WeakMap<Connection, ClusterWaits>();

/** The cluster waits of a client's connection, made on first use. */
export function clusterWaitsOf(connection: Connection): ClusterWaits {
  let waits = registry.get(connection);
  if (waits === undefined) {
    waits = new ClusterWaits(connection);
    registry.set(connection, waits);
  }
  return waits;
}

/** Shuts the client's cluster waits down; the next wait makes new ones. */
export async function shutdownClusterWaits(
  connection: Connection,
): Promise<void> {
  const waits = registry.get(connection);
  registry.delete(connection);
  await waits?.shutdown();
}
