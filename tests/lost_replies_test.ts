/**
 * Replies that come late or never, and commands that a client runs twice
 * (ioredis re-sends the commands a lost connection left unanswered): what
 * the holder is told, what stays in Redis, who holds the lock.
 */

import assert from "node:assert/strict";
import { Redis } from "ioredis";
import { Lock, LockError, shutdown } from "../mod.ts";
import { abortedAt, bed, close, delay, eventually } from "./_bed.ts";
import { ReplyDropper, SlowClient } from "./_faulty.ts";
import { queued } from "./_scenarios.ts";
import { RespClient } from "./_resp.ts";

/** No racers' turn is due on `name` for a minute: releases hand over. */
async function noTurn(env: { command: RespClient["command"] }, name: string) {
  await env.command("SET", `lock-turn:${name}`, "q", "PX", 60_000);
}

Deno.test("a hand-over whose wake-up waits behind a slow reply counts from when it was popped", async () => {
  await using env = await bed();
  await noTurn(env, "slow");
  const holder = new Lock(await env.client(), "slow", { expire: 60_000 });
  await holder.acquire();
  const client = new SlowClient(env.server.port);
  try {
    const waiter = new Lock(client, "slow", { expire: 5_000 });
    const waiting = waiter.acquire({ timeout: 20_000 });
    await queued({ raw: env.command }, "slow");
    // The next look at the lock (a tick) answers 2.1 s late; meanwhile the
    // holder releases, and the hand-over is popped at once.
    const delayed = new Promise<void>((resolve) =>
      client.switches.onDelayed = resolve
    );
    client.switches.delayNextScript = 2_100;
    await delayed;
    await holder.release();
    assert.equal(await waiting, true);
    const told = abortedAt(waiter.signal);
    const other = new Lock(await env.client(), "slow", { expire: 5_000 });
    await eventually(
      () => other.acquire({ blocking: false }),
      "the lock expires",
      10_000,
    );
    const acquiredAt = performance.now();
    assert.ok(waiter.signal.aborted, "the waiter was told before");
    assert.ok(await told <= acquiredAt + 5);
    await other.release();
  } finally {
    await shutdown(client);
    await client.close();
  }
});

Deno.test("a hand-over that arrives while the process is busy is claimed anew", async () => {
  await using env = await bed();
  await noTurn(env, "busy");
  const holder = new Lock(await env.client(), "busy", { expire: 60_000 });
  await holder.acquire();
  const waiter = new Lock(await env.client(), "busy", { expire: 5_000 });
  const waiting = waiter.acquire({ timeout: 20_000 });
  await queued({ raw: env.command }, "busy");
  // Another process releases while this one is busy for 2 s.
  const release = new Lock(await env.client(), "busy", { id: holder.id });
  const releasing = release.release();
  const until = performance.now() + 2_000;
  while (performance.now() < until) {
    // CPU-bound work, or a long GC pause
  }
  await releasing;
  assert.equal(await waiting, true);
  const pttl = await env.command("PTTL", "lock:busy") as number;
  assert.ok(pttl > 4_500, `its full expiry again: ${pttl} ms left`);
  await waiter.release();
});

Deno.test("an acquire that a client re-sends after a lost reply is taken, not reported held by another", async () => {
  await using env = await bed();
  await using proxy = new ReplyDropper(env.server.port);
  const app = new Redis(proxy.port); // re-sends unanswered commands
  app.on("error", () => {});
  try {
    const warm = new Lock(app, "warm");
    await warm.acquire({ blocking: false }); // the scripts are loaded
    await warm.release();
    for (const expire of [undefined, 30_000]) {
      const lock = new Lock(app, "resent", { expire });
      proxy.dropNextReply = true;
      assert.equal(await lock.acquire({ blocking: false }), true);
      assert.equal(await env.command("GET", "lock:resent"), lock.id);
      await lock.release();
      assert.equal(await env.command("EXISTS", "lock:resent"), 0);
    }
  } finally {
    await shutdown(app);
    await close(app);
  }
});

