/**
 * The waiting engine: bounded connections however many waiters, one queue
 * entry per process and name, first come first served within a process,
 * exactly one waiter woken per release, the hand-over's short expiry and
 * its claim, and recovery from a waiter that died while queued.
 */

import assert from "node:assert/strict";
import type { Redis } from "ioredis";
import {
  acquire,
  Lock,
  type LockOptions,
  NotAcquiredError,
  shutdown,
} from "../mod.ts";
import { bed, clientIds, eventually } from "./_bed.ts";
import { DbRedisShape, RespClient } from "./_resp.ts";
import { ACQUIRE, TRY } from "../src/scripts.ts";
import { HolderTurns, holderTurnsOf } from "../src/_holder_turns.ts";
import { toConnection } from "../src/clients.ts";
import { ALIVE_PREFIX, HOLDER_TURNS } from "../src/keys.ts";
import { delay, queued } from "./_scenarios.ts";
import { denoScript } from "./_deno.ts";

async function connectedClients(raw: RespClient): Promise<number> {
  const info = String(await raw.command("INFO", "clients"));
  return Number(/connected_clients:(\d+)/.exec(info)![1]);
}

Deno.test("1,000 waiters on 100 names in one process use at most 4 connections", async () => {
  await using env = await bed();
  const holderClient = await env.client();
  const waiterClient = await env.client();
  const names = Array.from({ length: 100 }, (_, i) => `many:${i}`);
  const holders = await Promise.all(
    names.map((name) => acquire(holderClient, name)),
  );
  // The raw connection and the two clients' own.
  const before = await connectedClients(env.raw);

  const order = new Map<string, number[]>(names.map((name) => [name, []]));
  const waits = [];
  for (let i = 0; i < 10; i++) {
    for (const name of names) {
      const lock = new Lock(waiterClient, name);
      waits.push(
        lock.acquire({ timeout: 60_000 }).then(async (acquired) => {
          order.get(name)!.push(i);
          await lock.release();
          return acquired;
        }),
      );
    }
  }
  for (const name of names) await queued({ raw: env.command }, name);
  for (const name of names) {
    assert.equal(
      await env.raw.command("LLEN", `lock-queue:${name}`),
      1,
      "one entry per process and name: the head's",
    );
  }
  const during = await connectedClients(env.raw);
  assert.ok(
    during - before + 1 <= 4,
    `the waiting client uses ${during - before + 1} connections`,
  );

  for (const holder of holders) await holder.release();
  assert.ok((await Promise.all(waits)).every(Boolean));
  for (const name of names) {
    assert.deepEqual(
      order.get(name),
      [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
      "served first come, first served",
    );
  }
});

Deno.test("a release wakes exactly one local waiter, the first", async () => {
  await using env = await bed();
  const holder = await acquire(await env.client(), "one");
  const client = await env.client();
  const locks = [0, 1, 2].map(() => new Lock(client, "one"));
  const settled: number[] = [];
  const waits = locks.map((lock, i) =>
    lock.acquire().then(() => settled.push(i))
  );
  await queued({ raw: env.command }, "one");
  await holder.release();
  await waits[0];
  await delay(200);
  assert.deepEqual(settled, [0], "only the first was woken");
  await locks[0].release();
  await waits[1];
  await delay(200);
  assert.deepEqual(settled, [0, 1]);
  await locks[1].release();
  await waits[2];
  await locks[2].release();
});

Deno.test("a hand-over sets a short expiry that the new holder lengthens to its own at once", async () => {
  await using env = await bed();
  for (const expire of [30_000, undefined]) {
    const holder = await acquire(await env.client(), "claim");
    const waiter = new Lock(await env.client(), "claim", { expire });
    const waiting = waiter.acquire();
    await queued({ raw: env.command }, "claim");
    await holder.release();
    assert.equal(await waiting, true);
    const deadline = Date.now() + 2_000;
    let pttl: number;
    do {
      pttl = await env.raw.command("PTTL", "lock:claim") as number;
      if (expire === undefined ? pttl === -1 : pttl > 25_000) break;
      await delay(5);
    } while (Date.now() < deadline);
    if (expire === undefined) assert.equal(pttl, -1, "now never expires");
    else assert.ok(pttl > 25_000, `claimed its own expiry: ${pttl} ms`);
    await waiter.release();
  }
});

/** Calls of each command since the last `CONFIG RESETSTAT`. */
async function commandCalls(raw: RespClient): Promise<Map<string, number>> {
  const info = String(await raw.command("INFO", "commandstats"));
  return new Map(
    [...info.matchAll(/cmdstat_(\S+?):calls=(\d+)/g)].map((
      [, command, calls],
    ) => [command, Number(calls)]),
  );
}

Deno.test("a release hands the lock to a waiter of its own process in its reply: no wake-up, no claim", async () => {
  await using env = await bed();
  const client = await env.client();
  // The first release with a waiter queued gives racers (python's waiters)
  // their turn; the ones measured come after it.
  let first = true;
  for (const expire of [30_000, 30_000, undefined]) {
    const holder = await acquire(client, "here", { expire });
    const waiter = new Lock(client, "here", { expire });
    const waiting = waiter.acquire();
    await queued({ raw: env.command }, "here");
    await env.raw.command("CONFIG", "RESETSTAT");
    await holder.release();
    assert.equal(await waiting, true);
    await delay(100);
    if (first) {
      first = false;
      await waiter.release();
      continue;
    }
    const calls = await commandCalls(env.raw);
    // No wake list pushed, no expiry set after: the release's own script
    // set the holder's expiry.
    assert.equal(calls.get("lpush") ?? 0, 0, "no wake-up pushed");
    // (A tick's look at the queue, if one fell in, refreshes the queue's
    // expiry after an LPOS; a claim sets the lock's without.)
    assert.ok(
      (calls.get("pexpire") ?? 0) <= (calls.get("lpos") ?? 0),
      "no claim of its expiry",
    );
    const pttl = await env.raw.command("PTTL", "lock:here") as number;
    if (expire === undefined) assert.equal(pttl, -1);
    else assert.ok(pttl > 25_000, `its own expiry: ${pttl} ms`);
    assert.ok(waiter.token > holder.token);
    await waiter.release();
  }
});

Deno.test("a hand-over draws a token above the counter's, also when the counter is ahead of the clock or of another epoch", async () => {
  await using env = await bed();
  const options = { expire: 30_000 };
  const holderClient = await env.client();
  const waiterClient = await env.client();
  await (await acquire(holderClient, "ahead", options)).release(); // epoch known
  const fence = String(await env.raw.command("GET", "lock-fence"));
  const epoch = fence.split(":")[0];
  const ahead = Date.now() * 1000 + 3_600_000_000; // an hour ahead, in µs
  for (const planted of [`${epoch}:${ahead}`, `1:${ahead + 1_000}`]) {
    const holder = await acquire(holderClient, "ahead", options);
    const waiter = new Lock(waiterClient, "ahead", options);
    const waiting = waiter.acquire({ timeout: 10_000 });
    await queued({ raw: env.command }, "ahead");
    await env.raw.command("SET", "lock-fence", planted);
    await holder.release();
    assert.equal(await waiting, true);
    // Above the counter, and exactly the token drawn (the counter's last;
    // a look at the lock that came first claims it anew, with a later one).
    const [plantedEpoch, last] = planted.split(":");
    assert.ok(waiter.token > Number(last), `${waiter.token} after ${planted}`);
    assert.equal(
      await env.raw.command("GET", "lock-fence"),
      `${plantedEpoch}:${waiter.token}`,
    );
    await waiter.release().catch(() => {}); // another epoch: told it is lost
  }
});

/**
 * `processes` processes (two by default) loop on a lock, each holding
 * `hold` ms, till they made `loops` acquisitions each on average: how often
 * the lock passes from one to another, per acquisition, and the most
 * acquisitions in a row of one process once all loop; the tokens increase.
 */
async function loopTogether(
  turns: boolean,
  { hold = 0, loops = 300, processes = 2 } = {},
): Promise<{ switches: number; longest: number }> {
  await using env = await bed();
  const locks: Lock[] = [];
  for (let i = 0; i < processes; i++) {
    locks.push(
      new Lock(await env.client(), "turns", { expire: 30_000, turns }),
    );
  }
  const order: { who: number; token: number }[] = [];
  await Promise.all(locks.map(async (lock, who) => {
    while (order.length < processes * loops) {
      assert.equal(await lock.acquire({ timeout: 10_000 }), true);
      order.push({ who, token: lock.token });
      if (hold > 0) await delay(hold);
      await lock.release();
    }
  }));
  const runs = [1];
  for (let i = 1; i < order.length; i++) {
    assert.ok(order[i].token > order[i - 1].token, "tokens increase");
    if (order[i].who !== order[i - 1].who) runs.push(1);
    else runs[runs.length - 1]++;
  }
  // Not the first run (a holding that took the lock before the others
  // queued does not loop, so the next may start a tenure of its own) nor
  // the last (the others are done).
  return {
    switches: (runs.length - 1) / order.length,
    longest: Math.max(1, ...runs.slice(1, -1)),
  };
}

Deno.test("holders that loop take turns: the lock changes process a few times, not at every acquisition", async () => {
  // Each tenure spans several acquisitions of one process.
  const withTurns = (await loopTogether(true)).switches;
  // Without turns, a release hands the lock to the other process, queued.
  const strict = (await loopTogether(false)).switches;
  console.log(
    `changes of hands per acquisition: ${withTurns} (turns), ${strict} (strict)`,
  );
  assert.ok(strict > 0.5, `strict order changes hands at ${strict}`);
  assert.ok(
    withTurns < strict / 2,
    `turns change hands at ${withTurns}, strict order at ${strict}`,
  );
});

Deno.test("a tenure ends after HOLDER_TURNS turns, and holdings longer than HOLDER_TURN give none", async () => {
  // 0 ms holds: within HOLDER_TENURE (20 ms) a process loops a hundred
  // times or more; its share is cut at the count. (Three processes: with
  // two, one that ends its tenure may find the lock free again, before the
  // other queues, and start a new one.)
  const { longest } = await loopTogether(true, { loops: 400, processes: 3 });
  assert.ok(longest <= HOLDER_TURNS + 1, `${longest} in a row`);
  // Holdings of 8 ms fit twice in a tenure, but give no turn.
  const held = await loopTogether(true, { hold: 8, loops: 15 });
  assert.equal(held.longest, 1, `${held.longest} in a row with 8 ms holds`);
});

/**
 * `looper` acquires right after a release of its own (a loop), `waiter`
 * queues, and `looper` releases: a release that may give a holder's turn.
 * Resolves then, with the waiter's acquire on its way.
 */
async function releaseWithWaiter(
  env: { command(...args: (string | number)[]): Promise<unknown> },
  looper: Lock,
  waiter: Lock,
): Promise<{ waiting: Promise<boolean> }> {
  await looper.acquire();
  await looper.release();
  await looper.acquire();
  const waiting = waiter.acquire({ timeout: 10_000 });
  await queued({ raw: env.command }, waiter.name);
  await looper.release();
  return { waiting };
}

Deno.test("a holder's turn that no acquire takes goes to the next in line at once", async () => {
  await using env = await bed();
  const looper = new Lock(await env.client(), "unused", { expire: 30_000 });
  const waiter = new Lock(await env.client(), "unused", { expire: 30_000 });
  for (let attempt = 0; attempt < 20; attempt++) {
    const { waiting } = await releaseWithWaiter(env, looper, waiter);
    const value = await env.raw.command("GET", "lock:unused");
    const releasedAt = performance.now();
    assert.equal(await waiting, true);
    const waited = performance.now() - releasedAt;
    await waiter.release();
    // The tenure may have run out under load: then there was no turn.
    if (!String(value).startsWith("turn:")) continue;
    // Without the end of the turn, the mark would keep it TURN_LEASE ms.
    assert.ok(waited < 200, `handed on after ${waited} ms`);
    return;
  }
  assert.fail("no release gave a holder's turn");
});

Deno.test("a holder's turn not taken goes to the next in line even when the application blocks its client", async () => {
  // A job loop that shares its client: `await lock.release()`, then a
  // blocking command of its own. The end of the turn must not wait behind it.
  await using env = await bed();
  const client = await env.client();
  const looper = new Lock(client, "blocked", { expire: 30_000 });
  const waiter = new Lock(await env.client(), "blocked", { expire: 30_000 });
  const turns = holderTurnsOf(toConnection(client));
  for (let attempt = 0; attempt < 20; attempt++) {
    const { waiting } = await releaseWithWaiter(env, looper, waiter);
    const turn = turns.has("blocked");
    console.log(
      "value",
      await env.command("GET", "lock:blocked"),
      turns.has("blocked"),
    );
    const releasedAt = performance.now();
    // Shorter than the waiting connections' idle spell, so that every
    // attempt finds them open.
    const blocked = client.blpop("nothing", 0.5);
    assert.equal(await waiting, true);
    const waited = performance.now() - releasedAt;
    await waiter.release();
    await blocked;
    console.log(turn, waited, await env.command("GET", "lock:blocked"));
    // The tenure may have run out under load: then there was no turn.
    if (!turn) continue;
    // Behind the BLPOP, the end would wait its 500 ms.
    assert.ok(waited < 250, `handed on after ${waited} ms`);
    // The library's connections close by themselves, the one that ended
    // the turn too: the bed's and the two applications' stay.
    await eventually(
      async () => (await clientIds(env.raw)).length === 3,
      "the library's connections close when idle",
    );
    return;
  }
  assert.fail("no release gave a holder's turn");
});

Deno.test("a holder's turn not taken is ended on the application's connection when the library cannot open its own", async () => {
  await using env = await bed();
  const app = new NoDuplicate(await RespClient.connect(env.server.port));
  try {
    const looper = new Lock(app, "no-own", { expire: 30_000 });
    const waiter = new Lock(await env.client(), "no-own", { expire: 30_000 });
    const turns = holderTurnsOf(toConnection(app));
    // Several turns: an end must not wait out the backoff between tries to
    // open a connection (25 ms doubling to 1 s).
    let ended = 0;
    for (let attempt = 0; attempt < 100 && ended < 8; attempt++) {
      const { waiting } = await releaseWithWaiter(env, looper, waiter);
      const turn = turns.has("no-own");
      const releasedAt = performance.now();
      assert.equal(await waiting, true);
      const waited = performance.now() - releasedAt;
      await waiter.release();
      if (!turn) continue;
      ended++;
      // Else the mark would keep the lock for its 30 s.
      assert.ok(waited < 250, `turn ${ended} handed on after ${waited} ms`);
    }
    assert.equal(ended, 8, "releases gave holders' turns");
    assert.ok(app.refused > 0, "the own connection was tried");
  } finally {
    await shutdown(app);
    await app.close();
  }
});

/** A `{ send }` client whose `duplicate()` is refused, as by a full server. */
class NoDuplicate {
  refused = 0;
  readonly #client: RespClient;

  constructor(client: RespClient) {
    this.#client = client;
  }

  send(command: string, args: string[]): Promise<unknown> {
    return this.#client.send(command, args);
  }

  duplicate(): Promise<NoDuplicate> {
    this.refused++;
    return Promise.reject(new Error("ERR max number of clients reached"));
  }

  close(): Promise<void> {
    return this.#client.close();
  }
}

Deno.test("holders' turns share one timer: a turn given while it is set ends at a later sweep, not that one", async () => {
  const turns = new HolderTurns();
  const ended: string[] = [];
  const give = (name: string) =>
    turns.given(name, turns.nextMark(), 0, () => {
      ended.push(name);
      return Promise.resolve();
    });
  const tick = () => new Promise((resolve) => setTimeout(resolve, 0));
  give("first"); // sets the timer
  give("second"); // after it: has its own 0 ms before it ends
  const afterSweep = tick(); // set after the timer: runs after it
  turns.take("first");
  await afterSweep;
  assert.deepEqual(ended, []);
  assert.ok(turns.has("second"));
  await tick();
  await tick();
  assert.deepEqual(ended, ["second"]);
  assert.equal(turns.has("second"), false);
  await turns.endAll();
});

/** Runs ACQUIRE with no entry, or TRY, as a try of a `Lock` sends them. */
function tryWith(
  env: { raw: RespClient },
  script: "ACQUIRE" | "TRY",
  name: string,
  [id, expire, known, mark]: string[],
): Promise<unknown> {
  const [lock, fence] = [`lock:${name}`, "lock-fence"];
  return script === "ACQUIRE"
    ? env.raw.command(
      "EVAL",
      ACQUIRE,
      "5",
      ...[lock, `lock-signal:${name}`, `lock-queue:${name}`, fence],
      ...[`lock-turn:${name}`, id, expire, "", known, mark],
    )
    : env.raw.command("EVAL", TRY, "2", lock, fence, id, expire, known, mark);
}

Deno.test("ACQUIRE and TRY that take a turn and meet lost lock data put the turn's mark back", async () => {
  await using env = await bed();
  for (const script of ["ACQUIRE", "TRY"] as const) {
    // A counter of a new epoch, as after a restart that lost the data.
    await env.raw.command("SET", "lock-fence", "2000000000000000:1");
    await env.raw.command("SET", "lock:epoch", "turn:abc", "PX", "250");
    const reply = await tryWith(env, script, "epoch", [
      ...["holder-id", "30000", "1000000000000000", "turn:abc"],
    ]) as unknown[];
    assert.equal(reply[0], 3, script);
    // The caller ends the turn from its mark (RESET), which hands it on.
    assert.equal(await env.raw.command("GET", "lock:epoch"), "turn:abc");
  }
});

Deno.test("TRY replies and sets the keys as ACQUIRE with no entry, in every state a try meets", async () => {
  await using env = await bed();
  const epoch = "1000000000000000";
  const clock = () => env.raw.command("TIME") as Promise<string[]>;
  const [seconds] = await clock();
  const ahead = `${epoch}:${Number(seconds) * 1e6 + 3_600e6}`;
  // [the lock's value (with an expiry), the counter, the try's arguments]
  const states: [string | null, string | null, string[]][] = [
    [null, `${epoch}:1`, ["me", "30000", epoch, ""]],
    [null, `${epoch}:1`, ["me", "", epoch, ""]],
    [null, `${epoch}:1`, ["me", "30000", "", ""]],
    [null, null, ["me", "30000", "", ""]],
    [null, `${epoch}:1`, ["me", "30000", "2000000000000000", ""]],
    [null, ahead, ["me", "30000", epoch, ""]],
    ["me", `${epoch}:1`, ["me", "30000", epoch, ""]],
    ["other", `${epoch}:1`, ["me", "30000", epoch, ""]],
    ["other", `${epoch}:1`, ["me", "30000", "", ""]],
    ["other", null, ["me", "30000", "", ""]],
    ["turn:x:1", `${epoch}:1`, ["me", "30000", epoch, "turn:x:1"]],
    ["turn:x:1", `${epoch}:1`, ["me", "", epoch, "turn:x:1"]],
    ["turn:x:1", `${epoch}:1`, ["me", "30000", epoch, "turn:x:2"]],
    ["turn:x:1", `${epoch}:1`, ["me", "30000", "2000000000000000", "turn:x:1"]],
  ];
  // Tokens, ages of an epoch and the counter's epoch made now are the
  // clock, and times left run down: only their presence is compared.
  const shape = (value: unknown): unknown =>
    Array.isArray(value)
      ? value.map(shape)
      : typeof value === "number" && value > 1e9
      ? "clock"
      : typeof value === "number" && value > 10
      ? "ms"
      : typeof value === "string" && /^\d{16}(:\d+)?$/.test(value)
      ? value.startsWith(epoch) ? value.replace(/:\d+$/, ":n") : "clock"
      : value;
  for (const [index, [held, fence, args]] of states.entries()) {
    const seen: unknown[] = [];
    for (const script of ["ACQUIRE", "TRY"] as const) {
      const name = `same:${index}`;
      await env.raw.command("DEL", `lock:${name}`, "lock-fence");
      if (held !== null) {
        await env.raw.command("SET", `lock:${name}`, held, "PX", "20000");
      }
      if (fence !== null) await env.raw.command("SET", "lock-fence", fence);
      const reply = await tryWith(env, script, name, args);
      const pttl = Number(await env.raw.command("PTTL", `lock:${name}`));
      seen.push(shape([
        reply,
        await env.raw.command("GET", `lock:${name}`),
        pttl > 20_000 ? "own" : pttl > 0 ? "kept" : pttl,
        await env.raw.command("GET", "lock-fence"),
      ]));
    }
    assert.deepEqual(seen[1], seen[0], `state ${index}`);
  }
  // Nothing else was written: no queue, no signal, no turn.
  const keys = await env.raw.command("KEYS", "*") as string[];
  assert.deepEqual(
    keys.filter((key) => !/^lock:same:|^lock-fence$/.test(key)),
    [],
  );
});

/** How many scripts the server ran. */
async function scriptRuns(raw: RespClient): Promise<number> {
  const stats = String(await raw.command("INFO", "commandstats"));
  return [...stats.matchAll(/cmdstat_eval(?:sha)?:calls=(\d+)/g)]
    .reduce((sum, [, calls]) => sum + Number(calls), 0);
}

/** A waiter of another process, played by hand: its entry, queued alive. */
const OTHER = { process: "other-process", id: "other-waiter-id" };

/** Marks the other process alive, for a minute. */
async function otherAlive(env: { raw: RespClient }): Promise<void> {
  await env.raw.command(
    "SET",
    `${ALIVE_PREFIX}${OTHER.process}`,
    1,
    "PX",
    60_000,
  );
}

/** Queues the other process's waiter at the end of `name`'s queue. */
async function queueOther(env: { raw: RespClient }, name: string) {
  await env.raw.command(
    "RPUSH",
    `lock-queue:${name}`,
    `${OTHER.process}|t1||${OTHER.id}`,
  );
}

/**
 * Gives `looper`'s process a holder's turn on `looper.name`, with a waiter
 * of another process queued (played by hand, so that nothing else runs): a
 * release within the tenure of a holding that loops. Resolves once the
 * release is answered with the turn given, with how many scripts the
 * server had run before it (nothing else runs scripts); `false` when the
 * tenure ran out first (the lock went to the other waiter, and is freed again). The
 * caller takes the turn before it awaits anything: it ends at the next
 * timer.
 */
async function turnGiven(
  env: { raw: RespClient },
  looperClient: Redis,
  looper: Lock,
): Promise<{ scripts: number } | false> {
  const { raw } = env;
  await otherAlive(env);
  await looper.acquire();
  await looper.release();
  await looper.acquire();
  await queueOther(env, looper.name);
  const scripts = await scriptRuns(raw);
  await looper.release();
  if (holderTurnsOf(toConnection(looperClient)).has(looper.name)) {
    return { scripts };
  }
  await endOther(env, looper.name);
  return false;
}

/**
 * Waits for the lock to be let go to the other waiter (or left free for
 * racers: python-redis-lock's waiters get turns too), and clears the name.
 */
async function endOther(env: { raw: RespClient }, name: string) {
  await eventually(async () => {
    const owner = await env.raw.command("GET", `lock:${name}`);
    return owner === null || owner === OTHER.id;
  }, "the lock let go to the other waiter");
  for (const prefix of ["lock:", "lock-queue:", "lock-signal:", "lock-turn:"]) {
    await env.raw.command("DEL", `${prefix}${name}`);
  }
  await env.raw.command("DEL", `lock-wake:${OTHER.process}`);
}

/**
 * Runs `body` once a release of `looper` (`new Lock(client, name, options)`
 * on a new client) gave its process a holder's turn, with `scripts` the
 * server had run before that release; tries again with new clients when
 * the tenure ran out first, or `body` says `false`. Clears the name after.
 */
async function onTurn(
  env: Awaited<ReturnType<typeof bed>>,
  name: string,
  options: LockOptions,
  body: (turn: {
    client: Redis;
    looper: Lock;
    scripts: number;
  }) => Promise<boolean | void>,
): Promise<void> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const client = await env.client();
    const looper = new Lock(client, name, options);
    const given = await turnGiven(env, client, looper);
    if (!given) continue;
    const done = await body({ client, looper, scripts: given.scripts });
    await endOther(env, name);
    if (done !== false) return;
  }
  assert.fail("no release gave a holder's turn");
}

