/**
 * One worker process of the contention benchmark (contention.ts). It
 * connects with ioredis, waits at the start barrier, then for `seconds`
 * loops acquire → hold → release on one lock name with the implementation
 * it is given, and prints its count and acquire waits as JSON.
 *
 *   deno run -A bench/_contention_worker.ts <implementation> <port>[,<port>…] <hold ms> <seconds> [<tasks>] [<settle seconds>]
 *
 * With <tasks> (default 1), that many tasks of the process loop at once,
 * each with its own lock instance (a busy server), and the counts printed
 * are per task. With <settle seconds> (default 0), the loop runs that much
 * longer first, and only the acquisitions whose wait began after it are
 * counted.
 *
 * Implementations over three masters (their names end in "× 3 masters")
 * get a client per port; the others use the first.
 */

import { Redis } from "ioredis";
import Redlock from "redlock";
import { Mutex } from "redis-semaphore";
import {
  Lock,
  type LockOptions,
  Redlock as OurRedlock,
  shutdown,
} from "../mod.ts";

/** One implementation: resolves once acquired; the result releases. */
export type Acquire = () => Promise<() => Promise<unknown>>;

const NAME = "contended";
const EXPIRE = 10_000;

/**
 * Acquisitions of a lock of its own that each worker makes before the
 * start: without them, a worker of 32 makes a few hundred acquisitions in
 * all, and the run measures how fast the JIT compiles each implementation
 * (ours: 2,500-3,000/s at c = 32 cold, 5,500/s warm).
 */
const WARM_UP = 2_000;

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** This library's `Lock` with `options` (and the benchmark's expiry). */
function ours(options: LockOptions): (redis: Redis, name: string) => Acquire {
  return (redis, name) => {
    const lock = new Lock(redis, name, { ...options, expire: EXPIRE });
    return async () => {
      await lock.acquire();
      return () => lock.release();
    };
  };
}

/** The implementations compared, by the names the harness passes. */
export const implementations: Record<
  string,
  (redis: Redis, name: string, masters: Redis[]) => Acquire
> = {
  "@x/redis-lock": ours({}),
  "@x/redis-lock turns: false": ours({ turns: false }),
  "@x/redis-lock pythonPeers: false": ours({ pythonPeers: false }),
  "redlock (defaults)": (redis, name) => {
    const redlock = new Redlock([redis]);
    return retrying(async () => {
      const lock = await redlock.acquire([name], EXPIRE);
      return () => lock.release();
    });
  },
  "redlock (retryDelay 10)": (redis, name) => {
    const redlock = new Redlock([redis], { retryDelay: 10 });
    return retrying(async () => {
      const lock = await redlock.acquire([name], EXPIRE);
      return () => lock.release();
    });
  },
  "@x/redis-lock Redlock × 3 masters": (_redis, name, masters) => {
    const lock = new OurRedlock(masters).lock(name, { expire: EXPIRE });
    return async () => {
      await lock.acquire();
      return () => lock.release();
    };
  },
  "redlock (retryDelay 10) × 3 masters": (_redis, name, masters) => {
    const redlock = new Redlock(masters, { retryDelay: 10 });
    return retrying(async () => {
      const lock = await redlock.acquire([name], EXPIRE);
      return () => lock.release();
    });
  },
  "redis-semaphore Mutex": (redis, name) => {
    const mutex = new Mutex(redis, name);
    return retrying(async () => {
      await mutex.acquire();
      return () => mutex.release();
    });
  },
  "SET NX PX + 10 ms poll": (redis, name) => {
    const id = crypto.randomUUID();
    const key = `lock:${name}`;
    return async () => {
      while (await redis.set(key, id, "PX", EXPIRE, "NX") !== "OK") {
        await delay(10);
      }
      return () =>
        redis.eval(
          "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
          1,
          key,
          id,
        );
    };
  },
};

/**
 * Peers give up after their retry limit (redlock: 10 retries) and throw;
 * the loop's acquire keeps trying, and its wait counts from the first try.
 */
function retrying(acquire: Acquire): Acquire {
  return async () => {
    for (;;) {
      try {
        return await acquire();
      } catch {
        // retries exhausted: try again
      }
    }
  };
}

if (import.meta.main) {
  const [
    implementation,
    ports,
    hold,
    seconds,
    tasksArg = "1",
    settle = "0",
  ] = Deno.args;
  const masters = ports.split(",").map((port) =>
    new Redis(Number(port), "127.0.0.1")
  );
  const redis = masters[0];
  const tasks = Number(tasksArg);
  const acquires = Array.from(
    { length: tasks },
    () => implementations[implementation](redis, NAME, masters),
  );
  const holdMs = Number(hold);

  // Warm up (load scripts, let the JIT compile the code paths, as in a
  // server that has run for a while) on a lock of its own, then the start
  // barrier: ready, then one go for everyone.
  const warmUp = implementations[implementation](
    redis,
    `warm-up:${Deno.pid}`,
    masters,
  );
  // A release that fails (a master slower than its timeout while every
  // worker starts) is counted, not fatal: the lock expires. The first is
  // printed, the count at the end (32 workers over three masters fail
  // hundreds while they warm up).
  let failedReleases = 0;
  const release = (done: () => Promise<unknown>) =>
    done().catch((error) => {
      if (failedReleases++ === 0) console.error(`release failed: ${error}`);
    });
  for (let i = 0; i < WARM_UP; i++) await release(await warmUp());
  await redis.incr("bench:ready");
  // The go carries when to start (ms since the epoch, this machine's
  // clock): every worker runs over the same window, so that none has the
  // lock to itself at the start or the end, when the others woke later or
  // stopped earlier.
  const [, go] = (await redis.blpop("bench:go", 0))!;
  const start = Number(go);
  await delay(start - Date.now());
  const from = performance.now() + start + Number(settle) * 1000 -
    Date.now();
  const until = from + Number(seconds) * 1000;
  const waits: number[] = [];
  let held = 0;
  const counts = await Promise.all(acquires.map(async (acquire) => {
    let count = 0;
    while (performance.now() < until) {
      const started = performance.now();
      const done = await acquire();
      const counted = started >= from;
      if (counted) {
        waits.push(Math.round((performance.now() - started) * 100) / 100);
        count++;
      }
      if (holdMs > 0) {
        const start = performance.now();
        await delay(holdMs);
        if (counted) held += performance.now() - start;
      }
      await release(done);
    }
    return count;
  }));
  console.log(
    JSON.stringify({
      acquisitions: waits.length,
      counts,
      waits,
      held,
      failedReleases,
    }),
  );
  if (failedReleases > 1) {
    console.error(`${failedReleases} releases failed in worker ${Deno.pid}`);
  }
  for (const master of masters) {
    await shutdown(master);
    master.disconnect();
  }
  Deno.exit(0);
}
