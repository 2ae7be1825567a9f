/**
 * The clients the suite runs against under Deno, each opened on a test's
 * own server and closed by the test.
 *
 * @module
 */

import { Redis } from "ioredis";
import { createClient } from "redis";
import { createClient as createClient4 } from "redis4";
import { type RedisClient, withConnect } from "../mod.ts";
import { DbRedisShape, RespClient } from "./_resp.ts";
import type { RedisServer } from "./_server.ts";

/** An open client and how to close it. */
export interface OpenClient {
  readonly client: RedisClient;
  close(): Promise<void>;
}

/** A kind of client: its name and how to open one. */
export interface ClientKind {
  readonly name: string;
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

export const allKinds: ClientKind[] = [
  ioredis,
  nodeRedis5,
  nodeRedis4,
  plainSend,
  dbRedis,
];