Deno.test("a reset that a client re-sends after a lost reply resets once", async () => {
  await using env = await bed();
  await noTurn(env, "reset-twice");
  await using proxy = new ReplyDropper(env.server.port);
  const admin = new Redis(proxy.port); // re-sends unanswered commands
  admin.on("error", () => {});
  try {
    const holder = new Lock(await env.client(), "reset-twice", {
      expire: 60_000,
    });
    await holder.acquire();
    const first = new Lock(await env.client(), "reset-twice", {
      expire: 60_000,
    });
    const second = new Lock(await env.client(), "reset-twice", {
      expire: 60_000,
    });
    const firstWaits = first.acquire({ timeout: 20_000 });
    await queued({ raw: env.command }, "reset-twice");
    const secondWaits = second.acquire({ timeout: 1_500 });
    await queued({ raw: env.command }, "reset-twice", 2);
    await new Lock(admin, "warm").reset(); // the scripts are loaded
    proxy.dropNextReply = true;
    await new Lock(admin, "reset-twice").reset();
    assert.equal(await firstWaits, true);
    assert.equal(await secondWaits, false, "the second waiter still waits");
    assert.equal(first.signal.aborted, false, "the first keeps the lock");
    assert.equal(await env.command("GET", "lock:reset-twice"), first.id);
    await first.release();
  } finally {
    await shutdown(admin);
    await close(admin);
  }
});

Deno.test("a wake-up taken for a Python waiter is put back when this library's wait gives up", async () => {
  await using env = await bed();
  await noTurn(env, "given-back");
  await env.command("SET", "lock:given-back", "python-holder", "EX", 60);
  const client = new SlowClient(env.server.port);
  const python = await RespClient.connect(env.server.port);
  try {
    const controller = new AbortController();
    const waiting = new Lock(client, "given-back").acquire({
      signal: controller.signal,
    }).catch(() => "aborted");
    await queued({ raw: env.command }, "given-back");
    // The next look at the lock answers late, so the wake-up the release
    // leaves is taken and not used before the wait gives up.
    const delayed = new Promise<void>((resolve) =>
      client.switches.onDelayed = resolve
    );
    client.switches.delayNextScript = 1_500;
    await delayed;
    await new Promise<void>((resolve) =>
      client.switches.onBlpop = () => {
        client.switches.onBlpop = undefined;
        setTimeout(resolve, 20);
      }
    );
    // A Python waiter blocks behind this library's waiting connection; the
    // Python holder releases (python's UNLOCK: one wake-up).
    const woken = python.command("BLPOP", "lock-signal:given-back", 4);
    await delay(20);
    await env.command("DEL", "lock:given-back");
    await env.command("LPUSH", "lock-signal:given-back", 1);
    await delay(20);
    controller.abort();
    assert.equal(await waiting, "aborted");
    assert.deepEqual(
      await woken,
      ["lock-signal:given-back", "1"],
      "the Python waiter was woken",
    );
  } finally {
    await python.close();
    await shutdown(client);
    await client.close();
  }
});

/** An ioredis client through `proxy` that neither re-sends nor retries. */
function noResend(proxy: ReplyDropper): Redis {
  const client = new Redis(proxy.port, {
    autoResendUnfulfilledCommands: false,
    maxRetriesPerRequest: 0,
  });
  client.on("error", () => {});
  return client;
}

Deno.test("a holder that resets its lock is told even when the reset's reply is lost", async () => {
  await using env = await bed();
  await using proxy = new ReplyDropper(env.server.port);
  const app = noResend(proxy);
  try {
    const lock = new Lock(app, "reset-own"); // no expiry: only a reset ends it
    await lock.acquire();
    const { signal } = lock;
    await lock.release();
    await lock.acquire();
    proxy.dropNextReply = true;
    await assert.rejects(lock.reset(), LockError);
    assert.ok(lock.signal.aborted, "the holder is told");
    assert.ok(signal.aborted);
    await env.command("DEL", "lock:reset-own");
  } finally {
    await shutdown(app);
    await close(app);
  }
});

Deno.test("a claim of a re-sent acquire whose reply is lost leaves no lock", async () => {
  await using env = await bed();
  await using proxy = new ReplyDropper(env.server.port);
  const app = noResend(proxy);
  try {
    const warm = new Lock(app, "claim-lost");
    await warm.acquire({ blocking: false }); // the scripts are loaded
    await warm.release();
    const lock = new Lock(app, "claim-lost");
    // The first run of an acquire the client re-sent took the lock.
    await env.command("SET", "lock:claim-lost", lock.id);
    // ACQUIRE answers "held with your id"; the CLAIM's reply is lost.
    proxy.passReplies = 1;
    proxy.dropNextReply = true;
    await assert.rejects(lock.acquire({ blocking: false }), LockError);
    await eventually(
      async () => await env.command("EXISTS", "lock:claim-lost") === 0,
      "the lock is let go",
    );
  } finally {
    await shutdown(app);
    await close(app);
  }
});