Deno.test("a holder's turn is taken with no command, under the mark, by an instance of the process with an id of its own", async () => {
  await using env = await bed();
  const options = { expire: 30_000 };
  await onTurn(env, "local", options, async ({ client, looper, scripts }) => {
    const second = new Lock(client, "local", options);
    const turns = holderTurnsOf(toConnection(client));
    assert.equal(await looper.acquire({ blocking: false }), true);
    // No script ran but the release.
    assert.equal(await scriptRuns(env.raw), scripts + 1);
    const firstToken = looper.token;
    const firstMark = String(await env.raw.command("GET", "lock:local"));
    assert.ok(firstMark.startsWith(turns.prefix), firstMark);
    // Held under the mark, its release gives the next turn, if still
    // within the tenure.
    await looper.release();
    if (!turns.has("local")) return false;
    assert.equal(await second.acquire({ blocking: false }), true);
    const mark = String(await env.raw.command("GET", "lock:local"));
    assert.ok(mark.startsWith(turns.prefix), mark);
    // The holder reads its own id; another instance reads the mark.
    assert.equal(await second.ownerId(), second.id);
    assert.equal(await looper.ownerId(), mark);
    assert.notEqual(mark, firstMark, "each turn has a mark of its own");
    assert.ok(second.token > firstToken, "a later token");
    // The holding takes the lock's own expiry, and names the mark.
    await eventually(
      async () => Number(await env.raw.command("PTTL", "lock:local")) > 20_000,
      "the holding's own expiry",
    );
    await second.extend(40_000);
    assert.ok(Number(await env.raw.command("PTTL", "lock:local")) > 30_000);
    // A release of the ended holding does not touch the one under the mark.
    await assert.rejects(looper.release(), NotAcquiredError);
    assert.equal(await env.raw.command("GET", "lock:local"), mark);
    assert.equal(second.signal.aborted, false);
    await second.release();
  });
});

