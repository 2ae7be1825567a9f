/**
 * Lost replies and broken connections: what a command whose reply never
 * came leaves behind, and how waits live through connection faults. The
 * waiting machinery owns its connections, recovers them itself, and never
 * acts on a connection it does not own.
 */

import assert from "node:assert/strict";
import { Lock, LockError } from "../mod.ts";
import { bed, clientIds, delay, eventually } from "./_bed.ts";
import { blockedClients, queued } from "./_scenarios.ts";
import { RespClient } from "./_resp.ts";

Deno.test("a blocking acquire of a free lock whose reply is lost leaves no lock behind", async () => {
  await using env = await bed();
  const client = await env.client({ commandTimeout: 100 });
  for (const expire of [undefined, 60_000]) {
    const lock = new Lock(client, "lost-first", { expire });
    // Scripts loaded: after the pause, the acquire runs (not NOSCRIPT).
    await lock.acquire();
    await lock.release();
    await env.command("CLIENT", "PAUSE", 400, "ALL");
    await assert.rejects(lock.acquire({ timeout: 5_000 }), LockError);
    // The acquire ran after the pause; the clean-up, sent after it on the
    // same connection, ran after it.
    await eventually(
      async () => await env.command("EXISTS", "lock:lost-first") === 0,
      "the lock is free",
      2_000,
    );
  }
});

Deno.test("a blocking acquire of a busy lock whose reply is lost leaves no entry behind", async () => {
  await using env = await bed();
  const holder = new Lock(await env.client(), "lost-busy");
  await holder.acquire();
  const client = await env.client({ commandTimeout: 100 });
  // Scripts loaded: after the pause, the acquire runs (not NOSCRIPT).
  assert.equal(
    await new Lock(client, "lost-busy").acquire({ blocking: false }),
    false,
  );
  await env.command("CLIENT", "PAUSE", 400, "ALL");
  await assert.rejects(
    new Lock(client, "lost-busy").acquire({ timeout: 5_000 }),
    LockError,
  );
  await delay(500);
  assert.equal(await env.command("EXISTS", "lock-queue:lost-busy"), 0);
  await holder.release();
  assert.equal(await env.command("EXISTS", "lock:lost-busy"), 0);
});

Deno.test("a client command timeout shorter than a BLPOP does not fail waits", async () => {
  await using env = await bed();
  const holder = new Lock(await env.client(), "short-timeout");
  await holder.acquire();
  const client = await env.client({ commandTimeout: 300 });
  const waiter = new Lock(client, "short-timeout");
  const waiting = waiter.acquire({ timeout: 10_000 });
  await delay(2_500); // several BLPOPs of one second each
  await holder.release();
  assert.equal(await waiting, true);
  await waiter.release();
});

Deno.test("waits of every name live through the killing of the waiting connections", async () => {
  await using env = await bed();
  const holderClient = await env.client();
  const names = ["killed:1", "killed:2"];
  const holders = names.map((name) => new Lock(holderClient, name));
  for (const holder of holders) await holder.acquire();
  // The application's connection gives up at once while disconnected.
  const client = await env.client({ maxRetriesPerRequest: 0 });
  const waiters = names.map((name) => new Lock(client, name));
  const waits = waiters.map((lock) => lock.acquire({ timeout: 20_000 }));
  for (const name of names) await queued({ raw: env.command }, name);
  await blockedClients({ raw: env.command }, 1);
  // Kill every connection but the test's own and the applications'.
  const spared = new Set([
    String(await env.command("CLIENT", "ID")),
    String(await holderClient.call("CLIENT", "ID")),
    String(await client.call("CLIENT", "ID")),
  ]);
  for (let round = 0; round < 3; round++) {
    for (const id of await clientIds(env.raw)) {
      if (!spared.has(id)) await env.command("CLIENT", "KILL", "ID", id);
    }
    await delay(300);
  }
  for (const holder of holders) await holder.release();
  assert.deepEqual(await Promise.all(waits), [true, true]);
  for (const waiter of waiters) await waiter.release();
});

Deno.test("a wait fails with a LockError saying so when Redis stays unreachable past its timeout", async () => {
  await using env = await bed();
  const holder = new Lock(await env.client(), "unreachable");
  await holder.acquire();
  const client = await env.client({ maxRetriesPerRequest: 0 });
  const waiting = new Lock(client, "unreachable").acquire({ timeout: 1_500 });
  await queued({ raw: env.command }, "unreachable");
  await env.raw.close();
  await env.server.kill();
  const started = performance.now();
  await assert.rejects(waiting, (error: Error) => {
    assert.ok(error instanceof LockError, String(error));
    assert.match(error.message, /unreachable/);
    return true;
  });
  assert.ok(performance.now() - started < 3_000, "not long after its timeout");
  await env.server.restart();
  await env.reconnect();
});

Deno.test("a wait lives through a Redis restart and acquires after", async () => {
  await using env = await bed();
  const holder = new Lock(await env.client(), "restarted");
  await holder.acquire();
  const client = await env.client();
  const waiter = new Lock(client, "restarted");
  const waiting = waiter.acquire({ timeout: 20_000 });
  await queued({ raw: env.command }, "restarted");
  await env.raw.close();
  await env.server.restart(); // empty: the holder's lock is gone
  await env.reconnect();
  assert.equal(await waiting, true);
  await waiter.release();
});

Deno.test("the waiting machinery never sends CLIENT commands, so never hits another's connection", async () => {
  await using env = await bed();
  // An unrelated application blocks on its own list.
  let other = await RespClient.connect(env.server.port);
  let jobs = other.command("BLPOP", "jobs", 0);
  try {
    const holderClient = await env.client();
    const client = await env.client();
    for (let round = 0; round < 2; round++) {
      const holders = ["cmd:1", "cmd:2", "cmd:3"].map((name) =>
        new Lock(holderClient, name)
      );
      for (const holder of holders) await holder.acquire();
      // Names join one after another: the running BLPOP must take each.
      const waits = [];
      for (const holder of holders) {
        const waiter = new Lock(client, holder.name);
        waits.push(
          waiter.acquire({ timeout: 10_000 }).then(async (ok) => {
            await waiter.release();
            return ok;
          }),
        );
        await queued({ raw: env.command }, holder.name);
        await delay(50);
      }
      for (const holder of holders.reverse()) await holder.release();
      assert.deepEqual(await Promise.all(waits), [true, true, true]);
      if (round === 0) {
        // Across a restart client ids start again: one remembered would
        // now name someone else's connection.
        await env.raw.close();
        await other.close();
        await jobs.catch(() => {});
        await env.server.restart();
        await env.reconnect();
        other = await RespClient.connect(env.server.port);
        jobs = other.command("BLPOP", "jobs", 0);
      }
    }
    let unblocked = false;
    jobs.then(() => unblocked = true, () => {});
    await delay(100);
    assert.equal(unblocked, false, "the other application still waits");
    const stats = String(await env.command("INFO", "commandstats"));
    assert.doesNotMatch(stats, /cmdstat_client\|/, "no CLIENT command sent");
  } finally {
    await other.close();
    await jobs.catch(() => {});
  }
});
