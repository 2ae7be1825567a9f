/**
 * Redlock over five local masters: the algorithm, masters that fail, pause
 * or restart empty, fencing, waiting, and errors that say what happened.
 */

import assert from "node:assert/strict";
import { Redis } from "ioredis";
import {
  acquire,
  LockError,
  LockLostError,
  NotAcquiredError,
  Redlock,
  RedlockLock,
  shutdown,
} from "../mod.ts";
import { close, delay } from "./_bed.ts";
import { RedisServer } from "./_server.ts";
import { RespClient } from "./_resp.ts";
import { R_RELEASE } from "../src/scripts.ts";

/** Five masters, a client on each, and a Redlock over them. */
interface Masters extends AsyncDisposable {
  readonly servers: RedisServer[];
  readonly clients: Redis[];
  readonly redlock: Redlock;
  /** Another Redlock over the same masters, on clients of its own. */
  other(options?: ConstructorParameters<typeof Redlock>[1]): Promise<Redlock>;
  /** `GET lock:<name>` on every master (null where down). */
  values(name: string): Promise<(string | null)[]>;
}

async function connect(server: RedisServer): Promise<Redis> {
  const client = new Redis(server.port, server.hostname, {
    maxRetriesPerRequest: 0,
    retryStrategy: () => 50,
  });
  client.on("error", () => {});
  await new Promise((resolve) => client.once("ready", resolve));
  return client;
}

async function masters(
  count = 5,
  options?: ConstructorParameters<typeof Redlock>[1],
): Promise<Masters> {
  const servers = await Promise.all(
    Array.from(
      { length: count },
      () => RedisServer.start({ args: ["--enable-debug-command", "yes"] }),
    ),
  );
  const clients: Redis[] = [];
  const open = async () => {
    const set = await Promise.all(servers.map(connect));
    clients.push(...set);
    return set;
  };
  const mine = await open();
  // New masters held no lock before: they need not abstain after starting.
  for (const client of mine) await client.set("lock-start", "0");
  return {
    servers,
    clients: mine,
    redlock: new Redlock(mine, options),
    async other(options) {
      return new Redlock(await open(), options);
    },
    values: (name) =>
      Promise.all(
        mine.map((client, i) =>
          servers[i].running
            ? client.get(`lock:${name}`).catch(() => null)
            : Promise.resolve(null)
        ),
      ),
    async [Symbol.asyncDispose]() {
      for (const server of servers) if (!server.running) await server.restart();
      for (const client of clients) {
        await shutdown(client);
        await close(client);
      }
      for (const server of servers) await server[Symbol.asyncDispose]();
    },
  };
}

Deno.test("Redlock: acquire, extend and release on every master, with a token", async () => {
  await using env = await masters();
  // autoRenewal with the default expire
  await (await acquire(env.redlock, "renewed", { autoRenewal: true }))
    .release();
  const lock = env.redlock.lock("basic", { expire: 5_000 });
  assert.equal(await lock.acquire({ blocking: false }), true);
  assert.deepEqual(await env.values("basic"), Array(5).fill(lock.id));
  assert.equal(await lock.locked(), true);
  assert.equal(await lock.ownerId(), lock.id);
  const ttl = await env.clients[0].pttl("lock:basic");
  assert.ok(ttl > 4_000 && ttl <= 5_000, `pttl ${ttl}`);
  await lock.extend(20_000);
  assert.ok(await env.clients[3].pttl("lock:basic") > 15_000);
  const first = lock.token;
  const { signal } = lock;
  await lock.release();
  assert.ok(signal.aborted && !(signal.reason instanceof LockLostError));
  assert.deepEqual(await env.values("basic"), Array(5).fill(null));
  assert.equal(await lock.ownerId(), null);
  await assert.rejects(lock.release(), NotAcquiredError);
  {
    await using again = await acquire(env.redlock, "basic");
    assert.ok(again.token > first, `${again.token} > ${first}`);
  }
  assert.deepEqual(await env.values("basic"), Array(5).fill(null));
});

