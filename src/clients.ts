/**
 * The clients a lock accepts, and the one seam that turns each into a
 * {@linkcode Connection}: commands in, normalised replies out. Lock logic
 * never branches on the kind of client.
 *
 * @module
 */

/**
 * Any object with `send(command, args)`: Bun's built-in `RedisClient`, or an
 * adapter of your own. `duplicate()` opens a new connection of the same kind;
 * a lock needs it to wait (a blocking command never runs on your connection).
 *
 * @example A client of your own
 * ```ts ignore
 * import type { SendClient } from "@x/redis-lock";
 *
 * const client: SendClient = {
 *   send: (command, args) => myRedis.command(command, ...args),
 *   duplicate: async () => wrap(await myRedis.clone()),
 *   close: () => myRedis.quit(),
 * };
 * ```
 */
export interface SendClient {
  /** Sends one command; resolves with the reply, rejects on an error reply. */
  send(command: string, args: string[]): Promise<unknown>;
  /** Opens a new connection of the same kind, for blocking commands. */
  duplicate?(): SendClient | Promise<SendClient>;
  /** Closes this connection. Called on connections made by `duplicate()`. */
  close?(): unknown;
  /**
   * Subscribes to a channel, calling `listener` with each message, for the
   * `"pubsub"` wake transport. Called on a connection made by `duplicate()`
   * when there is one (Bun's `RedisClient`), else on this client (an HTTP
   * client that subscribes over a stream of its own). Resolves once
   * subscribed; `unsubscribe(channel)`, or `close()` of a duplicate, ends it.
   */
  subscribe?(
    channel: string,
    listener: (message: string, channel: string) => void,
  ): Promise<unknown>;
  /** Ends a subscription made by `subscribe()`. */
  unsubscribe?(channel: string): Promise<unknown> | unknown;
}

/**
 * The part of an `ioredis` client (`Redis`) that a lock uses.
 *
 * @example
 * ```ts ignore
 * import Redis from "ioredis";
 * import { acquire } from "@x/redis-lock";
 *
 * await using lock = await acquire(new Redis(), "report");
 * ```
 */
export interface IoRedisClient {
  /** Sends one command. */
  call(command: string, ...args: string[]): Promise<unknown>;
  /** Opens a new connection with the same options, but for `override`. */
  duplicate(override?: Record<string, unknown>): IoRedisClient;
  /** Closes the connection at once. */
  disconnect(): void;
  /** Listens for an event (`error`). */
  on?(event: string, listener: (...args: unknown[]) => void): unknown;
  /** Listens for an event once (`end`). */
  once?(event: string, listener: (...args: unknown[]) => void): unknown;
  /** `"end"` once the connection has closed for good. */
  readonly status?: string;
}

/**
 * The part of an `ioredis` `Cluster` that a lock uses.
 *
 * @example
 * ```ts ignore
 * import { Cluster } from "ioredis";
 * import { acquire } from "@x/redis-lock";
 *
 * const cluster = new Cluster([{ host: "10.0.0.1", port: 6379 }]);
 * await using lock = await acquire(cluster, "report");
 * ```
 */
export interface IoRedisClusterClient {
  /** Sends one command to the node that owns its key. */
  call(command: string, ...args: string[]): Promise<unknown>;
  /** `true`: a Cluster. */
  readonly isCluster: boolean;
  /** The node connections (`"master"`: the masters). */
  nodes(role?: "all" | "master" | "slave"): IoRedisClient[];
  /**
   * A new Cluster with the same start-up nodes and options, but for
   * `override`: the library's sharded subscriber (`shardedSubscribers`).
   */
  duplicate?(
    startupNodes?: unknown[],
    override?: Record<string, unknown>,
  ): IoRedisClusterClient;
}

/**
 * The part of a `redis` (node-redis v4 or v5) client that a lock uses.
 *
 * @example
 * ```ts ignore
 * import { createClient } from "redis";
 * import { acquire } from "@x/redis-lock";
 *
 * const client = await createClient().connect();
 * await using lock = await acquire(client, "report");
 * ```
 */