Deno.test("a holder's turn is taken with no command only by a lock with the expiry the mark was set with", async () => {
  await using env = await bed();
  await onTurn(env, "expiries", { expire: 30_000 }, async (turn) => {
    const shorter = new Lock(turn.client, "expiries", {
      expire: 5_000,
    });
    assert.equal(await shorter.acquire({ blocking: false }), true);
    // The release, and the acquire's script.
    assert.equal(await scriptRuns(env.raw), turn.scripts + 2);
    // Its own expiry, not the mark's 30 s.
    assert.equal(await env.raw.command("GET", "lock:expiries"), shorter.id);
    const pttl = Number(await env.raw.command("PTTL", "lock:expiries"));
    assert.ok(pttl > 0 && pttl <= 5_000, `pttl ${pttl}`);
    await shorter.release();
  });
});

Deno.test("a holder's turn kept by a process that stalled is taken with a round trip", async () => {
  await using env = await bed();
  await onTurn(env, "stalled", { expire: 30_000 }, async (turn) => {
    // The event loop blocked past HOLDER_TURN: the timer could not run.
    const until = performance.now() + 10;
    while (performance.now() < until) { /* busy */ }
    assert.equal(await turn.looper.acquire({ blocking: false }), true);
    // The release, and the acquire's script: Redis is asked.
    assert.equal(await scriptRuns(env.raw), turn.scripts + 2);
    assert.equal(await env.raw.command("GET", "lock:stalled"), turn.looper.id);
    await turn.looper.release();
  });
});

