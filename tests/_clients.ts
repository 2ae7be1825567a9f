/**
 * The clients the suite runs against under Deno, each opened on a test's
 * own server and closed by the test.
 *
 * @module
 */

import assert from "node:assert/strict";
import { Redis } from "ioredis";
import { createClient } from "redis";
import { createClient as createClient4 } from "redis4";
import { type RedisClient, withConnect } from "../mod.ts";
import { DbRedisShape, RespClient, RespSubscriber } from "./_resp.ts";
import type { RedisServer } from "./_server.ts";

/** An open client and how to close it. */
export interface OpenClient {
  readonly client: RedisClient;
  close(): Promise<void>;
}

/** A kind of client: its name and how to open one. */
export interface ClientKind {
  readonly name: string;
  /** Whether its waiters poll (no `BLPOP`). */
  readonly polls?: boolean;
  open(server: RedisServer): Promise<OpenClient>;
}

export const ioredis: ClientKind = {
  name: "ioredis",
  async open(server) {
    const client = new Redis(server.port, server.hostname, {
      maxRetriesPerRequest: 0,
    });
    await new Promise<void>((resolve, reject) => {
      client.once("ready", resolve);
      client.once("error", reject);
    });
    return {
      client,
      async close() {
        await client.quit();
      },
    };
  },
};

export const nodeRedis5: ClientKind = {
  name: "redis v5",
  async open(server) {
    const client = createClient({ url: server.url });
    await client.connect();
    return {
      client: client as unknown as RedisClient,
      async close() {
        await client.close();
      },
    };
  },
};

export const nodeRedis4: ClientKind = {
  name: "redis v4",
  async open(server) {
    const client = createClient4({ url: server.url });
    await client.connect();
    return {
      client: client as unknown as RedisClient,
      async close() {
        await client.quit();
      },
    };
  },
};

export const plainSend: ClientKind = {
  name: "send(command, args)",
  async open(server) {
    const client = await RespClient.connect(server.port, server.hostname);
    return { client, close: () => client.close() };
  },
};

export const dbRedis: ClientKind = {
  name: "@db/redis shape with withConnect",
  async open(server) {
    const options = { hostname: server.hostname, port: server.port };
    const redis = await DbRedisShape.connect(options);
    return {
      client: withConnect(redis, () => DbRedisShape.connect(options)),
      close: () => redis.close(),
    };
  },
};

/** Commands an HTTP Redis or a strict proxy refuses. */
const REFUSED = new Set([
  "BLPOP",
  "BRPOP",
  "SUBSCRIBE",
  "SSUBSCRIBE",
  "CLIENT",
]);

/**
 * A client the way an HTTP Redis client is: one command at a time with no
 * connection of its own to block, no `duplicate()`, and `BLPOP`,
 * `SUBSCRIBE` and `CLIENT` refused. Its waiters poll.
 */
export class HttpLikeClient {
  readonly #client: RespClient;
  /** The commands refused so far: none, when the lock behaves. */
  readonly refused: string[] = [];

  constructor(client: RespClient) {
    this.#client = client;
  }

  send(command: string, args: string[]): Promise<unknown> {
    if (REFUSED.has(command.toUpperCase())) {
      this.refused.push(command);
      return Promise.reject(new Error(`ERR command '${command}' not allowed`));
    }
    return this.#client.send(command, args);
  }

  close(): Promise<void> {
    return this.#client.close();
  }
}

/**
 * An HTTP-like client that also subscribes, over a stream of its own (as
 * HTTP Redis clients do with server-sent events). Its waiters use Pub/Sub.
 */
export class SubscribingClient extends HttpLikeClient {
  readonly #port: number;
  readonly #subscribers = new Map<string, RespSubscriber>();

  constructor(client: RespClient, port: number) {
    super(client);
    this.#port = port;
  }

  async subscribe(
    channel: string,
    listener: (message: string, channel: string) => void,
  ): Promise<void> {
    const subscriber = await RespSubscriber.connect(this.#port);
    // One subscriber per channel: one made before is closed, not leaked.
    const previous = this.#subscribers.get(channel);
    this.#subscribers.set(channel, subscriber);
    await previous?.close();
    await subscriber.subscribe(
      channel,
      (message) => listener(message, channel),
    );
  }

  async unsubscribe(channel: string): Promise<void> {
    // Out of the map before the await: a subscribe meanwhile keeps its own.
    const subscriber = this.#subscribers.get(channel);
    this.#subscribers.delete(channel);
    await subscriber?.close();
  }

  override async close(): Promise<void> {
    for (const channel of [...this.#subscribers.keys()]) {
      await this.unsubscribe(channel);
    }
    await super.close();
  }
}

export const subscribing: ClientKind = {
  name: "an HTTP-like client that subscribes (transport: pubsub)",
  polls: true,
  async open(server) {
    const client = new SubscribingClient(
      await RespClient.connect(server.port, server.hostname),
      server.port,
    );
    return {
      client,
      close() {
        assert.deepEqual(client.refused, [], "commands refused");
        return client.close();
      },
    };
  },
};

export const httpLike: ClientKind = {
  name: "an HTTP-like client (transport: poll)",
  polls: true,
  async open(server) {
    const client = new HttpLikeClient(
      await RespClient.connect(server.port, server.hostname),
    );
    return {
      client,
      close() {
        assert.deepEqual(client.refused, [], "commands refused");
        return client.close();
      },
    };
  },
};

export const allKinds: ClientKind[] = [
  ioredis,
  nodeRedis5,
  nodeRedis4,
  plainSend,
  dbRedis,
  httpLike,
  subscribing,
];