export interface NodeRedisClient {
  /** Sends one command given as an array of strings. */
  sendCommand(args: string[]): Promise<unknown>;
  /** Creates a new, unconnected client with the same options. */
  duplicate(): NodeRedisClient;
  /** Connects a client made by `duplicate()`. */
  connect(): Promise<unknown>;
  /** Closes the connection at once (v5). */
  destroy?(): void;
  /** Closes the connection at once (v4). */
  disconnect?(): Promise<void>;
  /** Listens for an event (`error`). */
  on?(event: string, listener: (...args: unknown[]) => void): unknown;
}

/**
 * The part of a `redis` (node-redis v5) cluster client, made by
 * `createCluster()`, that a lock uses.
 *
 * @example
 * ```ts ignore
 * import { createCluster } from "redis";
 * import { acquire } from "@x/redis-lock";
 *
 * const cluster = await createCluster({ rootNodes: [{ url: "redis://10.0.0.1:6379" }] }).connect();
 * await using lock = await acquire(cluster, "report");
 * ```
 */
export interface NodeRedisClusterClient {
  /** Sends one command to the node that owns `firstKey`. */
  sendCommand(
    firstKey: string | undefined,
    isReadonly: boolean | undefined,
    args: string[],
  ): Promise<unknown>;
  /** The master nodes. */
  readonly masters: readonly unknown[];
  /** The client of one node. */
  nodeClient(node: unknown): Promise<NodeRedisClient> | NodeRedisClient;
  /** A new, unconnected cluster client with the same options. */
  duplicate?(): NodeRedisClusterClient;
}

/**
 * The part of a `@db/redis` client (Deno) that a lock uses. It has no
 * `duplicate()`: pair it with a connect function by {@linkcode withConnect}
 * so that waiting locks can open their own connection.
 *
 * @example
 * ```ts ignore
 * import { connect } from "@db/redis";
 * import { acquire, withConnect } from "@x/redis-lock";
 *
 * const options = { hostname: "127.0.0.1", port: 6379 };
 * const client = withConnect(await connect(options), () => connect(options));
 * await using lock = await acquire(client, "report");
 * ```
 */
export interface DbRedisClient {
  /** Sends one command. */
  sendCommand(
    command: string,
    args?: (string | number | Uint8Array)[],
  ): Promise<unknown>;
  /** Closes the connection. */
  close(): void;
}

/**
 * A client paired with a function that opens new connections of the same
 * kind; made by {@linkcode withConnect}.
 */
export class ConnectableClient {
  /** The application's client, used for every non-blocking command. */
  readonly client: RedisClient;
  /** Opens a new connection, used for blocking commands only. */
  readonly connect: () => Promise<RedisClient>;

  /**
   * Pairs a client with a connect function; {@linkcode withConnect} checks
   * the arguments first.
   *
   * @param client The application's client.
   * @param connect Opens a new connection to the same server and database.
   */
  constructor(client: RedisClient, connect: () => Promise<RedisClient>) {
    this.client = client;
    this.connect = connect;
  }
}

/** Every kind of client a lock accepts. */
export type RedisClient =
  | SendClient
  | IoRedisClient
  | IoRedisClusterClient
  | NodeRedisClient
  | NodeRedisClusterClient
  | DbRedisClient
  | ConnectableClient;

/**
 * Pairs a client that has no `duplicate()` (such as `@db/redis`) with a
 * function that opens a new connection of the same kind. Locks wait on
 * connections opened by `connect` and close them when done; every other
 * command goes through `client`.
 *
 * @param client The application's client.
 * @param connect Opens a new connection to the same server and database.
 * @returns A client to pass to {@linkcode Lock} and {@linkcode acquire}.
 *
 * @example With `@db/redis`
 * ```ts ignore
 * import { connect } from "@db/redis";
 * import { acquire, withConnect } from "@x/redis-lock";
 *
 * const options = { hostname: "127.0.0.1", port: 6379 };
 * const client = withConnect(await connect(options), () => connect(options));
 * await using lock = await acquire(client, "report", { expire: 10_000 });
 * ```
 */
export function withConnect(
  client: RedisClient,
  connect: () => Promise<RedisClient>,
): ConnectableClient {
  if (typeof connect !== "function") {
    throw new TypeError(
      `Cannot pair client as 'connect' must be a function: current value is ${typeof connect}`,
    );
  }
  toConnection(client);
  return new ConnectableClient(client, connect);
}