Deno.test("a holder's turn of a lock without expiry is taken with a round trip, and keeps no expiry", async () => {
  await using env = await bed();
  await onTurn(env, "persist", {}, async (turn) => {
    assert.equal(await turn.looper.acquire({ blocking: false }), true);
    // The release, and the acquire's script: no holding under a mark that
    // would need an expiry.
    assert.equal(await scriptRuns(env.raw), turn.scripts + 2);
    assert.equal(await env.raw.command("GET", "lock:persist"), turn.looper.id);
    assert.equal(await env.raw.command("PTTL", "lock:persist"), -1);
    await turn.looper.release();
  });
});

Deno.test("an acquire that takes its turn after the lock data was lost ends the turn at once", async () => {
  await using env = await bed();
  for (let attempt = 0; attempt < 20; attempt++) {
    // New clients each time: a process that saw the new epoch waits out
    // the expiry of holders it cannot see.
    const looperClient = await env.client();
    const looper = new Lock(looperClient, "epoch", { expire: 30_000 });
    const waiter = new Lock(await env.client(), "epoch", { expire: 30_000 });
    const turns = holderTurnsOf(toConnection(looperClient));
    await looper.acquire();
    await looper.release();
    await looper.acquire();
    const waiting = waiter.acquire({ timeout: 10_000 });
    // Quick, so that the holding is still within its tenure.
    while (await env.raw.command("LLEN", "lock-queue:epoch") === 0) {
      await delay(0);
    }
    // A counter of a new epoch, as after a restart that lost the data.
    await env.raw.command("SET", "lock-fence", `${9e15 + attempt}:1`);
    await looper.release();
    const turn = turns.has("epoch");
    // The acquire takes the turn, finds the new epoch and puts the mark back.
    const again = looper.acquire({ blocking: false });
    const releasedAt = performance.now();
    assert.equal(await again, false);
    assert.equal(await waiting, true);
    const waited = performance.now() - releasedAt;
    await waiter.release();
    // The tenure may have run out under load: then there was no turn.
    if (!turn) continue;
    // Left to the mark's expiry, the waiter would wait TURN_LEASE ms.
    assert.ok(waited < 200, `handed on after ${waited} ms`);
    return;
  }
  assert.fail("no release gave a holder's turn");
});

