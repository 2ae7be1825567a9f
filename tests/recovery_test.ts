/**
 * Lost replies and broken connections: what a command whose reply never
 * came leaves behind, and how waits live through connection faults. The
 * waiting machinery owns its connections, recovers them itself, and never
 * acts on a connection it does not own.
 */

import assert from "node:assert/strict";
import { Lock, LockError, shutdown } from "../mod.ts";
import {
  bed,
  clientIds,
  delay,
  eventually,
  killOwnConnections,
} from "./_bed.ts";
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
  await killOwnConnections(env, [holderClient, client]);
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

/** The id of the connection blocked in a BLPOP (the waiting connection). */
async function blpopConnection(raw: RespClient): Promise<string> {
  let id: string | undefined;
  await eventually(async () => {
    const list = String(await raw.command("CLIENT", "LIST"));
    id = /\bid=(\d+)\b[^\n]*\bcmd=blpop\b/.exec(list)?.[1];
    return id !== undefined;
  }, "a waiting connection");
  return id!;
}

Deno.test("a BLPOP ended by UNBLOCKED (a failover) does not fail the waits", async () => {
  await using env = await bed();
  const holder = new Lock(await env.client(), "unblocked");
  await holder.acquire();
  const waiter = new Lock(await env.client(), "unblocked");
  const waiting = waiter.acquire({ timeout: 10_000 });
  await queued({ raw: env.command }, "unblocked");
  for (let i = 0; i < 3; i++) {
    const id = await blpopConnection(env.raw);
    await env.command("CLIENT", "UNBLOCK", id, "ERROR");
    await delay(100);
  }
  await holder.release();
  assert.equal(await waiting, true);
  await waiter.release();
});

Deno.test("the waiting connection backs off while Redis refuses its commands", async () => {
  await using env = await bed({ args: ["--save", "3600 1"] });
  const holder = new Lock(await env.client(), "refused");
  await holder.acquire();
  const waiter = new Lock(await env.client(), "refused");
  const waiting = waiter.acquire({ timeout: 20_000 });
  await queued({ raw: env.command }, "refused");
  // A background save fails (its directory is gone): Redis refuses writes,
  // BLPOP and PING among them, with MISCONF until a save succeeds.
  const [, dir] = await env.command("CONFIG", "GET", "dir") as string[];
  await Deno.remove(dir, { recursive: true });
  await env.command("BGSAVE");
  await eventually(
    async () =>
      /rdb_last_bgsave_status:err/.test(
        String(await env.command("INFO", "persistence")),
      ),
    "the save failed",
  );
  await env.command("CONFIG", "RESETSTAT");
  await delay(2_000);
  const stats = String(await env.command("INFO", "commandstats"));
  let refused = 0;
  for (
    const [, calls, rejected] of stats.matchAll(
      /cmdstat_(?:ping|blpop):calls=(\d+)[^\n]*?rejected_calls=(\d+)/g,
    )
  ) {
    refused += Number(calls) + Number(rejected);
  }
  assert.ok(refused < 100, `${refused} commands in 2 s while refused`);
  await env.command("CONFIG", "SET", "stop-writes-on-bgsave-error", "no");
  await holder.release();
  assert.equal(await waiting, true);
  await waiter.release();
  // Its directory is gone for good: stop it without a final save.
  await env.command("CONFIG", "SET", "save", "");
  await Deno.mkdir(dir, { recursive: true });
});

Deno.test("shutdown() returns in bounded time when Redis answers nothing", async () => {
  await using env = await bed();
  const holder = new Lock(await env.client(), "frozen");
  await holder.acquire();
  const client = await env.client();
  const waiting = new Lock(client, "frozen").acquire().catch((error) => error);
  await queued({ raw: env.command }, "frozen");
  env.server.pause();
  try {
    const started = performance.now();
    await shutdown(client);
    const took = performance.now() - started;
    assert.ok(took < 3_500, `shutdown took ${Math.round(took)} ms`);
    assert.match(String(await waiting), /shut down/);
  } finally {
    env.server.resume();
  }
  await holder.release();
});

Deno.test("the waiting connections close by themselves a second or two after the last wait", async () => {
  await using env = await bed();
  const holderClient = await env.client();
  const client = await env.client();
  const baseline = (await clientIds(env.raw)).length;
  for (let round = 0; round < 5; round++) {
    const holder = new Lock(holderClient, `idle:${round}`);
    await holder.acquire();
    assert.equal(
      await new Lock(client, `idle:${round}`).acquire({
        // Near a BLPOP's second: the last one returns after the wait ends.
        timeout: 950 + Math.random() * 150,
      }),
      false,
    );
    await holder.release();
    await eventually(
      async () => (await clientIds(env.raw)).length === baseline,
      `round ${round}: the waiter's connections closed`,
      3_500,
    );
  }
});

Deno.test("a waiter refused a connection (max clients) waits and recovers", async () => {
  await using env = await bed();
  const holder = new Lock(await env.client(), "crowded");
  await holder.acquire();
  const client = await env.client();
  // No room for the waiter's own connections.
  const connected = (await clientIds(env.raw)).length;
  await env.command("CONFIG", "SET", "maxclients", connected);
  const waiting = new Lock(client, "crowded").acquire({ timeout: 20_000 });
  await delay(1_500);
  await env.command("CONFIG", "SET", "maxclients", 10_000);
  await queued({ raw: env.command }, "crowded");
  await holder.release();
  assert.equal(await waiting, true);
  await new Lock(client, "crowded", {
    id: await env.command("GET", "lock:crowded") as string,
  }).release();
});

Deno.test("waits failed by errors that only repeat (NOPERM) leave the waiting connections free to close", async () => {
  await using env = await bed();
  const holder = new Lock(await env.client(), "refused");
  await holder.acquire();
  const client = await env.client();
  const baseline = (await clientIds(env.raw)).length;
  const waiting = new Lock(client, "refused").acquire({ timeout: 20_000 });
  await queued({ raw: env.command }, "refused");
  // Every script is refused from now: the next look fails the wait, and
  // the look after it fails too.
  await env.command("ACL", "SETUSER", "default", "-evalsha", "-eval");
  try {
    await assert.rejects(waiting, LockError);
    await delay(1_500);
  } finally {
    await env.command("ACL", "SETUSER", "default", "+@all");
  }
  await eventually(
    async () => (await clientIds(env.raw)).length === baseline,
    "the waiter's connections closed",
    4_000,
  );
  await holder.release();
});