Deno.test("Redlock: a busy lock is refused, or waited for and taken at its release", async () => {
  await using env = await masters();
  const holder = await acquire(env.redlock, "busy", { expire: 30_000 });
  const other = await env.other();
  await assert.rejects(
    acquire(other, "busy", { blocking: false }),
    (error: Error) => {
      assert.ok(error instanceof NotAcquiredError);
      assert.ok(
        error.message.includes(`'${holder.id}' on 5 of 5`),
        error.message,
      );
      return true;
    },
  );
  const lock = other.lock("busy");
  assert.equal(await lock.acquire({ blocking: false }), false);
  assert.equal(await lock.acquire({ timeout: 300 }), false);
  assert.deepEqual(await env.values("busy"), Array(5).fill(holder.id));
  const waiting = lock.acquire({ timeout: 10_000 });
  await delay(300);
  const released = performance.now();
  await holder.release();
  assert.equal(await waiting, true);
  // Woken by the release's wake-up, not by a retry a second later.
  const waited = performance.now() - released;
  assert.ok(waited < 500, `acquired ${waited} ms after the release`);
  await lock.release();
});

Deno.test("Redlock: shutdown() of a master's client ends a waiting acquire, leaving nothing", async () => {
  await using env = await masters();
  const holder = await acquire(env.redlock, "ended", { expire: 30_000 });
  const clients = await Promise.all(env.servers.map(connect));
  try {
    const waiting = new Redlock(clients).lock("ended").acquire({
      timeout: 20_000,
    });
    // Handled from the start: it may reject while shutdown() is on its way.
    const rejected = assert.rejects(
      waiting,
      (error: Error) =>
        error instanceof LockError && /shut down/.test(error.message),
    );
    await delay(300);
    const started = performance.now();
    await shutdown(clients[2]);
    await rejected;
    assert.ok(performance.now() - started < 1_000);
    assert.deepEqual(await env.values("ended"), Array(5).fill(holder.id));
    await holder.release();
    assert.deepEqual(await env.values("ended"), Array(5).fill(null));
  } finally {
    for (const client of clients) {
      await shutdown(client);
      await close(client);
    }
  }
});

Deno.test("Redlock: a waiter takes the lock when the holder's expiry passes", async () => {
  await using env = await masters();
  await env.redlock.lock("expiring", { expire: 400 }).acquire(); // never released
  const other = await env.other();
  const started = performance.now();
  await using _lock = await acquire(other, "expiring", { timeout: 5_000 });
  const waited = performance.now() - started;
  assert.ok(waited < 1_000, `acquired after ${waited} ms`);
});

Deno.test("Redlock: with two masters killed the lock stays valid, extends and releases", async () => {
  await using env = await masters();
  const lock = env.redlock.lock("two-down", { expire: 3_000 });
  await lock.acquire();
  const { signal } = lock;
  await env.servers[0].kill();
  await env.servers[3].kill();
  await lock.extend(10_000);
  await delay(3_200); // past the first expiry: the extension held
  assert.equal(signal.aborted, false);
  await lock.release();
  assert.deepEqual(await env.values("two-down"), Array(5).fill(null));
});

