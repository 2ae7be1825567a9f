/**
 * The behavioural suite, run once per client: under Deno for ioredis,
 * redis v5 and v4, a plain `{ send }` client and the `@db/redis` shape, and
 * under Bun for its built-in `RedisClient`. Scenarios use no runtime API, so
 * that both runtimes run the very same code. They cover python-redis-lock's
 * own test suite (`tests/test_redis_lock.py`) and this library's additions.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  acquire,
  AcquireTimeoutError,
  AlreadyAcquiredError,
  Lock,
  LockError,
  LockLostError,
  NotAcquiredError,
  NotExpirableError,
  type RedisClient,
  resetAll,
  shutdown,
} from "../mod.ts";

/** What a scenario gets from the runner. */
export interface Context {
  /** A new application client of the kind under test, closed after the scenario. */
  client(): Promise<RedisClient>;
  /** A raw command on a connection of the test's own. */
  raw(command: string, ...args: (string | number)[]): Promise<unknown>;
  /** A lock name no other scenario uses. */
  readonly name: string;
  /**
   * Resolves once `count` waits of the scenario have made their first try
   * and sleep: `BLPOP`s blocked, or a pause longer than a try for clients
   * that poll (nothing in Redis shows a racer that polls).
   */
  waiting(count: number): Promise<void>;
}

/** Every scenario, with its index and name. */
export function runs(): {
  scenario: Scenario;
  index: number;
  name: string;
}[] {
  return scenarios.map((scenario, index) => ({
    scenario,
    index,
    name: scenario.name,
  }));
}

/** One behaviour, stated as its name. */
export interface Scenario {
  readonly name: string;
  readonly fn: (ctx: Context) => Promise<void>;
}

export const delay = (ms: number): Promise<void> =>
  new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves once the server counts at least `count` clients blocked in a command. */
export async function blockedClients(
  ctx: Pick<Context, "raw">,
  count: number,
): Promise<void> {
  const deadline = Date.now() + 5_000;
  for (;;) {
    const info = String(await ctx.raw("INFO", "clients"));
    const blocked = Number(/blocked_clients:(\d+)/.exec(info)?.[1] ?? 0);
    if (blocked >= count) return;
    if (Date.now() > deadline) {
      throw new Error(`Expected ${count} blocked clients, saw ${blocked}`);
    }
    await delay(5);
  }
}

/** How a runner opens clients of the kind under test and sends raw commands. */
export interface Runner {
  /** Opens a client; the returned function closes it. */
  open(): Promise<readonly [RedisClient, () => Promise<unknown>]>;
  /** Sends a raw command on a connection of the runner's own. */
  raw(command: string, args: string[]): Promise<unknown>;
  /** Whether the clients' waiters poll rather than block in `BLPOP`. */
  readonly polls?: boolean;
}

/**
 * Runs one scenario: gives it a fresh name and clients, closes them after,
 * and checks that it left no lock behind, so that every scenario also tests
 * that nothing stays in Redis.
 */
export async function runScenario(
  scenario: Scenario,
  index: number,
  runner: Runner,
): Promise<void> {
  const closers: (() => Promise<unknown>)[] = [];
  const ctx: Context = {
    name: `scenario-${index}`,
    async client() {
      const [client, close] = await runner.open();
      closers.push(async () => {
        await shutdown(client);
        await close();
      });
      return client;
    },
    raw: (command, ...args) => runner.raw(command, args.map(String)),
    waiting: (count) => runner.polls ? delay(300) : blockedClients(ctx, count),
  };
  let left: string[] = [];
  try {
    await scenario.fn(ctx);
  } finally {
    for (const close of closers) await close();
    left = await ctx.raw("KEYS", "lock:*") as string[];
    if (left.length > 0) await ctx.raw("DEL", ...left);
  }
  assert.deepEqual(left, [], "no lock is left behind");
}

/**
 * Runs every scenario in turn with a runner, printing `ok <name>` or
 * `FAILED <name>: <error>` for each: for the suites that run under another
 * runtime (Bun, Node). Returns how many failed.
 */