/** A subscription to one channel. */
export interface Subscription {
  /** Settles when the subscription ends (its connection failed, or closed). */
  readonly ended: Promise<void>;
  /** Ends the subscription and closes its connection. */
  close(): Promise<void>;
}

/**
 * A subscriber to sharded channels (`SSUBSCRIBE`) of a Redis Cluster, on
 * connections of the library's own: one per node, however many channels.
 */
export interface ShardSubscriber {
  /** Subscribes to `channel` on the node that owns its slot. */
  add(channel: string): Promise<void>;
  /** Unsubscribes from `channel`. */
  remove(channel: string): Promise<void>;
  /** Settles when the subscriber has closed for good. */
  readonly ended: Promise<void>;
  /** Closes the subscriber's connections. */
  close(): Promise<void>;
}

/**
 * Opens a sharded subscriber calling `onMessage` with each message and its
 * channel.
 */
type ShardSubscribe = (
  onMessage: (channel: string, message: string) => void,
) => Promise<ShardSubscriber>;

/** Subscribes to a channel for the `"pubsub"` wake transport. */
type Subscribe = (
  channel: string,
  onMessage: (message: string) => void,
) => Promise<Subscription>;

/** A normalised reply: bulk and simple strings, integers, nil, arrays. */
export type Reply = string | number | null | Reply[];

/** One Redis connection as the lock sees it. */
export interface Connection {
  /** Sends one command; rejects with the client's error on an error reply. */
  send(command: string, args: readonly string[]): Promise<Reply>;
  /** Whether {@linkcode Connection.duplicate} can open connections. */
  readonly canDuplicate: boolean;
  /**
   * Opens a new connection of the same kind for the library's own use
   * (blocking commands, the waiter's commands), without the client's own
   * command timeouts and re-sending where the client allows: the library
   * reopens it after a failure itself.
   */
  duplicate(): Promise<Connection>;
  /** Closes a connection made by `duplicate()`. */
  close(): Promise<void>;
  /** Whether {@linkcode Connection.subscribe} can subscribe. */
  readonly canSubscribe: boolean;
  /**
   * Subscribes to `channel` on a connection of the library's own (or the
   * client's own stream, for a client that cannot open connections),
   * calling `onMessage` with each message.
   */
  subscribe(
    channel: string,
    onMessage: (message: string) => void,
  ): Promise<Subscription>;
  /** Whether this is a Redis Cluster: the keys of a lock share a slot. */
  readonly cluster: boolean;
  /** Each master's own connection (this one, but on a Cluster). */
  masters(): Promise<Connection[]>;
  /** Whether {@linkcode Connection.shardSubscriber} can open one. */
  readonly canShardSubscribe: boolean;
  /**
   * Opens a subscriber to sharded channels of the Cluster, on connections
   * of the library's own, calling `onMessage` with each message and its
   * channel.
   */
  shardSubscriber(
    onMessage: (channel: string, message: string) => void,
  ): Promise<ShardSubscriber>;
}

const decoder = new TextDecoder();

/** Turns every client's reply shapes into {@linkcode Reply}. */
function normalize(reply: unknown): Reply {
  if (reply === null || reply === undefined) return null;
  if (typeof reply === "string" || typeof reply === "number") return reply;
  if (typeof reply === "bigint") return Number(reply);
  if (reply instanceof Uint8Array) return decoder.decode(reply);
  if (Array.isArray(reply)) return reply.map(normalize);
  if (reply instanceof Error) throw reply;
  return String(reply);
}

type Send = (command: string, args: readonly string[]) => Promise<unknown>;

/**
 * ioredis options for the library's own connections: no command timeout (a
 * `BLPOP` blocks for a second), no reconnection nor re-sending of
 * unanswered commands (a command sent twice could queue a waiter twice):
 * the library opens a new connection after a failure.
 */
const IOREDIS_OWN = {
  commandTimeout: undefined,
  autoResendUnfulfilledCommands: false,
  retryStrategy: () => null,
  maxRetriesPerRequest: 0,
  // Closing waits this long for a server that does not answer (paused).
  disconnectTimeout: 100,
};

/**
 * Errors of the library's own connections surface as failed commands; the
 * event would otherwise be logged (ioredis) or crash the process
 * (node-redis).
 */