Deno.test("pythonPeers: false leaves no wake-up in the signal list, and still hands the lock over", async () => {
  await using env = await bed();
  const options = { expire: 30_000, pythonPeers: false };
  const holder = new Lock(await env.client(), "alone", options);
  const waiter = new Lock(await env.client(), "alone", options);
  await holder.acquire();
  await env.raw.command("CONFIG", "RESETSTAT");
  await holder.release();
  assert.equal(await env.raw.command("EXISTS", "lock-signal:alone"), 0);
  const calls = await commandCalls(env.raw);
  assert.equal(calls.get("lpush") ?? 0, 0, "no wake-up pushed");
  await holder.acquire();
  const waiting = waiter.acquire({ timeout: 10_000 });
  await queued({ raw: env.command }, "alone");
  await holder.release();
  assert.equal(await waiting, true);
  assert.ok(waiter.token > holder.token);
  await waiter.reset();
  assert.equal(await env.raw.command("EXISTS", "lock-signal:alone"), 0);
  assert.equal(await env.raw.command("EXISTS", "lock:alone"), 0);
});

Deno.test("shutdown() hands on a holder's turn not yet taken, before the client closes", async () => {
  await using env = await bed();
  const looperClient = await env.client();
  const looper = new Lock(looperClient, "closing", { expire: 30_000 });
  const waiter = new Lock(await env.client(), "closing", { expire: 30_000 });
  for (let attempt = 0; attempt < 20; attempt++) {
    const { waiting } = await releaseWithWaiter(env, looper, waiter);
    // At once: no timer has run since the release.
    await shutdown(looperClient);
    const value = await env.raw.command("GET", "lock:closing");
    assert.equal(await waiting, true);
    await waiter.release();
    if (String(value) === waiter.id) return;
    // The tenure may have run out under load: then there was no turn, and
    // the release itself handed over.
    assert.ok(!String(value).startsWith("turn:"), `the mark stayed: ${value}`);
  }
  assert.fail("no release gave a holder's turn");
});

