/**
 * Uncontended acquire + release beside the raw floor (one `SET NX PX` and
 * one `EVALSHA` compare-and-delete), interleaved: batches of each run in
 * turn, so that the machine's drift over time hits all alike, and the ratio
 * of the medians is printed. On a noisy machine this is steadier than
 * running each benchmark for a stretch of its own, as `deno bench` does.
 *
 * Two rows in between split the difference: the commands of this library's
 * protocol (the fencing token drawn from the server's clock, the queue
 * looked at, Python's wake-up left) in two minimal scripts, and this
 * library's own scripts sent directly, with the keys and arguments a `Lock`
 * sends, without the library's code around them.
 *
 *   deno run -A bench/uncontended.ts [rounds]
 */

import { Redis } from "ioredis";
import { Lock } from "../mod.ts";
import { ACQUIRE, RELEASE, TRY } from "../src/scripts.ts";
import { RedisServer } from "../tests/_server.ts";

const ROUNDS = Number(Deno.args[0] ?? 150);
const BATCH = 100;

await using server = await RedisServer.start();
const redis = new Redis(server.port, server.hostname);
const deleteSha = await redis.script(
  "LOAD",
  "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
) as string;
const load = async (source: string) =>
  await redis.script("LOAD", source) as string;
const minimalAcquire = await load(`
local owner = redis.call('set', KEYS[1], ARGV[1], 'NX', 'GET', 'PX', ARGV[2])
if owner then return {0} end
local clock = redis.call('time')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
redis.call('set', KEYS[2], ARGV[3] .. ':' .. string.format('%d', now), 'GET')
return now`);
const minimalRelease = await load(`
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 1 end
local waiting = redis.call('llen', KEYS[3]) > 0
if redis.call('lindex', KEYS[2], 0) ~= '1' then
  redis.call('del', KEYS[2])
  redis.call('lpush', KEYS[2], 1)
end
redis.call('pexpire', KEYS[2], ARGV[2])
redis.call('del', KEYS[1])
return 0`);
const acquireSha = await load(ACQUIRE);
const releaseSha = await load(RELEASE);
const trySha = await load(TRY);
const direct = ["lock:direct", "lock-signal:direct", "lock-queue:direct"]
  .concat(["lock-fence", "lock-turn:direct"]);
/** Runs one of this library's scripts on the keys of the lock `direct`. */
const runDirect = (sha: string, ...args: string[]) =>
  redis.call("EVALSHA", sha, "5", ...direct, ...args);
// The first acquire learns the fencing counter's epoch, as a Lock does.
const [, , epoch] = await runDirect(
  acquireSha,
  ...["direct-id", "10000", "", "", ""],
) as [number, number, string];
await runDirect(releaseSha, "1000", "direct-id");
let marks = 0;
const blocking = new Lock(redis, "blocking", { expire: 10_000 });
const nonBlocking = new Lock(redis, "non-blocking", { expire: 10_000 });
const alone = new Lock(redis, "alone", { expire: 10_000, pythonPeers: false });

const cases: Record<string, () => Promise<unknown>> = {
  "raw floor: SET NX PX + EVALSHA delete": async () => {
    await redis.call("SET", "lock:raw", "id", "NX", "PX", "10000");
    await redis.call("EVALSHA", deleteSha, "1", "lock:raw", "id");
  },
  "the same commands in two minimal scripts": async () => {
    await redis.call(
      "EVALSHA",
      minimalAcquire,
      "2",
      "lock:minimal",
      "lock-fence",
      "minimal-id",
      "10000",
      epoch,
    );
    await redis.call(
      "EVALSHA",
      minimalRelease,
      "3",
      "lock:minimal",
      "lock-signal:minimal",
      "lock-queue:minimal",
      "minimal-id",
      "1000",
    );
  },
  "this library's scripts, sent directly": async () => {
    // A Lock's first try sends TRY; one that loops asks for a holder's
    // turn at each release.
    await redis.call(
      "EVALSHA",
      ...[trySha, "2", direct[0], direct[3], "direct-id", "10000", epoch],
    );
    await runDirect(
      releaseSha,
      ...["1000", "direct-id", ""],
      `turn:000000000000000000000000:${(marks++).toString(36)}`,
      ...[epoch, "10000"],
    );
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
