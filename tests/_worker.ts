/**
 * A worker process for processes_test.ts. Usage:
 *
 *   deno run tests/_worker.ts count <port> <name> <iterations>
 *     acquires the lock <iterations> times; each time increments the counter
 *     key `counter:<name>` with a non-atomic GET then SET, and records when
 *     it held the lock; prints the intervals as JSON.
 *
 *   deno run tests/_worker.ts queue <port> <name>
 *     waits for the lock (first come, first served) until killed.
 *
 *   deno run tests/_worker.ts redlock <ports,…> <name> <ms> <store port>
 *     for <ms>, acquires a Redlock over the masters on <ports> and
 *     increments `counter:<name>` on the store with a non-atomic GET then
 *     SET; prints the holdings (cut short where the lock was lost) as JSON.
 *
 *   deno run tests/_worker.ts cluster <port> <name,…> <iterations>
 *     on the Redis Cluster a node of which listens on <port>: <iterations>
 *     times, acquires the next of the names in turn and increments
 *     `counter:{<name>}` with a non-atomic GET then SET; prints the
 *     holdings as JSON, `[start, end, name]` each.
 *
 *   deno run tests/_worker.ts cluster-queue <port> <name>
 *     waits for the lock on the Redis Cluster a node of which listens on
 *     <port>, until killed.
 *
 *   deno run tests/_worker.ts hold <port> <name> <start-at-epoch-ms>
 *     waits until the given time, acquires (blocking, no expiry), counts the
 *     acquisition in `acquired:<name>`, and holds the lock until killed.
 */

import { Cluster, Redis } from "ioredis";
import { acquire, Redlock, shutdown } from "../mod.ts";

const [mode, port, name, arg, storePort] = Deno.args;
const redis = new Redis(Number(port.split(",")[0]), "127.0.0.1");
const now = () => performance.timeOrigin + performance.now();

if (mode === "count") {
  const intervals: [number, number][] = [];
  for (let i = 0; i < Number(arg); i++) {
    await using _lock = await acquire(redis, name, { expire: 10_000 });
    const start = now();
    const value = Number(await redis.get(`counter:${name}`) ?? 0);
    await new Promise((resolve) => setTimeout(resolve, 1));
    await redis.set(`counter:${name}`, value + 1);
    intervals.push([start, now()]);
  }
  console.log(JSON.stringify({ pid: Deno.pid, intervals }));
  await shutdown(redis);
  await redis.quit();
} else if (mode === "redlock") {
  const masters = port.split(",").map((p) => {
    const client = new Redis(Number(p), "127.0.0.1", {
      maxRetriesPerRequest: 0,
      retryStrategy: () => 50,
    });
    client.on("error", () => {});
    return client;
  });
  const store = new Redis(Number(storePort), "127.0.0.1");
  const redlock = new Redlock(masters, { maxExpire: 600 });
  const intervals: [number, number][] = [];
  const until = performance.now() + Number(arg);
  while (performance.now() < until) {
    const lock = redlock.lock(name, { expire: 600 });
    try {
      if (!await lock.acquire({ timeout: 1_000 })) continue;
    } catch {
      continue; // too many masters down for a moment
    }
    const start = now();
    let end = Infinity;
    lock.signal.addEventListener("abort", () => end = now());
    const value = Number(await store.get(`counter:${name}`) ?? 0);
    await new Promise((resolve) => setTimeout(resolve, 5));
    await store.set(`counter:${name}`, value + 1);
    intervals.push([start, Math.min(now(), end)]);
    await lock.release().catch(() => {});
  }
  console.log(JSON.stringify({ pid: Deno.pid, intervals }));
  for (const client of [...masters, store, redis]) {
    await shutdown(client);
    client.disconnect();
  }
} else if (mode === "cluster") {
  const cluster = new Cluster([{ host: "127.0.0.1", port: Number(port) }]);
  const names = name.split(",");
  const intervals: [number, number, string][] = [];
  for (let i = 0; i < Number(arg); i++) {
    const held = names[i % names.length];
    await using _lock = await acquire(cluster, held, { expire: 10_000 });
    const start = now();
    const value = Number(await cluster.get(`counter:{${held}}`) ?? 0);
    await new Promise((resolve) => setTimeout(resolve, 1));
    await cluster.set(`counter:{${held}}`, value + 1);
    intervals.push([start, now(), held]);
  }
  console.log(JSON.stringify({ pid: Deno.pid, intervals }));
  await shutdown(cluster);
  cluster.disconnect();
  redis.disconnect();
} else if (mode === "cluster-queue") {
  const cluster = new Cluster([{ host: "127.0.0.1", port: Number(port) }]);
  await acquire(cluster, name);
  await new Promise(() => {}); // killed while waiting, or holding
} else if (mode === "queue") {
  await acquire(redis, name);
  await new Promise(() => {}); // killed while waiting, or holding
} else {
  await new Promise((resolve) => setTimeout(resolve, Number(arg) - Date.now()));
  await acquire(redis, name);
  await redis.incr(`acquired:${name}`);
  await new Promise(() => {}); // hold until killed
}
