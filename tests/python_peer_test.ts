/**
 * Wire compatibility with python-redis-lock 4.x. A test plays the Python
 * peer's side with raw commands, as its `Lock` issues them:
 * `SET lock:<name> <id> NX EX <seconds>` to acquire, `BLPOP
 * lock-signal:<name> <timeout>` to wait, and its UNLOCK script's effect
 * (`DEL` signal, `LPUSH` signal 1, `PEXPIRE` signal, `DEL` lock, atomically)
 * to release.
 */

import assert from "node:assert/strict";
import { Redis } from "ioredis";
import { acquire, Lock, resetAll, shutdown } from "../mod.ts";
import { ALIVE_TTL, QUEUE_TTL } from "../src/keys.ts";
import { bed, delay, eventually } from "./_bed.ts";
import { denoScript } from "./_deno.ts";
import { PYTHON_UNLOCK } from "./_python.ts";
import { RespClient } from "./_resp.ts";
import { blockedClients, queued } from "./_scenarios.ts";
import { RedisServer } from "./_server.ts";

/** The Python peer: its own connection and id, its commands. */
class PythonPeer {
  readonly id = "cHl0aG9uLXBlZXItaWQtMDAx"; // 24 characters, as b64encode(urandom(18))
  readonly #redis: RespClient;
  readonly #name: string;

  constructor(redis: RespClient, name: string) {
    this.#redis = redis;
    this.#name = name;
  }

  /** `Lock.acquire(blocking=False)` with `expire=10`. */
  async tryAcquire(): Promise<boolean> {
    const reply = await this.#redis.command(
      "SET",
      `lock:${this.#name}`,
      this.id,
      "NX",
      "EX",
      10,
    );
    return reply === "OK";
  }

  /** The wait inside `Lock.acquire()`: `BLPOP` on the signal list. */
  waitForSignal(seconds: number): Promise<unknown> {
    return this.#redis.command("BLPOP", `lock-signal:${this.#name}`, seconds);
  }

  /** `Lock.release()`: the UNLOCK script's effect, after its id check. */
  async release(): Promise<void> {
    assert.equal(
      await this.#redis.command("GET", `lock:${this.#name}`),
      this.id,
    );
    const signal = `lock-signal:${this.#name}`;
    await this.#redis.command("MULTI");
    await this.#redis.command("DEL", signal);
    await this.#redis.command("LPUSH", signal, 1);
    await this.#redis.command("PEXPIRE", signal, 1000);
    await this.#redis.command("DEL", `lock:${this.#name}`);
    await this.#redis.command("EXEC");
  }
}

async function setup() {
  const server = await RedisServer.start();
  const peer = await RespClient.connect(server.port);
  const app = new Redis(server.port, server.hostname);
  return {
    server,
    peer,
    app,
    async [Symbol.asyncDispose]() {
      await shutdown(app);
      await app.quit();
      await peer.close();
      await server[Symbol.asyncDispose]();
    },
  };
}

const blocked = (raw: RespClient, count: number) =>
  blockedClients(
    { raw: (command, ...args) => raw.command(command, ...args) },
    count,
  );

Deno.test("a Python peer's lock excludes us, and its release wakes our waiter", async () => {
  await using env = await setup();
  const python = new PythonPeer(env.peer, "shared");
  assert.equal(await python.tryAcquire(), true);

  const lock = new Lock(env.app, "shared");
  assert.equal(await lock.acquire({ blocking: false }), false);
  assert.equal(await lock.ownerId(), python.id);
  assert.equal(await lock.locked(), true);

  const started = Date.now();
  const waiting = lock.acquire({ timeout: 8_000 });
  const raw = await RespClient.connect(env.server.port);
  await blocked(raw, 1);
  await python.release();
  assert.equal(await waiting, true);
  // Woken by the release: the Python lock had 10 s to live and we waited 8.
  assert.ok(Date.now() - started < 4_000);
  assert.equal(await raw.command("GET", "lock:shared"), lock.id);
  await lock.release();
  await raw.close();
});

