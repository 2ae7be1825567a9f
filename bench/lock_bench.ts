/**
 * Uncontended acquire + release beside the raw floor: what one `SET NX PX`
 * and one `EVALSHA` compare-and-delete cost on the same client (ioredis),
 * against the same server, in the same process. The summary deno bench
 * prints under the group is the ratio a person reads.
 *
 *   deno task bench
 */

import { Redis } from "ioredis";
import { acquire, Lock } from "../mod.ts";
import { RedisServer } from "../tests/_server.ts";

const server = await RedisServer.start();
globalThis.addEventListener("unload", () => server.disposeSync());
const redis = new Redis(server.port, server.hostname);

const DELETE = `if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0`;
const deleteSha = await redis.script("LOAD", DELETE) as string;

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