Deno.test("waiters of one process get the lock at once after a release of their process", async () => {
  await using env = await bed();
  const client = await env.client();
  const started = performance.now();
  await Promise.all(Array.from({ length: 4 }, async () => {
    const lock = new Lock(client, "loops");
    for (let i = 0; i < 25; i++) {
      assert.equal(await lock.acquire({ timeout: 30_000 }), true);
      await lock.release();
    }
  }));
  const took = performance.now() - started;
  // A waiter left to the waiter's tick (1 s) would take about that long for
  // each of many of the 100 acquisitions.
  assert.ok(took < 5_000, `100 acquisitions took ${Math.round(took)} ms`);
  await shutdown(client);
});

/** No racers' turn is due on `name` for a minute: releases hand over. */
async function noRacersTurn(env: { raw: RespClient }, name: string) {
  await env.raw.command("SET", `lock-turn:${name}`, "q", "PX", 60_000);
}

Deno.test("tasks of one process that take turns on a name run one script per acquisition", async () => {
  await using env = await bed();
  await noRacersTurn(env, "tasks");
  const client = await env.client();
  const before = await scriptRuns(env.raw);
  let inside = 0;
  let last = 0;
  await Promise.all(Array.from({ length: 8 }, async () => {
    const lock = new Lock(client, "tasks", { expire: 30_000 });
    for (let i = 0; i < 25; i++) {
      assert.equal(await lock.acquire({ timeout: 10_000 }), true);
      assert.equal(++inside, 1, "one holder at a time");
      assert.ok(lock.token > last, "tokens increase");
      last = lock.token;
      await Promise.resolve();
      inside--;
      await lock.release();
    }
  }));
  const scripts = await scriptRuns(env.raw) - before;
  // The release that hands the lock on queues the next task in the same
  // script: no script of the waiter between. (Two per acquisition without.)
  assert.ok(scripts <= 200 + 20, `${scripts} scripts for 200 acquisitions`);
  assert.equal(await env.raw.command("EXISTS", "lock:tasks"), 0);
  assert.equal(await env.raw.command("EXISTS", "lock-queue:tasks"), 0);
  await shutdown(client);
});

Deno.test("the release of a holding a wait took queues the next local wait behind another process's waiter queued before", async () => {
  await using env = await bed();
  const name = "lent";
  await noRacersTurn(env, name);
  await otherAlive(env);
  const client = await env.client();
  const options = { expire: 30_000 };
  await (await acquire(client, name, options)).release(); // scripts loaded
  const holder = await acquire(client, name, options);
  const first = new Lock(client, name, options);
  const firstWaits = first.acquire({ timeout: 10_000 });
  await queued({ raw: env.command }, name);
  await queueOther(env, name);
  // Waits in the process behind `first`, not queued.
  const next = new Lock(client, name, options);
  const nextWaits = next.acquire({ timeout: 10_000 });
  nextWaits.catch(() => {}); // awaited below
  const before = await scriptRuns(env.raw);
  await holder.release(); // handed to `first` in its reply
  assert.equal(await firstWaits, true);
  await first.release();
  // The two releases, and no script of the waiter: `next` was queued by the
  // second release, after the other process's waiter, which has the lock.
  assert.equal(await scriptRuns(env.raw) - before, 2);
  assert.equal(await env.raw.command("GET", `lock:${name}`), OTHER.id);
  const entries = await env.raw.command(
    "LRANGE",
    `lock-queue:${name}`,
    0,
    -1,
  ) as string[];
  assert.equal(entries.length, 1);
  assert.ok(entries[0].endsWith(`|30000|${next.id}`), entries[0]);
  await new Lock(await env.client(), name, { id: OTHER.id }).release();
  assert.equal(await nextWaits, true);
  assert.ok(next.token > first.token);
  await next.release();
  assert.equal(await env.raw.command("EXISTS", `lock:${name}`), 0);
  assert.equal(await env.raw.command("EXISTS", `lock-queue:${name}`), 0);
  await shutdown(client);
});