export async function runAll(runner: Runner): Promise<number> {
  let failed = 0;
  for (const { scenario, index, name } of runs()) {
    try {
      await runScenario(scenario, index, runner);
      console.log(`ok ${name}`);
    } catch (error) {
      failed++;
      console.log(`FAILED ${name}: ${(error as Error).stack ?? error}`);
    }
  }
  return failed;
}

/** Resolves once `lock-queue:<name>` holds at least `count` waiters. */
export async function queued(
  ctx: Pick<Context, "raw">,
  name: string,
  count = 1,
): Promise<void> {
  const deadline = Date.now() + 5_000;
  for (;;) {
    const length = await ctx.raw("LLEN", `lock-queue:${name}`) as number;
    if (length >= count) return;
    if (Date.now() > deadline) {
      throw new Error(`Expected ${count} queued for '${name}', saw ${length}`);
    }
    await delay(5);
  }
}

/** Resolves with how the promise settled, without throwing. */
async function settle<T>(
  promise: Promise<T>,
): Promise<{ value?: T; error?: unknown }> {
  try {
    return { value: await promise };
  } catch (error) {
    return { error };
  }
}

function isLockLost(signal: AbortSignal): boolean {
  return signal.aborted && signal.reason instanceof LockLostError;
}

export const scenarios: Scenario[] = [
  {
    name: "Lock.acquire() sets lock:<name> to the id and release() deletes it",
    async fn(ctx) {
      const client = await ctx.client();
      const lock = new Lock(client, ctx.name);
      assert.equal(await ctx.raw("EXISTS", `lock:${ctx.name}`), 0);
      assert.equal(await lock.acquire(), true);
      assert.equal(await ctx.raw("GET", `lock:${ctx.name}`), lock.id);
      assert.equal(await ctx.raw("PTTL", `lock:${ctx.name}`), -1);
      assert.equal(await lock.locked(), true);
      assert.equal(await lock.ownerId(), lock.id);
      await lock.release();
      assert.equal(await ctx.raw("EXISTS", `lock:${ctx.name}`), 0);
      assert.equal(await lock.locked(), false);
      assert.equal(await lock.ownerId(), null);
    },
  },
  {
    name: "Lock constructor sends nothing to Redis",
    async fn(ctx) {
      const client = await ctx.client();
      const before = String(await ctx.raw("INFO", "stats"));
      const count = (info: string) =>
        Number(/total_commands_processed:(\d+)/.exec(info)![1]);
      new Lock(client, ctx.name, { expire: 1000 });
      const after = String(await ctx.raw("INFO", "stats"));
      // The one command in between is the first INFO itself.
      assert.equal(count(after) - count(before), 1);
    },
  },
  {
    name: "Lock.release() leaves exactly one wake-up in the signal list",
    async fn(ctx) {
      const client = await ctx.client();
      for (let i = 0; i < 5; i++) {
        const lock = new Lock(client, ctx.name);
        assert.equal(await lock.acquire({ blocking: false }), true);
        await lock.release();
        assert.equal(await ctx.raw("LLEN", `lock-signal:${ctx.name}`), 1);
      }
    },
  },
  {
    name: "Lock.acquire() returns false when busy and blocking is false",
    async fn(ctx) {
      const client = await ctx.client();
      await using holder = await acquire(client, ctx.name);
      const other = new Lock(client, ctx.name);
      assert.equal(await other.acquire({ blocking: false }), false);
      await assert.rejects(
        acquire(client, ctx.name, { blocking: false }),
        NotAcquiredError,
      );
      assert.equal(await ctx.raw("GET", `lock:${ctx.name}`), holder.id);
    },
  },
  {
    name: "Lock.acquire() returns false when the timeout elapses",
    async fn(ctx) {
      const client = await ctx.client();
      await using _holder = await acquire(client, ctx.name);
      const started = Date.now();
      assert.equal(
        await new Lock(client, ctx.name).acquire({
          timeout: 200,
        }),
        false,
      );
      assert.ok(Date.now() - started >= 190, "waited for the timeout");
      await assert.rejects(
        acquire(client, ctx.name, { timeout: 50 }),
        AcquireTimeoutError,
      );
    },
  },
  {
    name: "Lock.acquire() with timeout 0 takes a free lock",
    async fn(ctx) {
      const client = await ctx.client();
      const lock = new Lock(client, ctx.name);
      assert.equal(await lock.acquire({ timeout: 0 }), true);
      assert.equal(
        await new Lock(client, ctx.name).acquire({ timeout: 0 }),
        false,
      );
      await lock.release();
    },
  },
  {
    name: "a waiter wakes when the holder's expiry passes, without a release",
    async fn(ctx) {
      const client = await ctx.client();
      const holder = new Lock(client, ctx.name, { expire: 300 });
      await holder.acquire();
      const started = Date.now();
      const waiter = new Lock(client, ctx.name);
      assert.equal(await waiter.acquire({ timeout: 10_000 }), true);
      const waited = Date.now() - started;
      assert.ok(waited >= 250, `acquired after ${waited} ms, before expiry`);
      assert.ok(waited < 2_000, `woke ${waited} ms after a 300 ms expiry`);
      assert.ok(isLockLost(holder.signal), "holder's signal reports loss");
      await waiter.release();
    },
  },
  {
    name: "a waiter times out while the holder keeps renewing",
    async fn(ctx) {
      const client = await ctx.client();
      await using holder = await acquire(client, ctx.name, {
        expire: 300,
        autoRenewal: true,
      });
      assert.equal(
        await new Lock(client, ctx.name).acquire({
          timeout: 1_000,
        }),
        false,
      );
      assert.equal(await ctx.raw("GET", `lock:${ctx.name}`), holder.id);
      assert.equal(holder.signal.aborted, false);
    },
  },
  {
    name: "a waiter acquires once a holder in another client releases",
    async fn(ctx) {
      const holder = await acquire(await ctx.client(), ctx.name);
      const waiter = new Lock(await ctx.client(), ctx.name);
      const waiting = waiter.acquire({ timeout: 10_000 });
      await ctx.waiting(1);
      await holder.release();
      assert.equal(await waiting, true);
      assert.equal(await ctx.raw("GET", `lock:${ctx.name}`), waiter.id);
      await waiter.release();
    },
  },
  {
    name: "an expiring lock is gone after its expiry and its signal reports it",
    async fn(ctx) {
      const client = await ctx.client();
      const lock = new Lock(client, ctx.name, { expire: 200 });
      await lock.acquire();
      const pttl = await ctx.raw("PTTL", `lock:${ctx.name}`) as number;
      assert.ok(pttl > 0 && pttl <= 200, `pttl ${pttl}`);
      await delay(350);
      assert.equal(await lock.ownerId(), null);
      assert.ok(isLockLost(lock.signal));
      await assert.rejects(lock.release(), NotAcquiredError);
      const next = new Lock(client, ctx.name);
      assert.equal(await next.acquire({ blocking: false }), true);
      await next.release();
    },
  },
  {
    name: "Lock.extend() sets a new expiry, or the lock's own by default",
    async fn(ctx) {
      const client = await ctx.client();
      await using lock = await acquire(client, ctx.name, { expire: 1_000 });
      await lock.extend(60_000);
      assert.ok(
        (await ctx.raw("PTTL", `lock:${ctx.name}`) as number) > 59_000,
      );
      await lock.extend();
      const pttl = await ctx.raw("PTTL", `lock:${ctx.name}`) as number;
      assert.ok(pttl > 900 && pttl <= 1_000, `pttl ${pttl}`);
    },
  },
  {
    name: "Lock.extend() works from another instance with the same id",
    async fn(ctx) {
      const client = await ctx.client();
      await using lock = await acquire(client, ctx.name, { expire: 1_000 });
      await new Lock(client, ctx.name, { id: lock.id }).extend(60_000);
      assert.ok(
        (await ctx.raw("PTTL", `lock:${ctx.name}`) as number) > 59_000,
      );
    },
  },
  {
    name: "Lock.extend() with another id fails and leaves the expiry alone",
    async fn(ctx) {
      const client = await ctx.client();
      await using lock = await acquire(client, ctx.name, { expire: 1_000 });
      const other = new Lock(client, ctx.name);
      await assert.rejects(other.extend(60_000), NotAcquiredError);
      assert.ok(
        (await ctx.raw("PTTL", `lock:${ctx.name}`) as number) <= 1_000,
      );
      assert.notEqual(lock.id, other.id);
    },
  },
  {
    name:
      "Lock.extend() of a lock without expiry is NotExpirable, or a TypeError without expire",
    async fn(ctx) {
      const client = await ctx.client();
      await using lock = await acquire(client, ctx.name);
      await assert.rejects(lock.extend(1_000), NotExpirableError);
      await assert.rejects(lock.extend(), TypeError);
    },
  },
  {
    name:
      "Lock.acquire() twice is AlreadyAcquired, from this or another instance with the id",
    async fn(ctx) {
      const client = await ctx.client();
      await using lock = await acquire(client, ctx.name);
      await assert.rejects(lock.acquire(), AlreadyAcquiredError);
      await assert.rejects(
        new Lock(client, ctx.name, { id: lock.id }).acquire(),
        AlreadyAcquiredError,
      );
    },
  },
  {
    name:
      "Lock.release() of a lock never acquired is NotAcquired; another instance with the id may release",
    async fn(ctx) {
      const client = await ctx.client();
      const lock = new Lock(client, ctx.name);
      await assert.rejects(lock.release(), NotAcquiredError);
      await lock.acquire();
      await new Lock(client, ctx.name, { id: lock.id }).release();
      await assert.rejects(lock.release(), NotAcquiredError);
    },
  },
  {
    name: "a given id is the lock's value and is shared by instances",
    async fn(ctx) {
      const client = await ctx.client();
      const original = new Lock(client, ctx.name, { expire: 100_000, id: "a" });
      assert.equal(original.id, "a");
      await original.acquire();
      assert.equal(await ctx.raw("GET", `lock:${ctx.name}`), "a");
      const same = new Lock(client, ctx.name, { id: "a" });
      await assert.rejects(same.acquire(), AlreadyAcquiredError);
      await same.extend(100_000);
      await same.release();
      await assert.rejects(original.release(), NotAcquiredError);
      assert.equal(await ctx.raw("EXISTS", `lock:${ctx.name}`), 0);
    },
  },
  {
    name:
      "Lock.reset() deletes the lock, the holder learns of it, and a new lock can acquire",
    async fn(ctx) {
      const client = await ctx.client();
      const holder = await acquire(client, ctx.name);
      await new Lock(client, ctx.name).reset();
      assert.equal(await ctx.raw("EXISTS", `lock:${ctx.name}`), 0);
      const next = new Lock(client, ctx.name);
      assert.equal(await next.acquire({ blocking: false }), true);
      await next.release();
      await assert.rejects(holder.release(), NotAcquiredError);
      const resetter = await acquire(client, ctx.name);
      await resetter.reset();
      assert.ok(isLockLost(resetter.signal), "a holder that resets loses");
    },
  },
  {
    name: "Lock.reset() wakes a waiter",
    async fn(ctx) {
      await using _holder = await acquire(await ctx.client(), ctx.name);
      const waiter = new Lock(await ctx.client(), ctx.name);
      const waiting = waiter.acquire({ timeout: 10_000 });
      await ctx.waiting(1);
      await new Lock(await ctx.client(), ctx.name).reset();
      assert.equal(await waiting, true);
      await waiter.release();
      await assert.rejects(_holder.release(), NotAcquiredError);
    },
  },
  {
    name: "resetAll() deletes every lock and wakes their waiters",
    async fn(ctx) {
      const client = await ctx.client();
      const names = [`${ctx.name}:1`, `${ctx.name}:2`];
      const holders = await Promise.all(
        names.map((name) => acquire(client, name)),
      );
      const waiters: Lock[] = [];
      for (const name of names) {
        waiters.push(new Lock(await ctx.client(), name));
      }
      const waiting = waiters.map((lock) => lock.acquire({ timeout: 10_000 }));
      await ctx.waiting(2);
      assert.equal(await resetAll(client), 2);
      assert.deepEqual(await Promise.all(waiting), [true, true]);
      for (const waiter of waiters) await waiter.release();
      for (const holder of holders) {
        await assert.rejects(holder.release(), NotAcquiredError);
      }
      assert.equal(await resetAll(client), 0);
    },
  },
  {
    name: "auto-renewal keeps the lock past its expiry until release",
    async fn(ctx) {
      const client = await ctx.client();
      const lock = new Lock(client, ctx.name, {
        expire: 300,
        autoRenewal: true,
      });
      await lock.acquire();
      await delay(800);
      assert.equal(await ctx.raw("GET", `lock:${ctx.name}`), lock.id);
      assert.equal(lock.signal.aborted, false);
      await lock.release();
      assert.equal(lock.signal.aborted, true);
      assert.equal(lock.signal.reason instanceof LockLostError, false);
      assert.ok(lock.signal.reason instanceof LockError);
      // The renewal timer has stopped: the key stays deleted.
      await delay(250);
      assert.equal(await ctx.raw("EXISTS", `lock:${ctx.name}`), 0);
    },
  },
  {
    name: "without auto-renewal the lock is not renewed",
    async fn(ctx) {
      const client = await ctx.client();
      const lock = new Lock(client, ctx.name, { expire: 200 });
      await lock.acquire();
      await delay(350);
      assert.equal(await ctx.raw("EXISTS", `lock:${ctx.name}`), 0);
      assert.ok(isLockLost(lock.signal));
    },
  },
  {
    name:
      "the signal list expires after signalExpire, after release and after resetAll",
    async fn(ctx) {
      const client = await ctx.client();
      for (const signalExpire of [300, 600]) {
        for (const method of ["release", "resetAll"]) {
          const lock = new Lock(client, ctx.name, { signalExpire });
          await lock.acquire();
          if (method === "release") await lock.release();
          else await resetAll(client, { signalExpire });
          const pttl = await ctx.raw("PTTL", `lock-signal:${ctx.name}`);
          assert.ok(
            (pttl as number) > 0 && (pttl as number) <= signalExpire,
            `${method}: pttl ${pttl}`,
          );
          await delay(signalExpire + 100);
          assert.equal(await ctx.raw("EXISTS", `lock-signal:${ctx.name}`), 0);
        }
      }
    },
  },
  {
    name: "await using releases at the end of the scope",
    async fn(ctx) {
      const client = await ctx.client();
      let signal: AbortSignal;
      {
        await using lock = await acquire(client, ctx.name, { expire: 10_000 });
        signal = lock.signal;
        assert.equal(await ctx.raw("GET", `lock:${ctx.name}`), lock.id);
      }
      assert.equal(await ctx.raw("EXISTS", `lock:${ctx.name}`), 0);
      assert.equal(signal.aborted, true);
    },
  },
  {
    name: "await using reports a lock lost within the scope",
    async fn(ctx) {
      const client = await ctx.client();
      const leave = async () => {
        await using _lock = await acquire(client, ctx.name, { expire: 100 });
        await delay(250);
      };
      await assert.rejects(leave(), LockLostError);
    },
  },
  {
    name:
      "an abort while waiting rejects with the reason and leaves nothing behind",
    async fn(ctx) {
      const client = await ctx.client();
      await using holder = await acquire(client, ctx.name);
      const keys = async () =>
        (await ctx.raw("KEYS", `*${ctx.name}*`) as string[]).sort();
      const before = await keys();
      const controller = new AbortController();
      const waiter = new Lock(client, ctx.name);
      const waiting = settle(waiter.acquire({ signal: controller.signal }));
      await ctx.waiting(1);
      const reason = new Error("stop waiting");
      controller.abort(reason);
      assert.equal((await waiting).error, reason);
      assert.deepEqual(await keys(), before);
      assert.equal(await ctx.raw("GET", `lock:${ctx.name}`), holder.id);
      // An aborted signal rejects at once.
      await assert.rejects(
        waiter.acquire({ signal: AbortSignal.abort(reason) }),
        (error) => error === reason,
      );
    },
  },
  {
    name:
      "a waiter aborted after taking a wake-up passes it on to the next waiter",
    async fn(ctx) {
      const client = await ctx.client();
      const holder = await acquire(client, ctx.name);
      const controller = new AbortController();
      const first = settle(
        new Lock(client, ctx.name).acquire({
          signal: controller.signal,
        }),
      );
      await ctx.waiting(1);
      const second = new Lock(await ctx.client(), ctx.name);
      const waiting = second.acquire({ timeout: 5_000 });
      await ctx.waiting(2);
      // The release goes out before the abort does anything: the first
      // waiter is handed the lock before it
      // learns of the abort, and must pass it on.
      const releasedAt = Date.now();
      const released = holder.release();
      controller.abort(new Error("gave up"));
      await released;
      assert.equal(((await first).error as Error).message, "gave up");
      assert.equal(await waiting, true);
      const waited = Date.now() - releasedAt;
      assert.ok(waited < 2_500, `woken by the wake-up, not its timeout`);
      await second.release();
    },
  },
  {
    name:
      "lock.signal aborts with LockLostError when the lock is deleted behind its holder",
    async fn(ctx) {
      const client = await ctx.client();
      const lock = new Lock(client, ctx.name, {
        expire: 300,
        autoRenewal: true,
      });
      await lock.acquire();
      const lost = new Promise((resolve) =>
        lock.signal.addEventListener("abort", resolve, { once: true })
      );
      await ctx.raw("DEL", `lock:${ctx.name}`);
      await lost;
      assert.ok(lock.signal.reason instanceof LockLostError);
      await assert.rejects(lock.release(), NotAcquiredError);
    },
  },
  {
    name: "lock.signal aborts when extend() finds the lock held by another id",
    async fn(ctx) {
      const client = await ctx.client();
      const lock = await acquire(client, ctx.name, { expire: 10_000 });
      await ctx.raw("SET", `lock:${ctx.name}`, "someone-else");
      await assert.rejects(lock.extend(), NotAcquiredError);
      assert.ok(isLockLost(lock.signal));
      await ctx.raw("DEL", `lock:${ctx.name}`);
    },
  },
  {
    name: "fencing tokens strictly increase over acquisitions",
    async fn(ctx) {
      const client = await ctx.client();
      let previous = 0;
      for (let i = 0; i < 5; i++) {
        const lock = new Lock(client, ctx.name);
        assert.throws(() => lock.token, NotAcquiredError);
        await lock.acquire();
        assert.ok(lock.token > previous, `${lock.token} after ${previous}`);
        previous = lock.token;
        await lock.release();
        assert.equal(lock.token, previous, "kept after release");
      }
      // Another name draws from the same counter, and this one goes on rising.
      const other = await acquire(client, `${ctx.name}:other`);
      await other.release();
      const again = await acquire(client, ctx.name);
      assert.ok(again.token > other.token && other.token > previous);
      await again.release();
    },
  },
  {
    name: "each acquisition after a release brings a new signal",
    async fn(ctx) {
      const client = await ctx.client();
      const lock = new Lock(client, ctx.name);
      const first = lock.signal;
      await lock.acquire();
      assert.equal(lock.signal, first);
      await lock.release();
      assert.equal(first.aborted, true);
      await lock.acquire();
      assert.notEqual(lock.signal, first);
      assert.equal(lock.signal.aborted, false);
      await lock.release();
    },
  },
  {
    name:
      "bad options throw TypeError or RangeError naming the option and value",
    async fn(ctx) {
      const client = await ctx.client();
      const name = ctx.name;
      const cases: [() => unknown, ErrorConstructor, RegExp][] = [
        [() => new Lock(client, 5 as never), TypeError, /'name'.*5/],
        [() => new Lock(client, ""), TypeError, /'name'.*""/],
        [
          () => new Lock(client, name, { expire: 0 }),
          RangeError,
          /'expire'.*0/,
        ],
        [
          () => new Lock(client, name, { expire: -1 }),
          RangeError,
          /'expire'.*-1/,
        ],
        [
          () => new Lock(client, name, { expire: 1.5 }),
          RangeError,
          /'expire'.*1\.5/,
        ],
        [
          () => new Lock(client, name, { expire: NaN }),
          RangeError,
          /'expire'.*NaN/,
        ],
        [
          () => new Lock(client, name, { expire: "10" as never }),
          TypeError,
          /'expire'.*"10"/,
        ],
        [() => new Lock(client, name, { id: 5 as never }), TypeError, /'id'/],
        [() => new Lock(client, name, { id: "" }), TypeError, /'id'/],
        [
          () => new Lock(client, name, { autoRenewal: true }),
          TypeError,
          /'autoRenewal'.*'expire'/,
        ],
        [
          () => new Lock(client, name, { autoRenewal: "yes" as never }),
          TypeError,
          /'autoRenewal'.*"yes"/,
        ],
        [
          () => new Lock(client, name, { signalExpire: 0 }),
          RangeError,
          /'signalExpire'.*0/,
        ],
        [
          () => new Lock(client, name, 7 as never),
          TypeError,
          /'options'.*7/,
        ],
        [() => new Lock(null as never, name), TypeError, /'client'.*null/],
        [() => new Lock({} as never, name), TypeError, /'client'/],
      ];
      for (const [create, type, message] of cases) {
        assert.throws(create, (error: Error) => {
          assert.ok(error instanceof type, `${error} is a ${type.name}`);
          assert.match(error.message, message);
          assert.match(error.message, /^Cannot .* current value is /);
          return true;
        });
      }
      const lock = new Lock(client, name);
      const rejections: [() => Promise<unknown>, ErrorConstructor, RegExp][] = [
        [
          () => lock.acquire({ blocking: false, timeout: 1 }),
          TypeError,
          /'timeout'.*'blocking: false'/,
        ],
        [() => lock.acquire({ timeout: -1 }), RangeError, /'timeout'.*-1/],
        [() => lock.acquire({ timeout: NaN }), RangeError, /'timeout'.*NaN/],
        [
          () => lock.acquire({ timeout: "1" as never }),
          TypeError,
          /'timeout'.*"1"/,
        ],
        [
          () => lock.acquire({ blocking: 1 as never }),
          TypeError,
          /'blocking'.*1/,
        ],
        [
          () => lock.acquire({ signal: {} as never }),
          TypeError,
          /'signal'/,
        ],
        [() => lock.extend(-1), RangeError, /'expire'.*-1/],
        [() => lock.extend(0), RangeError, /'expire'.*0/],
        [() => lock.extend("5" as never), TypeError, /'expire'.*"5"/],
        [
          () => acquire(client, name, { expire: -5 }),
          RangeError,
          /'expire'.*-5/,
        ],
        [
          () => resetAll(client, { signalExpire: -1 }),
          RangeError,
          /'signalExpire'.*-1/,
        ],
      ];
      for (const [call, type, message] of rejections) {
        let promise: Promise<unknown> | undefined;
        assert.doesNotThrow(() => {
          promise = call();
        }, "async methods reject rather than throw");
        await assert.rejects(promise!, (error: Error) => {
          assert.ok(error instanceof type, `${error} is a ${type.name}`);
          assert.match(error.message, message);
          return true;
        });
      }
      assert.equal(await ctx.raw("EXISTS", `lock:${name}`), 0);
    },
  },
];
