/**
 * Uncontended acquire + release beside the raw floor (one `SET NX PX` and
 * one `EVALSHA` compare-and-delete), interleaved: batches of each run in
 * turn, so that the machine's drift over time hits all alike, and the ratio
 * of the medians is printed. On a noisy machine this is steadier than
 * running each benchmark for a stretch of its own, as `deno bench` does.
 *
 *   deno run -A bench/uncontended.ts [rounds]
 */

import { Redis } from "ioredis";
import { Lock } from "../mod.ts";
import { RedisServer } from "../tests/_server.ts";

const ROUNDS = Number(Deno.args[0] ?? 150);
const BATCH = 100;

await using server = await RedisServer.start();
const redis = new Redis(server.port, server.hostname);
const deleteSha = await redis.script(
  "LOAD",
  "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
) as string;
const blocking = new Lock(redis, "blocking", { expire: 10_000 });
const nonBlocking = new Lock(redis, "non-blocking", { expire: 10_000 });
const alone = new Lock(redis, "alone", { expire: 10_000, pythonPeers: false });

const cases: Record<string, () => Promise<unknown>> = {
  "raw floor: SET NX PX + EVALSHA delete": async () => {
    await redis.call("SET", "lock:raw", "id", "NX", "PX", "10000");
    await redis.call("EVALSHA", deleteSha, "1", "lock:raw", "id");
  },
  "lock.acquire() + lock.release()": async () => {
    await blocking.acquire();
    await blocking.release();
  },
  "lock.acquire({ blocking: false }) + lock.release()": async () => {
    await nonBlocking.acquire({ blocking: false });
    await nonBlocking.release();
  },
  "the same with pythonPeers: false": async () => {
    await alone.acquire();
    await alone.release();
  },
};

const times: Record<string, number[]> = {};
for (let round = 0; round < ROUNDS; round++) {
  const names = Object.keys(cases);
  if (round % 2) names.reverse();
  for (const name of names) {
    const started = performance.now();
    for (let i = 0; i < BATCH; i++) await cases[name]();
    (times[name] ??= []).push((performance.now() - started) / BATCH * 1000);
  }
}
redis.disconnect();

const median = (values: number[]) =>
  values.sort((a, b) => a - b)[values.length >> 1];
const floor = median(times["raw floor: SET NX PX + EVALSHA delete"]);
console.log(
  `| uncontended, ${ROUNDS} interleaved batches of ${BATCH} | median µs | × raw floor |\n| --- | ---: | ---: |`,
);
for (const [name, values] of Object.entries(times)) {
  const µs = median(values);
  console.log(`| ${name} | ${µs.toFixed(1)} | ${(floor / µs).toFixed(2)} |`);
}
