/**
 * Micro-benchmarks, each beside its raw floor on the same client (ioredis),
 * server and process; the summary deno bench prints under each group is the
 * ratio a person reads.
 *
 * - uncontended acquire + release, against one `SET NX PX` and one
 *   `EVALSHA` compare-and-delete;
 * - extend, against one `EVALSHA` compare-and-`PEXPIRE`.
 *
 *   deno task bench
 */

import { Redis } from "ioredis";
import { acquire, Lock } from "../mod.ts";
import { RedisServer } from "../tests/_server.ts";

const server = await RedisServer.start();
globalThis.addEventListener("unload", () => server.disposeSync());
const redis = new Redis(server.port, server.hostname);

const script = async (source: string) =>
  await redis.script("LOAD", source) as string;
const deleteSha = await script(
  "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
);
const pexpireSha = await script(
  "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0",
);

Deno.bench({
  name: "raw floor: SET NX PX + EVALSHA delete",
  group: "uncontended acquire + release",
  baseline: true,
  async fn() {
    await redis.call("SET", "lock:raw", "id", "NX", "PX", "10000");
    await redis.call("EVALSHA", deleteSha, "1", "lock:raw", "id");
  },
});

const lock = new Lock(redis, "bench", { expire: 10_000 });
Deno.bench({
  name: "Lock.acquire() + Lock.release()",
  group: "uncontended acquire + release",
  async fn() {
    await lock.acquire();
    await lock.release();
  },
});

Deno.bench({
  name: "await using acquire()",
  group: "uncontended acquire + release",
  async fn() {
    await using _lock = await acquire(redis, "bench-using", { expire: 10_000 });
  },
});

await redis.call("SET", "lock:raw-extend", "id", "PX", "10000");
Deno.bench({
  name: "raw floor: EVALSHA compare-and-PEXPIRE",
  group: "extend",
  baseline: true,
  async fn() {
    await redis.call(
      "EVALSHA",
      pexpireSha,
      "1",
      "lock:raw-extend",
      "id",
      "10000",
    );
  },
});

const held = await acquire(redis, "bench-extend", { expire: 10_000 });
Deno.bench({
  name: "Lock.extend()",
  group: "extend",
  async fn() {
    await held.extend();
  },
});
