/**
 * Redis restarts. Without persistence the lock data is lost: fencing tokens
 * must not go back, holders must be told, and a process that saw the old
 * data admits no new holder before the old holders' expiry could have
 * passed. With `appendfsync always` the lock and its waiters survive.
 */

import assert from "node:assert/strict";
import { acquire, Lock, LockLostError } from "../mod.ts";
import { abortedAt, bed, delay } from "./_bed.ts";
import { queued } from "./_scenarios.ts";

Deno.test("fencing tokens never go back, even when a restart loses the counter", async () => {
  await using env = await bed();
  const before = await acquire(await env.client(), "fenced");
  await before.release();
  await env.raw.close();
  await env.server.restart();
  await env.reconnect();
  // A process that never saw the old data draws the next token.
  const after = await acquire(await env.client(), "fenced");
  assert.ok(after.token > before.token, `${after.token} > ${before.token}`);
  const again = await acquire(await env.client(), "fenced:other");
  assert.ok(again.token > after.token);
  await after.release();
  await again.release();
});

Deno.test("after a restart that loses the lock, the holder is told before a waiter that saw it acquires", async () => {
  await using env = await bed();
  const expire = 2_000;
  const holder = new Lock(await env.client(), "lost-data", {
    expire,
    autoRenewal: true,
  });
  await holder.acquire();
  const told = abortedAt(holder.signal);
  const waiter = new Lock(await env.client(), "lost-data", { expire });
  const waiting = waiter.acquire({ timeout: 20_000 });
  await queued({ raw: env.command }, "lost-data");
  await delay(100);
  await env.raw.close();
  const restartedAt = performance.now();
  await env.server.restart();
  await env.reconnect();
  assert.equal(await waiting, true);
  const acquiredAt = performance.now();
  assert.ok(holder.signal.aborted, "the old holder was told first");
  assert.ok(holder.signal.reason instanceof LockLostError);
  assert.ok(await told <= acquiredAt);
  assert.ok(
    acquiredAt - restartedAt >= expire - 200,
    `the waiter waited out the old holder's expiry: ${
      Math.round(acquiredAt - restartedAt)
    } ms`,
  );
  assert.ok(waiter.token > holder.token, "its token is higher");
  await waiter.release();
});

Deno.test("a restart with appendfsync always keeps the lock, its holder and its waiters", async () => {
  await using env = await bed({
    args: ["--appendonly", "yes", "--appendfsync", "always"],
  });
  const holder = new Lock(await env.client(), "kept", {
    expire: 10_000,
    autoRenewal: true,
  });
  await holder.acquire();
  const waiter = new Lock(await env.client(), "kept", { expire: 10_000 });
  const waiting = waiter.acquire({ timeout: 20_000 });
  await queued({ raw: env.command }, "kept");
  await env.raw.close();
  await env.server.kill();
  await env.server.restart();
  await env.reconnect();
  assert.equal(await env.command("GET", "lock:kept"), holder.id);
  await delay(1_500); // renewals and the waiter's looks go on
  assert.equal(holder.signal.aborted, false, "the holder kept its lock");
  assert.equal(await env.command("LLEN", "lock-queue:kept"), 1);
  await holder.release();
  assert.equal(await waiting, true);
  assert.ok(waiter.token > holder.token);
  await waiter.release();
});

Deno.test("after a restart that loses the lock, a waiter with a shorter expiry waits only its own grace once the one before gives up", async () => {
  await using env = await bed();
  const client = await env.client();
  const holder = new Lock(client, "graces", {
    expire: 8_000,
    autoRenewal: true,
  });
  await holder.acquire();
  // Two waits of the process holding it: the first would wait out 8 s of
  // grace after the restart, the second only 2 s.
  const patient = new AbortController();
  const first = new Lock(client, "graces", { expire: 8_000 }).acquire({
    timeout: 20_000,
    signal: patient.signal,
  }).catch(() => false);
  await queued({ raw: env.command }, "graces");
  const second = new Lock(client, "graces", { expire: 2_000 });
  const waiting = second.acquire({ timeout: 20_000 });
  await delay(100);
  await env.raw.close();
  const restartedAt = performance.now();
  await env.server.restart();
  await env.reconnect();
  // The process learns of the restart (the holder is told), the first wait
  // waits out its grace, then gives up: the second is head, with its own,
  // shorter grace.
  await abortedAt(holder.signal);
  await delay(500);
  patient.abort();
  assert.equal(await first, false);
  assert.equal(await waiting, true);
  const waited = performance.now() - restartedAt;
  assert.ok(waited >= 1_800, `waited out its own grace: ${waited} ms`);
  // Not the first wait's 8 s, which its driver's timer was set for.
  assert.ok(waited < 6_000, `acquired after ${Math.round(waited)} ms`);
  await second.release();
});
