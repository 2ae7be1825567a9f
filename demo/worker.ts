/**
 * One demo worker: for the given number of seconds, takes the lock, reads
 * the shared counter, writes it back plus one, and releases. The GET and the
 * SET are two separate commands: without the lock, two workers would read
 * the same value and one increment would be lost.
 *
 *   deno run -A demo/worker.ts <redis url> <seconds> <lock|nolock>
 */

import { Redis } from "ioredis";
import { acquire, shutdown } from "../mod.ts";

const [url, seconds, mode] = Deno.args;
const redis = new Redis(url);
const until = Date.now() + Number(seconds) * 1000;

async function increment(): Promise<void> {
  const value = Number(await redis.get("demo:counter") ?? 0);
  await redis.set("demo:counter", value + 1);
}

let increments = 0;
while (Date.now() < until) {
  if (mode === "lock") {
    await using _lock = await acquire(redis, "demo:counter", { expire: 5_000 });
    await increment();
  } else {
    await increment();
  }
  increments++;
}
console.log(increments);
await shutdown(redis);
await redis.quit();