Deno.test("a non-blocking acquire does not take a lock that a wait of the same instance, given up, still passes on", async () => {
  await using env = await bed();
  await noTurn(env, "passing");
  const holder = new Lock(await env.client(), "passing", { expire: 60_000 });
  await holder.acquire();
  const client = new SlowClient(env.server.port);
  try {
    const lock = new Lock(client, "passing", { expire: 30_000 });
    const waiting = lock.acquire({ timeout: 1_500 });
    await queued({ raw: env.command }, "passing");
    // The next look at the lock (a tick) answers 3 s late: the driver can
    // apply nothing meanwhile. The release hands the lock to the waiter.
    const delayed = new Promise<void>((resolve) =>
      client.switches.onDelayed = resolve
    );
    client.switches.delayNextScript = 3_000;
    await delayed;
    await holder.release();
    assert.equal(await env.command("GET", "lock:passing"), lock.id);
    // The wait gives up at its timeout; its driver will pass the lock on.
    assert.equal(await waiting, false);
    assert.equal(await lock.acquire({ blocking: false }), false);
    await eventually(
      async () => await env.command("GET", "lock:passing") !== lock.id,
      "the driver passes the lock on",
    );
  } finally {
    await shutdown(client);
    await client.close();
  }
});

Deno.test("a release that hands the lock to a waiter of its own process, its reply lost, still gives the waiter the lock", async () => {
  await using env = await bed();
  await noTurn(env, "here-lost");
  await using proxy = new ReplyDropper(env.server.port);
  const app = noResend(proxy);
  try {
    const holder = new Lock(app, "here-lost", { expire: 60_000 });
    await holder.acquire();
    await holder.release(); // the scripts are loaded
    await holder.acquire();
    const waiter = new Lock(app, "here-lost", { expire: 60_000 });
    const waiting = waiter.acquire({ timeout: 10_000 });
    await queued({ raw: env.command }, "here-lost");
    proxy.dropOn = 0; // the application's connection: the release's reply
    proxy.dropNextReply = true;
    const released = performance.now();
    await assert.rejects(holder.release(), LockError);
    assert.equal(await waiting, true);
    // Found by the waiter's next look (a tick), not by the holder's expiry.
    const waited = performance.now() - released;
    assert.ok(waited < 2_500, `acquired ${waited} ms after the release`);
    assert.equal(await env.command("GET", "lock:here-lost"), waiter.id);
    await waiter.release();
    assert.equal(await env.command("EXISTS", "lock:here-lost"), 0);
  } finally {
    await shutdown(app);
    await close(app);
  }
});

Deno.test("a release that queues the next wait of its process, its reply lost or its script run twice, still gives that wait the lock", async () => {
  await using env = await bed();
  for (const resend of [false, true]) {
    const name = `lent-${resend}`;
    await noTurn(env, name);
    await using proxy = new ReplyDropper(env.server.port);
    const app = resend ? new Redis(proxy.port) : noResend(proxy);
    app.on("error", () => {});
    try {
      const options = { expire: 60_000 };
      const holder = new Lock(app, name, options);
      await holder.acquire();
      await holder.release(); // the scripts are loaded
      await holder.acquire();
      const first = new Lock(app, name, options);
      const firstWaits = first.acquire({ timeout: 10_000 });
      await queued({ raw: env.command }, name);
      // Waits in the process behind `first`, not queued: the release of
      // `first` queues it, and hands it the lock, in one script.
      const next = new Lock(app, name, options);
      const nextWaits = next.acquire({ timeout: 10_000 });
      await delay(20);
      await holder.release(); // handed to `first` in its reply
      assert.equal(await firstWaits, true);
      proxy.dropOn = 0; // the application's connection: the release's reply
      proxy.dropNextReply = true;
      await assert.rejects(first.release(), LockError);
      assert.equal(await nextWaits, true);
      assert.equal(await env.command("GET", `lock:${name}`), next.id);
      assert.ok(next.token > first.token);
      await next.release();
      assert.equal(await env.command("EXISTS", `lock:${name}`), 0);
      assert.equal(await env.command("EXISTS", `lock-queue:${name}`), 0);
    } finally {
      await shutdown(app);
      await close(app);
    }
  }
});