Deno.test("Redlock: with three of five masters down an acquire fails clearly and leaves nothing", async () => {
  await using env = await masters();
  for (const i of [1, 2, 4]) await env.servers[i].kill();
  const lock = env.redlock.lock("three-down");
  for (const options of [{ blocking: false }, { timeout: 300 }]) {
    await assert.rejects(lock.acquire(options), (error: Error) => {
      assert.ok(error instanceof LockError, String(error));
      assert.match(error.message, /3 of 5 masters failed \(#1, #2, #4\)/);
      assert.ok(error.cause instanceof AggregateError);
      assert.equal((error.cause as AggregateError).errors.length, 3);
      return true;
    });
  }
  assert.deepEqual(await env.values("three-down"), Array(5).fill(null));
});

Deno.test("Redlock: a paused master does not hold an acquisition up", async () => {
  await using env = await masters(5, { masterTimeout: 50 });
  await (await acquire(env.redlock, "warm")).release(); // scripts loaded
  const raw = await RespClient.connect(env.servers[2].port);
  const sleeping = raw.command("DEBUG", "SLEEP", "1.5");
  await delay(50);
  const other = await env.other({ masterTimeout: 50 });
  const started = performance.now();
  const lock = other.lock("paused");
  assert.equal(await lock.acquire({ blocking: false }), true);
  const took = performance.now() - started;
  assert.ok(took < 500, `took ${took} ms`);
  await lock.release();
  await sleeping;
  await raw.close();
  // The paused master ran the acquire late: the release removed it too.
  await delay(100);
  assert.deepEqual(await env.values("paused"), Array(5).fill(null));
});

Deno.test("Redlock: a release that no master answers in time is a LockError, not NotAcquired", async () => {
  await using env = await masters(3, { masterTimeout: 50 });
  const lock = env.redlock.lock("unanswered", { expire: 10_000 });
  await lock.acquire();
  const raws = await Promise.all(
    env.servers.map((server) => RespClient.connect(server.port)),
  );
  const sleeping = raws.map((raw) => raw.command("DEBUG", "SLEEP", "0.5"));
  await delay(50);
  await assert.rejects(
    lock.release(),
    (error: Error) =>
      error instanceof LockError && !(error instanceof NotAcquiredError) &&
      /3 of 3 masters failed/.test(error.message) &&
      error.cause instanceof AggregateError,
  );
  await Promise.all(sleeping);
  for (const raw of raws) await raw.close();
  // The let-go ran late on every master: nothing stays.
  await delay(100);
  assert.deepEqual(await env.values("unanswered"), Array(3).fill(null));
});

Deno.test("Redlock: masters that restarted empty abstain for the lock's expiry", async () => {
  await using env = await masters(5, { maxExpire: 1_500 });
  const holder = env.redlock.lock("restarts", { expire: 1_500 });
  await holder.acquire();
  // A majority restarts empty: without abstaining, they would grant the
  // lock to another while the holder still believes in it.
  for (const i of [0, 1, 2]) await env.servers[i].restart();
  const other = await env.other({ maxExpire: 1_500 });
  const lock = other.lock("restarts", { expire: 1_500 });
  assert.equal(await lock.acquire({ blocking: false }), false);
  assert.equal(holder.signal.aborted, false);
  // Once the expiry has passed since the restart, they grant it again.
  assert.equal(await lock.acquire({ timeout: 5_000 }), true);
  assert.ok(holder.signal.aborted, "the old holding's validity ended");
  await lock.release();
});

Deno.test("Redlock: tokens strictly increase while a minority of masters restarts empty", async () => {
  await using env = await masters(5, { maxExpire: 200 });
  let last = 0;
  for (let round = 0; round < 12; round++) {
    const lock = env.redlock.lock("tokens", { expire: 200 });
    assert.equal(await lock.acquire({ timeout: 5_000 }), true);
    assert.ok(lock.token > last, `round ${round}: ${lock.token} > ${last}`);
    last = lock.token;
    await lock.release();
    if (round % 3 === 2) {
      for (const i of [round % 5, (round + 2) % 5]) {
        await env.servers[i].restart();
      }
    }
  }
});

Deno.test("Redlock: a token is raised on its quorum, so a later quorum without its master draws higher", async () => {
  await using env = await masters();
  // Master 0's counter runs far ahead of the others' clocks.
  const ahead = 9_000_000_000_000_000;
  await env.clients[0].set("lock-fence", `1:${ahead}`);
  const first = env.redlock.lock("raised");
  await first.acquire();
  assert.ok(first.token > ahead);
  await first.release();
  await env.servers[0].kill();
  const second = env.redlock.lock("raised");
  await second.acquire();
  assert.ok(second.token > first.token, `${second.token} > ${first.token}`);
  await second.release();
});

Deno.test("Redlock: holders across clients never overlap while masters restart", async () => {
  await using env = await masters();
  const redlocks = [env.redlock, await env.other(), await env.other()];
  const holdings: { from: number; to: number; told: number }[] = [];
  let stop = false;
  const worker = async (redlock: Redlock) => {
    while (!stop) {
      const lock = redlock.lock("exclusive", { expire: 600 });
      let got = false;
      try {
        got = await lock.acquire({ timeout: 1_000 });
      } catch {
        continue; // too many masters down for a moment
      }
      if (!got) continue;
      const from = performance.now();
      let told = Infinity;
      lock.signal.addEventListener("abort", () => told = performance.now());
      await delay(20 + Math.random() * 30);
      const to = performance.now();
      await lock.release().catch(() => {});
      holdings.push({ from, to: Math.min(to, told), told });
    }
  };
  const workers = redlocks.map(worker);
  for (let round = 0; round < 6; round++) {
    await delay(250);
    await env.servers[round % 5].restart();
  }
  await delay(500);
  stop = true;
  await Promise.all(workers);
  holdings.sort((a, b) => a.from - b.from);
  assert.ok(holdings.length >= 10, `${holdings.length} holdings`);
  for (let i = 1; i < holdings.length; i++) {
    assert.ok(
      holdings[i].from >= holdings[i - 1].to,
      `holding ${i} began ${
        holdings[i - 1].to - holdings[i].from
      } ms before the previous one ended`,
    );
  }
});

Deno.test("Redlock: a failed attempt lets go without waking its own waiter: no spinning", async () => {
  await using env = await masters();
  // Another holds three masters; two are free: every attempt gets those two,
  // fails, and lets go.
  for (const client of env.clients.slice(0, 3)) {
    await client.set("lock:split", "someone", "PX", 10_000);
  }
  for (const client of env.clients) await client.config("RESETSTAT");
  const lock = env.redlock.lock("split");
  assert.equal(await lock.acquire({ timeout: 1_500 }), false);
  const stats = String(await env.clients[4].info("commandstats"));
  const calls = [...stats.matchAll(/cmdstat_eval(?:sha)?:calls=(\d+)/g)]
    .reduce((sum, [, n]) => sum + Number(n), 0);
  assert.ok(calls < 20, `${calls} scripts on a free master in 1.5 s`);
  assert.deepEqual((await env.values("split")).slice(3), [null, null]);
});

Deno.test("Redlock: a master that restarted abstains for maxExpire, whatever the newcomer's expire", async () => {
  await using env = await masters(3, { maxExpire: 30_000 });
  // The holder got masters 0 and 1 only (master 2 was away).
  const holder = env.redlock.lock("long", { expire: 30_000 });
  await env.servers[2].kill();
  assert.equal(await holder.acquire({ blocking: false }), true);
  await env.servers[2].restart();
  await env.clients[2].set("lock-start", "0"); // it never held this lock
  await env.servers[1].restart(); // a minority loses its data
  await delay(1_500);
  const other = await env.other({ maxExpire: 30_000 });
  const lock = other.lock("long", { expire: 1_000 });
  assert.equal(await lock.acquire({ blocking: false }), false);
  assert.equal(holder.signal.aborted, false);
  assert.throws(() => other.lock("x", { expire: 30_001 }), RangeError);
  await assert.rejects(holder.extend(30_001), RangeError);
  await holder.release();
});

Deno.test("Redlock: a master that answers NOSCRIPT after its timeout gets no script after the let-go", async () => {
  await using env = await masters(5, { masterTimeout: 50 });
  for (const client of env.clients.slice(0, 2)) {
    await client.set("lock:late", "someone", "PX", 10_000);
  }
  // Master 2 knows the release script but not the acquire one, and is
  // about to be slow.
  await env.clients[2].call("SCRIPT", "FLUSH");
  await env.clients[2].call("SCRIPT", "LOAD", R_RELEASE);
  const raw = await RespClient.connect(env.servers[2].port);
  const sleeping = raw.command("DEBUG", "SLEEP", "0.3");
  await delay(20);
  const lock = env.redlock.lock("late");
  assert.equal(await lock.acquire({ blocking: false }), false);
  await sleeping;
  await raw.close();
  await delay(200);
  assert.deepEqual(await env.values("late"), [
    "someone",
    "someone",
    null,
    null,
    null,
  ]);
});

Deno.test("Redlock: bad input is refused with nothing sent", async () => {
  await using env = await masters(3);
  const before = await Promise.all(
    env.clients.map(async (c) => String(await c.info("stats"))),
  );
  assert.throws(() => new Redlock([]), TypeError);
  assert.throws(
    () => new Redlock([env.clients[0], 42 as never]),
    /'clients\[1\]'/,
  );
  assert.throws(() => new Redlock("x" as never), TypeError);
  assert.throws(
    () => new Redlock([env.clients[0], env.clients[0]]),
    /distinct/,
  );
  assert.throws(
    () => new Redlock(env.clients, { masterTimeout: 0 }),
    RangeError,
  );
  assert.throws(
    () => new Redlock(env.clients, { retryDelay: "1" as never }),
    TypeError,
  );
  assert.throws(() => env.redlock.lock("x", { fair: true } as never), /fair/);
  assert.throws(() => env.redlock.lock("x", { expire: -1 }), RangeError);
  assert.throws(() => new RedlockLock({} as never, "x"), /redlock/);
  await assert.rejects(
    acquire(env.redlock, "x", { transport: "poll" } as never),
    TypeError,
  );
  const after = await Promise.all(
    env.clients.map(async (c) => String(await c.info("stats"))),
  );
  const processed = (info: string) =>
    Number(/total_commands_processed:(\d+)/.exec(info)![1]);
  // Only the INFO calls themselves (one each, and this one).
  assert.deepEqual(
    after.map(processed),
    before.map((info) => processed(info) + 1),
  );
});