function ignore(): void {}

function fn(client: object, method: string): boolean {
  return typeof (client as Record<string, unknown>)[method] === "function";
}

class Adapter implements Connection {
  readonly #send: Send;
  readonly #duplicate: (() => Promise<Connection>) | undefined;
  readonly #close: () => unknown;
  readonly #masters: (() => Promise<Connection[]>) | undefined;
  readonly #subscribe: Subscribe | undefined;
  readonly #shardSubscribe: ShardSubscribe | undefined;

  /**
   * @param masters For a Cluster: each master's connection.
   * @param subscribe How to subscribe, if the client can.
   * @param shardSubscribe For a Cluster: how to open a sharded subscriber,
   * if the client can.
   */
  constructor(
    send: Send,
    duplicate: (() => Promise<Connection>) | undefined,
    close: () => unknown,
    masters?: () => Promise<Connection[]>,
    subscribe?: Subscribe,
    shardSubscribe?: ShardSubscribe,
  ) {
    this.#send = send;
    this.#duplicate = duplicate;
    this.#close = close;
    this.#masters = masters;
    this.#subscribe = subscribe;
    this.#shardSubscribe = shardSubscribe;
  }

  get canShardSubscribe(): boolean {
    return this.#shardSubscribe !== undefined;
  }

  shardSubscriber(
    onMessage: (channel: string, message: string) => void,
  ): Promise<ShardSubscriber> {
    if (this.#shardSubscribe === undefined) {
      return Promise.reject(
        new TypeError(
          "Cannot subscribe to sharded channels as the client is not a Cluster client with duplicate()",
        ),
      );
    }
    return this.#shardSubscribe(onMessage);
  }

  get canSubscribe(): boolean {
    return this.#subscribe !== undefined;
  }

  subscribe(
    channel: string,
    onMessage: (message: string) => void,
  ): Promise<Subscription> {
    if (this.#subscribe === undefined) {
      return Promise.reject(
        new TypeError("Cannot subscribe as the client has no subscribe()"),
      );
    }
    return this.#subscribe(channel, onMessage);
  }

  get cluster(): boolean {
    return this.#masters !== undefined;
  }

  masters(): Promise<Connection[]> {
    return this.#masters?.() ?? Promise.resolve([this]);
  }

  send(command: string, args: readonly string[]): Promise<Reply> {
    return this.#send(command, args).then(normalize);
  }

  get canDuplicate(): boolean {
    return this.#duplicate !== undefined;
  }

  duplicate(): Promise<Connection> {
    if (this.#duplicate === undefined) {
      return Promise.reject(
        new TypeError(
          "Cannot wait for a lock as the client has no duplicate(): pair it with a connect function by withConnect(client, connect)",
        ),
      );
    }
    return this.#duplicate();
  }

  async close(): Promise<void> {
    await this.#close();
  }
}