Deno.test("our lock excludes a Python peer, and our release ends its BLPOP", async () => {
  await using env = await setup();
  const python = new PythonPeer(env.peer, "shared");
  const lock = await acquire(env.app, "shared", { expire: 10_000 });
  assert.equal(await python.tryAcquire(), false);

  const popped = python.waitForSignal(8);
  const raw = await RespClient.connect(env.server.port);
  await blocked(raw, 1);
  await lock.release();
  assert.deepEqual(await popped, ["lock-signal:shared", "1"]);
  assert.equal(await python.tryAcquire(), true);
  assert.equal(await new Lock(env.app, "shared").ownerId(), python.id);
  await python.release();
  await raw.close();
});

Deno.test("a release leaves exactly one wake-up, as Python's UNLOCK does, keeping one nobody took", async () => {
  await using env = await setup();
  const raw = await RespClient.connect(env.server.port);
  try {
    const signal = "lock-signal:once";
    const lock = new Lock(env.app, "once", { signalExpire: 5_000 });
    for (const before of [[], ["1"], ["2"], ["2", "1"]]) {
      await raw.command("DEL", signal);
      if (before.length > 0) await raw.command("RPUSH", signal, ...before);
      await raw.command("PEXPIRE", signal, 100_000);
      await lock.acquire();
      await lock.release();
      assert.deepEqual(
        await raw.command("LRANGE", signal, 0, -1),
        ["1"],
        `after ${JSON.stringify(before)}`,
      );
      const pttl = Number(await raw.command("PTTL", signal));
      assert.ok(pttl > 4_000 && pttl <= 5_000, `the signal expiry: ${pttl}`);
    }
    // A Python waiter that comes after pops it at once.
    const python = new PythonPeer(env.peer, "once");
    assert.deepEqual(await python.waitForSignal(1), [signal, "1"]);
  } finally {
    await raw.close();
  }
});

Deno.test("a Python peer's BLPOP returns on our reset and resetAll", async () => {
  await using env = await setup();
  const python = new PythonPeer(env.peer, "shared");
  for (
    const reset of [
      () => new Lock(env.app, "shared").reset(),
      () => resetAll(env.app),
    ]
  ) {
    const _held = await acquire(env.app, "shared");
    const popped = python.waitForSignal(8);
    const raw = await RespClient.connect(env.server.port);
    await blocked(raw, 1);
    await reset();
    assert.deepEqual(await popped, ["lock-signal:shared", "1"]);
    assert.equal(await python.tryAcquire(), true);
    await python.release();
    await raw.command("DEL", "lock-signal:shared");
    await raw.close();
  }
});

Deno.test("a release skips the entries of dead processes and wakes a Python waiter", async () => {
  await using env = await bed();
  const holder = await acquire(await env.client(), "dead-entries");
  const child = denoScript(
    new URL("./_worker.ts", import.meta.url),
    ["queue", String(env.server.port), "dead-entries"],
    { stdout: "null", stderr: "null" },
  ).spawn();
  await queued({ raw: env.command }, "dead-entries");
  child.kill("SIGKILL");
  await child.status;
  await delay(ALIVE_TTL + 500); // its liveness has lapsed
  const python = await RespClient.connect(env.server.port);
  try {
    // python-redis-lock without timeout nor expire blocks with no timeout;
    // 3 s stands for ever here.
    const popped = python.command("BLPOP", "lock-signal:dead-entries", 3);
    await blocked(env.raw, 1);
    const released = performance.now();
    await holder.release();
    assert.deepEqual(await popped, ["lock-signal:dead-entries", "1"]);
    assert.ok(performance.now() - released < 1_000, "woken by the release");
    assert.equal(await env.command("EXISTS", "lock:dead-entries"), 0);
    assert.equal(await env.command("EXISTS", "lock-queue:dead-entries"), 0);
  } finally {
    await python.close();
  }
});

Deno.test("the queue of waiters that all died goes away by itself", async () => {
  await using env = await bed();
  const holder = await acquire(await env.client(), "forgotten");
  const child = denoScript(
    new URL("./_worker.ts", import.meta.url),
    ["queue", String(env.server.port), "forgotten"],
    { stdout: "null", stderr: "null" },
  ).spawn();
  await queued({ raw: env.command }, "forgotten");
  const pttl = await env.command("PTTL", "lock-queue:forgotten") as number;
  assert.ok(pttl > 0, `the queue expires unless refreshed: ${pttl}`);
  child.kill("SIGKILL");
  await child.status;
  await eventually(
    async () => await env.command("EXISTS", "lock-queue:forgotten") === 0,
    "the queue is gone",
    QUEUE_TTL + 2_000,
  );
  await holder.release();
});

