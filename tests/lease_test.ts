/**
 * What a held lock does on its own: auto-renewal, and stopping it once the
 * lock object is garbage collected (python-redis-lock's
 * test_auto_renewal_stops_after_gc). Needs `--v8-flags=--expose-gc`.
 */

import assert from "node:assert/strict";
import { Redis } from "ioredis";
import { acquire, Lock, LockError, LockLostError } from "../mod.ts";
import { abortedAt, bed, eventually } from "./_bed.ts";
import { RespClient } from "./_resp.ts";
import { RedisServer } from "./_server.ts";

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

Deno.test("auto-renewal stops once the lock is garbage collected without release", async () => {
  const gc = (globalThis as { gc?: () => void }).gc;
  assert.ok(gc, "run with --v8-flags=--expose-gc");
  await using server = await RedisServer.start();
  const client = new Redis(server.port, server.hostname);
  const raw = await RespClient.connect(server.port);
  try {
    const signal = await (async () => {
      const lock = new Lock(client, "collected", {
        expire: 300,
        autoRenewal: true,
      });
      await lock.acquire();
      return lock.signal;
    })();
    const lost = new Promise((resolve) =>
      signal.addEventListener("abort", resolve, { once: true })
    );
    for (let i = 0; i < 20 && !signal.aborted; i++) {
      gc();
      await delay(50);
    }
    await lost;
    assert.ok(signal.reason instanceof LockLostError);
    assert.match(signal.reason.message, /garbage collected/);
    await delay(350);
    assert.equal(await raw.command("EXISTS", "lock:collected"), 0);
  } finally {
    await raw.close();
    await client.quit();
  }
});

Deno.test("a holder whose Redis dies learns of the loss when its expiry passes", async () => {
  await using server = await RedisServer.start();
  const client = new Redis(server.port, server.hostname, {
    maxRetriesPerRequest: 0,
    retryStrategy: () => 20,
  });
  client.on("error", () => {}); // reconnecting to the killed server
  try {
    const lock = new Lock(client, "crashed", {
      expire: 400,
      autoRenewal: true,
    });
    await lock.acquire();
    const started = performance.now();
    await server.kill();
    await new Promise((resolve) =>
      lock.signal.addEventListener("abort", resolve, { once: true })
    );
    assert.ok(lock.signal.reason instanceof LockLostError);
    assert.match(lock.signal.reason.message, /expired/);
    assert.ok(performance.now() - started <= 450, "not later than the expiry");
    await server.restart();
    await assert.rejects(lock.release());
  } finally {
    client.disconnect();
  }
});

/** Runs `fn` with timers that fire `early` ms before they are due. */
async function withEarlyTimers<T>(early: number, fn: () => Promise<T>) {
  const original = globalThis.setTimeout;
  globalThis.setTimeout =
    ((callback: () => void, ms = 0, ...args: []) =>
      original(
        callback,
        Math.max(0, ms - early),
        ...args,
      )) as typeof setTimeout;
  try {
    return await fn();
  } finally {
    globalThis.setTimeout = original;
  }
}

Deno.test("a shortening extend() whose reply is lost aborts the signal when Redis may drop the key", async () => {
  await using env = await bed();
  const client = await env.client({ commandTimeout: 100 });
  const lock = new Lock(client, "shorten", { expire: 30_000 });
  await lock.acquire();
  await lock.extend(30_000); // scripts loaded: after the pause, it runs
  const aborted = abortedAt(lock.signal);
  await env.command("CLIENT", "PAUSE", 300, "ALL");
  const sentAt = performance.now();
  await assert.rejects(lock.extend(1_000), LockError);
  // Another process takes the lock as soon as Redis drops it.
  const other = new Lock(await env.client(), "shorten");
  await eventually(() => other.acquire({ blocking: false }), "dropped", 5_000);
  const acquiredAt = performance.now();
  assert.ok(lock.signal.aborted, "told before another holds the lock");
  const at = await aborted;
  assert.ok(at <= acquiredAt, "told before another acquired");
  assert.ok(at - sentAt <= 1_100, `told ${Math.round(at - sentAt)} ms after`);
  await other.release();
});

Deno.test("auto-renewal never shortens what extend() set, even around lost replies", async () => {
  await using env = await bed();
  const client = await env.client({ commandTimeout: 100 });
  const lock = new Lock(client, "longer", { expire: 900, autoRenewal: true });
  await lock.acquire();
  await lock.extend(60_000);
  await delay(400);
  await env.command("CLIENT", "PAUSE", 300, "ALL");
  await delay(1_600);
  const pttl = await env.command("PTTL", "lock:longer") as number;
  assert.ok(pttl > 55_000, `the extension stands: ${pttl} ms left`);
  assert.equal(lock.signal.aborted, false);
  await lock.release();
});

Deno.test("lock.signal aborts by the expiry even when timers fire early", async () => {
  await using env = await bed();
  const client = await env.client();
  await withEarlyTimers(5, async () => {
    for (let i = 0; i < 5; i++) {
      const lock = new Lock(client, `early:${i}`, {
        expire: 300,
        autoRenewal: true,
      });
      await lock.acquire();
      const acquired = performance.now();
      const aborted = abortedAt(lock.signal);
      await env.command("CLIENT", "PAUSE", 700, "ALL");
      const at = await aborted;
      assert.ok(
        at - acquired <= 350,
        `told ${Math.round(at - acquired)} ms after acquiring`,
      );
      await delay(450); // the pause ends
      await assert.rejects(lock.release());
    }
  });
});

Deno.test("a lease whose expiry is beyond one timer's reach arms its timer again", async () => {
  await using env = await bed();
  const client = await env.client();
  const original = globalThis.setTimeout;
  const long: number[] = [];
  // The longest timer "fires" at once, the first time only: as if 24.8 days
  // had passed.
  globalThis.setTimeout = ((callback: () => void, ms = 0, ...args: []) => {
    if (ms >= 2 ** 31 - 1) {
      long.push(ms);
      return original(callback, long.length === 1 ? 0 : ms, ...args);
    }
    return original(callback, ms, ...args);
  }) as typeof setTimeout;
  try {
    const lock = new Lock(client, "month", { expire: 30 * 24 * 3_600_000 });
    await lock.acquire();
    lock.signal;
    await delay(20);
    assert.equal(lock.signal.aborted, false);
    assert.ok(long.length >= 2, "armed again after the first timer");
    await lock.release();
  } finally {
    globalThis.setTimeout = original;
  }
});

Deno.test("a non-blocking acquire whose reply comes after the expiry is not a holding", async () => {
  await using env = await bed();
  const client = await env.client();
  const lock = new Lock(client, "late", { expire: 100 });
  await lock.acquire({ blocking: false });
  await lock.release();
  await env.command("CLIENT", "PAUSE", 300, "ALL");
  assert.equal(await lock.acquire({ blocking: false }), false);
  assert.equal(await env.command("EXISTS", "lock:late"), 0);
});

Deno.test("await using releases a lock lost only as far as the holder can tell", async () => {
  await using env = await bed();
  const client = await env.client();
  const scope = async () => {
    await using lock = await acquire(client, "unsure", { expire: 300 });
    // Redis keeps it longer than the holder knows: its expiry passes
    // without a renewal it could confirm.
    await env.command("PEXPIRE", "lock:unsure", 60_000);
    await delay(400);
    assert.ok(lock.signal.aborted);
  };
  await assert.rejects(scope(), LockLostError);
  assert.equal(await env.command("EXISTS", "lock:unsure"), 0);
});