function adapt(client: RedisClient): Connection {
  if (client instanceof ConnectableClient) {
    const { client: inner, connect } = client;
    const base = toConnection(inner) as Adapter;
    return new Adapter(
      (command, args) => base.send(command, args),
      async () => adapt(await connect()),
      () => base.close(),
      undefined,
      base.canSubscribe
        ? (channel, onMessage) => base.subscribe(channel, onMessage)
        : undefined,
    );
  }
  if (
    fn(client, "call") && (client as IoRedisClusterClient).isCluster === true
  ) {
    const io = client as IoRedisClusterClient;
    return new Adapter(
      (command, args) => io.call(command, ...args),
      undefined,
      () => {},
      () => Promise.resolve(io.nodes("master").map((node) => adapt(node))),
      undefined,
      io.duplicate && ((onMessage) => ioShardSubscriber(io, onMessage)),
    );
  }
  if (fn(client, "call")) {
    const io = client as IoRedisClient;
    const close = () => {
      // Disconnecting a connection that has ended leaves ioredis a timer.
      if (io.status === "end") return;
      return new Promise<void>((resolve) => {
        io.once?.("end", () => resolve());
        io.disconnect();
        if (io.once === undefined) resolve();
      });
    };
    return new Adapter(
      (command, args) => io.call(command, ...args),
      () => {
        const copy = io.duplicate(IOREDIS_OWN);
        copy.on?.("error", ignore);
        return Promise.resolve(adapt(copy));
      },
      close,
      undefined,
      async (channel, onMessage) => {
        const copy = io.duplicate(IOREDIS_OWN);
        copy.on?.("error", ignore);
        const ended = new Promise<void>((resolve) =>
          copy.once?.("end", () => resolve())
        );
        copy.on?.("message", (...args: unknown[]) => {
          if (args[0] === channel) onMessage(String(args[1]));
        });
        const closeCopy = toConnection(copy).close.bind(toConnection(copy));
        try {
          await (copy as unknown as {
            subscribe(channel: string): Promise<unknown>;
          }).subscribe(channel);
        } catch (error) {
          await closeCopy();
          throw error;
        }
        return { ended, close: closeCopy };
      },
    );
  }
  if (fn(client, "send")) {
    const plain = client as SendClient;
    return new Adapter(
      (command, args) => plain.send(command, args as string[]),
      plain.duplicate && (async () => adapt(await plain.duplicate!())),
      () => plain.close?.(),
      undefined,
      plain.subscribe && (async (channel, onMessage) => {
        let end!: () => void;
        const ended = new Promise<void>((resolve) => end = resolve);
        const listener = (message: string) => onMessage(String(message));
        // A client that opens connections subscribes on one of them (a
        // subscribed connection sends nothing else); one that cannot, on
        // its own stream.
        const copy = plain.duplicate ? await plain.duplicate() : undefined;
        const subscriber = copy ?? plain;
        const close = async () => {
          if (copy) await copy.close?.();
          else await plain.unsubscribe?.(channel);
          end();
        };
        try {
          if (subscriber.subscribe === undefined) {
            throw new TypeError(
              "Cannot subscribe as the client's duplicate() has no subscribe()",
            );
          }
          await subscriber.subscribe(channel, listener);
        } catch (error) {
          await close();
          throw error;
        }
        return { ended, close };
      }),
    );
  }
  if (fn(client, "sendCommand") && fn(client, "nodeClient")) {
    const cluster = client as NodeRedisClusterClient;
    return new Adapter(
      (command, args) =>
        cluster.sendCommand(firstKey(command, args), false, [
          command,
          ...args,
        ]),
      undefined,
      () => {},
      async () => {
        const masters: Connection[] = [];
        for (const master of cluster.masters) {
          masters.push(adapt(await cluster.nodeClient(master)));
        }
        return masters;
      },
      undefined,
      cluster.duplicate &&
        ((onMessage) => nodeRedisShardSubscriber(cluster, onMessage)),
    );
  }
  if (fn(client, "sendCommand") && fn(client, "duplicate")) {
    const node = client as NodeRedisClient;
    return new Adapter(
      (command, args) => node.sendCommand([command, ...args]),
      async () => {
        const copy = node.duplicate();
        copy.on?.("error", ignore);
        await copy.connect();
        return adapt(copy);
      },
      () => node.destroy ? node.destroy() : node.disconnect?.(),
      undefined,
      async (channel, onMessage) => {
        const copy = node.duplicate() as NodeRedisClient & {
          subscribe(
            channel: string,
            listener: (message: unknown) => void,
          ): Promise<unknown>;
        };
        copy.on?.("error", ignore);
        const ended = new Promise<void>((resolve) =>
          copy.on?.("end", () => resolve())
        );
        const close = () => toConnection(copy).close();
        try {
          await copy.connect();
          await copy.subscribe(
            channel,
            (message) => onMessage(String(message)),
          );
        } catch (error) {
          await close().catch(() => {});
          throw error;
        }
        return { ended, close };
      },
    );
  }
  if (fn(client, "sendCommand")) {
    const db = client as DbRedisClient;
    return new Adapter(
      (command, args) => db.sendCommand(command, args as string[]),
      undefined,
      () => db.close(),
    );
  }
  throw new TypeError(
    `Cannot use client as 'client' must be an ioredis, redis, @db/redis or Bun client, or have send(command, args): current value is ${
      client === null ? "null" : typeof client
    }`,
  );
}

/** Milliseconds a sharded subscriber has to get ready before it fails. */
const SUBSCRIBER_READY = 5_000;