Deno.test("a wake-up taken for a name no longer waited for is put back with the lock's signal expiry", async () => {
  await using env = await bed();
  const holderClient = await env.client();
  const client = await env.client();
  // Another name keeps the waiting connection's BLPOP running.
  const other = await acquire(holderClient, "put-back:other");
  const otherWait = new Lock(client, "put-back:other").acquire();
  let putBack = false;
  for (let attempt = 0; attempt < 3 && !putBack; attempt++) {
    const holder = await acquire(holderClient, "put-back");
    assert.equal(
      await new Lock(client, "put-back", { signalExpire: 5_000 })
        .acquire({ timeout: 100 }),
      false,
    );
    // The BLPOP still covers the name's signal list: the release's wake-up
    // (which lives 1 s) is taken, and put back for 5 s.
    await holder.release();
    await delay(100);
    putBack = await env.command("PTTL", "lock-signal:put-back") as number >
      1_000;
    await env.command("DEL", "lock-signal:put-back");
    await delay(1_100);
  }
  assert.ok(putBack, "put back with the lock's own signal expiry");
  await other.release();
  assert.equal(await otherWait, true);
  await new Lock(client, "put-back:other", {
    id: await env.command("GET", "lock:put-back:other") as string,
  }).release();
});

/**
 * python-redis-lock's waiter, command for command: `SET NX EX`, and while
 * busy `BLPOP` on the signal list (with `expire` as its timeout), then
 * `SET NX` again; once held, its release. Counts its acquisitions until
 * `stop()`.
 */
async function pythonLoop(
  redis: RespClient,
  name: string,
  stop: () => boolean,
  waits: number[],
  pause = 0,
): Promise<number> {
  const id = "cHl0aG9uLXdhaXRlci0wMDAx";
  let count = 0;
  let since = performance.now();
  while (!stop()) {
    const set = await redis.command("SET", `lock:${name}`, id, "NX", "EX", 10);
    if (set !== "OK") {
      await redis.command("BLPOP", `lock-signal:${name}`, 1);
      continue;
    }
    waits.push(performance.now() - since);
    count++;
    await redis.command(
      "EVAL",
      PYTHON_UNLOCK,
      2,
      `lock:${name}`,
      `lock-signal:${name}`,
      id,
      1000,
    );
    if (pause > 0) await delay(pause);
    since = performance.now();
  }
  return count;
}

for (const pause of [0, 1]) {
  Deno.test(`a Python waiter gets its share beside this library's waiters (${pause} ms between its acquisitions)`, async () => {
    await using env = await bed();
    const name = `shared-fairly-${pause}`;
    const ours = 3;
    const clients = await Promise.all(
      Array.from({ length: ours }, () => env.client()),
    );
    const python = await RespClient.connect(env.server.port);
    let stopped = false;
    const stop = () => stopped;
    const pythonWaits: number[] = [];
    try {
      const loops = clients.map(async (client) => {
        const lock = new Lock(client, name);
        let count = 0;
        while (!stopped) {
          await lock.acquire();
          count++;
          await lock.release();
          if (pause > 0) await delay(pause);
        }
        return count;
      });
      const pythonCount = pythonLoop(python, name, stop, pythonWaits, pause);
      await delay(3_000);
      stopped = true;
      const counts = [await pythonCount, ...await Promise.all(loops)];
      const total = counts.reduce((a, b) => a + b, 0);
      const share = counts[0] / total;
      const fair = 1 / (ours + 1);
      console.log(
        `acquisitions python / ours: ${counts.join(" / ")}; python's share ${
          share.toFixed(3)
        } (fair ${fair.toFixed(3)}); python's longest wait ${
          Math.round(Math.max(0, ...pythonWaits))
        } ms`,
      );
      assert.ok(share >= fair / 2, `python's share ${share} < ${fair / 2}`);
      for (const count of counts.slice(1)) {
        assert.ok(count > 0, "no waiter of this library starves");
      }
    } finally {
      stopped = true;
      await python.close();
    }
  });
}