Deno.test("a holding a wait took and keeps for long: the next local wait queues itself, before a waiter that comes later", async () => {
  await using env = await bed();
  const name = "kept";
  await noRacersTurn(env, name);
  await otherAlive(env);
  const client = await env.client();
  const options = { expire: 30_000 };
  const holder = await acquire(await env.client(), name, options);
  const first = new Lock(client, name, options);
  const firstWaits = first.acquire({ timeout: 10_000 });
  await queued({ raw: env.command }, name);
  // Waits in the process behind `first`, not queued.
  const next = new Lock(client, name, options);
  const nextWaits = next.acquire({ timeout: 10_000 });
  await delay(20);
  assert.equal(await env.raw.command("LLEN", `lock-queue:${name}`), 1);
  await holder.release(); // handed to `first` through its wake list
  assert.equal(await firstWaits, true);
  assert.equal(await env.raw.command("LLEN", `lock-queue:${name}`), 0);
  // Not released within HOLDER_TURN: `next` queues, as it would have at
  // once, before a waiter of another process that comes after.
  await queued({ raw: env.command }, name);
  await queueOther(env, name);
  await first.release();
  assert.equal(await nextWaits, true);
  assert.equal(await env.raw.command("GET", `lock:${name}`), next.id);
  await next.release();
  await endOther(env, name);
  await shutdown(client);
});

Deno.test("after a loop of local holdings, one kept for long still lets the next local wait queue itself", async () => {
  await using env = await bed();
  const name = "kept-after-loop";
  await noRacersTurn(env, name);
  await otherAlive(env);
  const client = await env.client();
  const options = { expire: 30_000 };
  const holder = await acquire(await env.client(), name, options);
  const [first, second, third] = [0, 1, 2].map(() =>
    new Lock(client, name, options)
  );
  const firstWaits = first.acquire({ timeout: 10_000 });
  await queued({ raw: env.command }, name);
  const secondWaits = second.acquire({ timeout: 10_000 });
  const thirdWaits = third.acquire({ timeout: 10_000 });
  await holder.release(); // handed to `first` through its wake list
  assert.equal(await firstWaits, true);
  // Released at once: `second` holds, and the end of the local holding
  // moves on (the timer set for `first`'s is kept, due earlier).
  await first.release();
  assert.equal(await secondWaits, true);
  // Kept for long: `third` queues itself once HOLDER_TURN has passed since
  // `second` took the lock, before a waiter of another process that comes
  // after.
  await queued({ raw: env.command }, name);
  await queueOther(env, name);
  await second.release();
  assert.equal(await thirdWaits, true);
  assert.equal(await env.raw.command("GET", `lock:${name}`), third.id);
  await third.release();
  await endOther(env, name);
  await shutdown(client);
});

Deno.test("a waiter that died while queued delays the lock by at most the hand-over expiry", async () => {
  await using env = await bed();
  const holder = await acquire(await env.client(), "died");
  const worker = new URL("./_worker.ts", import.meta.url);
  const child = denoScript(worker, ["queue", String(env.server.port), "died"], {
    stdout: "null",
    stderr: "null",
  }).spawn();
  await queued({ raw: env.command }, "died");
  child.kill("SIGKILL");
  await child.status;

  const waiter = new Lock(await env.client(), "died");
  const waiting = waiter.acquire({ timeout: 20_000 });
  await queued({ raw: env.command }, "died", 2);
  const released = performance.now();
  await holder.release();
  assert.equal(await waiting, true);
  const waited = performance.now() - released;
  assert.ok(waited >= 4_000, `the dead waiter held it first (${waited} ms)`);
  assert.ok(waited < 8_000, `then the live waiter got it (${waited} ms)`);
  await waiter.release();
});

Deno.test("shutdown() rejects pending acquires and leaves nothing behind", async () => {
  await using env = await bed();
  const holder = await acquire(await env.client(), "shut");
  const client = await env.client();
  const waiting = [
    new Lock(client, "shut").acquire(),
    new Lock(client, "shut").acquire(),
  ].map((wait) => assert.rejects(wait, /shut down/));
  await queued({ raw: env.command }, "shut");
  await shutdown(client);
  await Promise.all(waiting);
  assert.equal(await env.raw.command("EXISTS", "lock-queue:shut"), 0);
  assert.equal(await env.raw.command("GET", "lock:shut"), holder.id);
  // A later wait opens a new connection.
  const later = new Lock(client, "shut");
  const waiting2 = later.acquire();
  await holder.release();
  assert.equal(await waiting2, true);
  await later.release();
});

Deno.test("shutdown() during a first try rejects it and leaves no entry", async () => {
  await using env = await bed();
  const holder = await acquire(await env.client(), "early");
  const client = await env.client();
  const waiting = [
    new Lock(client, "early").acquire(),
    new Lock(client, "early").acquire(), // waits for the first's try
  ].map((wait) => assert.rejects(wait, /shut down/));
  await shutdown(client); // in the same tick: the first try is on its way
  await Promise.all(waiting);
  assert.equal(await env.raw.command("EXISTS", "lock-queue:early"), 0);
  await holder.release();
});

Deno.test("a waiter that gives up leaves its place to the next local waiter, served at once", async () => {
  await using env = await bed();
  const holderClient = await env.client();
  const client = await env.client();
  for (let round = 0; round < 15; round++) {
    const holder = await acquire(holderClient, "handed-on");
    const controller = new AbortController();
    const first = new Lock(client, "handed-on")
      .acquire({ signal: controller.signal })
      .catch(() => "aborted");
    const second = new Lock(client, "handed-on");
    const waiting = second.acquire({ timeout: 10_000 });
    await queued({ raw: env.command }, "handed-on");
    // The first's place goes to the second just as the release hands the
    // lock to that place (the hand-over may overtake the reply).
    controller.abort();
    const released = performance.now();
    await holder.release();
    assert.equal(await first, "aborted");
    assert.equal(await waiting, true);
    const waited = performance.now() - released;
    assert.ok(waited < 2_000, `round ${round}: served after ${waited} ms`);
    await second.release();
  }
});