/** The part of an ioredis Cluster that subscribes to sharded channels. */
interface IoRedisShardedCluster {
  ssubscribe(channel: string): Promise<unknown>;
  sunsubscribe(channel: string): Promise<unknown>;
  disconnect(): void;
  on(event: string, listener: (...args: unknown[]) => void): unknown;
  once(event: string, listener: (...args: unknown[]) => void): unknown;
  readonly status: string;
}

/**
 * A sharded subscriber of an ioredis Cluster: a copy of the application's
 * Cluster with `shardedSubscribers`, which keeps one subscriber connection
 * per master, follows the slots as they move and subscribes again after a
 * reconnection.
 */
async function ioShardSubscriber(
  io: IoRedisClusterClient,
  onMessage: (channel: string, message: string) => void,
): Promise<ShardSubscriber> {
  const copy = io.duplicate!([], {
    shardedSubscribers: true,
  }) as unknown as IoRedisShardedCluster;
  copy.on("error", ignore);
  copy.on(
    "smessage",
    (channel, message) => onMessage(String(channel), String(message)),
  );
  const ended = new Promise<void>((resolve) =>
    copy.once("end", () => resolve())
  );
  const close = async () => {
    if (copy.status === "end") return;
    copy.disconnect();
    await ended;
  };
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      copy.once("ready", () => resolve());
      copy.once("end", () => reject(new Error("Connection is closed.")));
      timer = setTimeout(
        () => reject(new Error("Cluster subscriber not ready in time")),
        SUBSCRIBER_READY,
      );
    }).finally(() => clearTimeout(timer));
  } catch (error) {
    await close();
    throw error;
  }
  return {
    add: async (channel) => void await copy.ssubscribe(channel),
    remove: async (channel) => void await copy.sunsubscribe(channel),
    ended,
    close,
  };
}

/** The part of a node-redis cluster client that subscribes to shards. */
interface NodeRedisShardedCluster {
  connect(): Promise<unknown>;
  sSubscribe(
    channel: string,
    listener: (message: unknown, channel: unknown) => void,
  ): Promise<void>;
  sUnsubscribe(
    channel: string,
    listener: (message: unknown, channel: unknown) => void,
  ): Promise<void>;
  destroy(): void;
  on(event: string, listener: (...args: unknown[]) => void): unknown;
}

/**
 * A sharded subscriber of a node-redis cluster client: a connected copy of
 * it, whose sharded subscriptions take one connection per master.
 */
async function nodeRedisShardSubscriber(
  cluster: NodeRedisClusterClient,
  onMessage: (channel: string, message: string) => void,
): Promise<ShardSubscriber> {
  const copy = cluster.duplicate!() as unknown as NodeRedisShardedCluster;
  copy.on("error", ignore);
  let end!: () => void;
  const ended = new Promise<void>((resolve) => end = resolve);
  const close = () => {
    copy.destroy();
    end();
    return Promise.resolve();
  };
  const listener = (message: unknown, channel: unknown) =>
    onMessage(String(channel), String(message));
  try {
    await copy.connect();
  } catch (error) {
    await close();
    throw error;
  }
  return {
    add: (channel) => copy.sSubscribe(channel, listener),
    remove: (channel) => copy.sUnsubscribe(channel, listener),
    ended,
    close,
  };
}

/** The key a command is routed by on a Cluster: scripts' first key. */
function firstKey(
  command: string,
  args: readonly string[],
): string | undefined {
  const upper = command.toUpperCase();
  if (upper === "EVAL" || upper === "EVALSHA") {
    return Number(args[1]) > 0 ? args[2] : undefined;
  }
  return args[0];
}

const connections = new WeakMap<object, Connection>();

/**
 * The {@linkcode Connection} of a client, made once per client object.
 *
 * @throws {TypeError} When `client` is none of the supported kinds.
 */
export function toConnection(client: RedisClient): Connection {
  if (client === null || typeof client !== "object") {
    throw new TypeError(
      `Cannot use client as 'client' must be a Redis client object: current value is ${
        client === null ? "null" : typeof client
      }`,
    );
  }
  let connection = connections.get(client);
  if (connection === undefined) {
    connection = adapt(client);
    connections.set(client, connection);
  }
  return connection;
}
