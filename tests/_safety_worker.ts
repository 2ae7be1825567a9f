/**
 * A worker process of the safety checker (faults_test.ts). Loops: acquire
 * the lock; right away and then every few ms while holding, write
 * `(token, worker, seq)` to a store (a second Redis) through a fencing check
 * in Lua; release. Prints one JSON event per line, with the wall-clock time
 * in ms: `acquired`, `write` (accepted or not), `told` (lock.signal aborted
 * with a LockLostError), `release`, `released-late` (the release found the
 * lock already gone), `timeout`, `error`, `ready`, `exit`. Once stdin
 * closes, stops waiting, or stops after its current holding.
 *
 *   deno run -A tests/_safety_worker.ts <lock port> <store port> <name> <worker> <expire ms> <hold ms>
 */

import { Redis } from "ioredis";
import { Lock, LockLostError, NotAcquiredError, shutdown } from "../mod.ts";

const [lockPort, storePort, name, worker, expire, hold] = Deno.args;
/** Writes per holding: one without a hold (a loop of short holdings). */
const WRITES = Number(hold) > 0 ? 3 : 1;

/**
 * The store's fencing check: a write is accepted unless a higher token has
 * been seen. Returns 1 when accepted, 0 when refused.
 */
const FENCED_WRITE = `
local highest = tonumber(redis.call('get', KEYS[1]) or '0')
if tonumber(ARGV[1]) < highest then return 0 end
redis.call('set', KEYS[1], ARGV[1])
redis.call('rpush', KEYS[2], ARGV[2])
return 1`;

const redis = new Redis(Number(lockPort), "127.0.0.1");
redis.on("error", () => {}); // reconnecting after a fault
const store = new Redis(Number(storePort), "127.0.0.1");
const now = () => performance.timeOrigin + performance.now();
const emit = (event: Record<string, unknown>) =>
  console.log(JSON.stringify({ worker: Number(worker), at: now(), ...event }));
const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// Nothing is sent on stdin: closing it stops the worker, and its wait.
const stopping = new AbortController();
(async () => {
  for await (const _ of Deno.stdin.readable) {
    // ignored
  }
  stopping.abort();
})();

await new Promise((resolve) => redis.once("ready", resolve));
emit({ type: "ready" });
while (!stopping.signal.aborted) {
  const lock = new Lock(redis, name, {
    expire: Number(expire),
    autoRenewal: true,
  });
  let acquired: boolean;
  try {
    acquired = await lock.acquire({
      timeout: 15_000,
      signal: stopping.signal,
    });
  } catch (error) {
    if (stopping.signal.aborted) break;
    emit({ type: "error", message: String(error) });
    await delay(50);
    continue;
  }
  if (!acquired) {
    emit({ type: "timeout" });
    continue;
  }
  const token = lock.token;
  emit({ type: "acquired", token });
  lock.signal.addEventListener("abort", () => {
    if (lock.signal.reason instanceof LockLostError) {
      emit({ type: "told", token, message: lock.signal.reason.message });
    }
  });
  for (let seq = 0; seq < WRITES && !lock.signal.aborted; seq++) {
    const attempt = now();
    let accepted: boolean | null = null;
    try {
      accepted = await store.eval(
        FENCED_WRITE,
        2,
        "store:highest",
        "store:log",
        token,
        `${token}:${worker}:${seq}`,
      ) === 1;
    } catch {
      // the store is never faulted; a failure here is reported as null
    }
    // The write may run long after `attempt` (the process paused in
    // between): a refusal is judged by when its answer came.
    emit({ type: "write", token, seq, attempt, answered: now(), accepted });
    if (Number(hold) > 0) await delay(Number(hold) / WRITES);
  }
  if (!lock.signal.aborted) {
    emit({ type: "release", token });
    await lock.release().catch((error) =>
      // Redis may have dropped the lock before the release ran (it slept):
      // the release says so, as python-redis-lock's does.
      emit({
        type: error instanceof NotAcquiredError ? "released-late" : "error",
        token,
        message: `release: ${error}`,
      })
    );
  }
}
await shutdown(redis);
redis.disconnect();
store.disconnect();
emit({ type: "exit" });
Deno.exit(0);