Deno.test("a client that cannot open connections waits by polling; transport blpop on it is a TypeError", async () => {
  await using env = await bed();
  const holder = await acquire(await env.client(), "no-duplicate");
  const options = { hostname: env.server.hostname, port: env.server.port };
  const shape = await DbRedisShape.connect(options); // no duplicate(), no withConnect
  try {
    assert.throws(
      () => new Lock(shape, "no-duplicate", { transport: "blpop" }),
      (error: Error) =>
        error instanceof TypeError && /'transport'/.test(error.message) &&
        /withConnect/.test(error.message),
    );
    const lock = new Lock(shape, "no-duplicate", { pollInterval: 20 });
    const waiting = lock.acquire({ timeout: 5_000 });
    await queued({ raw: env.command }, "no-duplicate");
    await holder.release();
    assert.equal(await waiting, true);
    assert.equal(await env.raw.command("GET", "lock:no-duplicate"), lock.id);
    await lock.release();
    // A timeout leaves nothing behind either.
    const again = await acquire(await env.client(), "no-duplicate");
    assert.equal(await lock.acquire({ timeout: 300 }), false);
    assert.equal(await env.raw.command("EXISTS", "lock-queue:no-duplicate"), 0);
    await again.release();
  } finally {
    await shutdown(shape);
    await shape.close();
  }
});

Deno.test("waiters of one process that time out together leave no entry, and the lock goes on", async () => {
  await using env = await bed();
  const holderClient = await env.client();
  const client = await env.client();
  for (let trial = 0; trial < 30; trial++) {
    const holder = await acquire(holderClient, "together");
    const results = await Promise.all(
      [0, 1, 2].map(() =>
        new Lock(client, "together").acquire({ timeout: 150 })
      ),
    );
    assert.deepEqual(results, [false, false, false]);
    assert.equal(
      await env.command("EXISTS", "lock-queue:together"),
      0,
      `trial ${trial}: nothing queued once all have settled`,
    );
    await holder.release();
    // Free at once: not handed to a waiter that gave up.
    const next = new Lock(holderClient, "together");
    assert.equal(await next.acquire({ blocking: false }), true);
    await next.release();
    // A later waiter of the same process is served as usual.
    const again = await acquire(holderClient, "together");
    const later = new Lock(client, "together").acquire({ timeout: 5_000 });
    await queued({ raw: env.command }, "together");
    await again.release();
    assert.equal(await later, true);
    await new Lock(client, "together", {
      id: (await env.command("GET", "lock:together")) as string,
    }).release();
  }
});

Deno.test("waiters that give up at random moments never strand the lock", async () => {
  await using env = await bed();
  const holderClient = await env.client();
  const client = await env.client();
  for (let trial = 0; trial < 20; trial++) {
    const holder = await acquire(holderClient, "random");
    const controllers = Array.from({ length: 4 }, () => new AbortController());
    const waits = controllers.map(async (controller, i) => {
      const lock = new Lock(client, "random");
      try {
        const acquired = await lock.acquire({
          signal: controller.signal,
          timeout: i === 3 ? undefined : 20 + Math.random() * 40,
        });
        if (acquired) await lock.release();
        return acquired;
      } catch {
        return "aborted";
      }
    });
    await delay(Math.random() * 40);
    const releasing = holder.release();
    for (const controller of controllers) {
      if (Math.random() < 0.5) controller.abort();
    }
    await releasing;
    await Promise.all(waits);
    // A holder's turn its release gave (the holder loops over the trials)
    // is handed on by then.
    await shutdown(holderClient);
    assert.equal(await env.command("EXISTS", "lock-queue:random"), 0);
    assert.equal(await env.command("EXISTS", "lock:random"), 0);
  }
});

Deno.test("contended waits work on a runtime without Promise.withResolvers (Node 20)", async () => {
  await using env = await bed();
  const promise = Promise as { withResolvers?: unknown };
  const original = promise.withResolvers;
  delete promise.withResolvers;
  try {
    const holder = await acquire(await env.client(), "node20");
    const waiter = new Lock(await env.client(), "node20");
    const waiting = waiter.acquire({ timeout: 5_000 });
    await queued({ raw: env.command }, "node20");
    await holder.release();
    assert.equal(await waiting, true);
    await waiter.release();
  } finally {
    promise.withResolvers = original;
  }
});

/**
 * A `{ send }` client whose own connections (its duplicates) throw a
 * TypeError, synchronously, on the next script once `armed`: a bug
 * anywhere inside a wait.
 */
class FlakyClient {
  armed = false;
  readonly #client: RespClient;
  readonly #copies: FlakyClient[];

  constructor(client: RespClient, copies: FlakyClient[] = []) {
    this.#client = client;
    this.#copies = copies;
  }

  /** Arms every duplicate. */
  arm(): void {
    for (const copy of this.#copies) copy.armed = true;
  }

  send(command: string, args: string[]): Promise<unknown> {
    if (this.armed && command.startsWith("EVAL")) {
      this.armed = false;
      throw new TypeError("injected failure");
    }
    return this.#client.send(command, args);
  }

  async duplicate(): Promise<FlakyClient> {
    const copy = new FlakyClient(await this.#client.duplicate(), this.#copies);
    this.#copies.push(copy);
    return copy;
  }

  close(): Promise<void> {
    return this.#client.close();
  }
}

Deno.test("an exception inside a wait fails it and leaves no entry behind", async () => {
  await using env = await bed();
  const holder = await acquire(await env.client(), "boom");
  const flaky = new FlakyClient(await RespClient.connect(env.server.port));
  try {
    const waiting = new Lock(flaky, "boom").acquire({ timeout: 10_000 });
    await queued({ raw: env.command }, "boom");
    flaky.arm(); // the next look at the lock (within a tick) throws
    await assert.rejects(waiting, /injected failure/);
    await eventually(
      async () => await env.command("EXISTS", "lock-queue:boom") === 0,
      "the entry is cancelled",
    );
    await holder.release();
    assert.equal(await env.command("EXISTS", "lock:boom"), 0, "not handed on");
  } finally {
    await shutdown(flaky);
    await flaky.close();
  }
});
