/**
 * The `"poll"` wake transport, beyond the behavioural suite that runs with
 * an HTTP-like client in lock_test.ts: how often it polls, what wakes it,
 * and how it recovers.
 */

import assert from "node:assert/strict";
import { createClient } from "redis";
import {
  acquire,
  Lock,
  LockError,
  type RedisClient,
  shutdown,
} from "../mod.ts";
import { type Bed, bed, delay, killOwnConnections } from "./_bed.ts";
import { HttpLikeClient, SubscribingClient } from "./_clients.ts";
import { RespClient } from "./_resp.ts";
import { queued } from "./_scenarios.ts";

/** An HTTP-like client that notes when each poll went out. */
class CountingClient extends HttpLikeClient {
  readonly polls: number[] = [];

  override async send(command: string, args: string[]): Promise<unknown> {
    // The poll script's first key is the process's wake list; an EVALSHA
    // refused with NOSCRIPT is sent again as EVAL: one poll.
    const poll = command.startsWith("EVAL") &&
      args[2]?.startsWith("lock-wake:");
    const at = performance.now();
    try {
      const reply = await super.send(command, args);
      if (poll) this.polls.push(at);
      return reply;
    } catch (error) {
      if (poll && !/NOSCRIPT/.test(String(error))) this.polls.push(at);
      throw error;
    }
  }
}

async function countingClient(port: number): Promise<CountingClient> {
  return new CountingClient(await RespClient.connect(port));
}

Deno.test("a poller never polls faster than its interval, and not much slower", async () => {
  await using env = await bed();
  const holder = await acquire(await env.client(), "interval");
  const client = await countingClient(env.server.port);
  try {
    const interval = 40;
    const waiting = new Lock(client, "interval", { pollInterval: interval })
      .acquire({ timeout: 1_500 });
    assert.equal(await waiting, false);
    const gaps = client.polls.slice(1).map((at, i) => at - client.polls[i]);
    assert.ok(gaps.length >= 15, `${gaps.length + 1} polls in 1.5 s`);
    // Timers may fire up to a millisecond early.
    assert.ok(Math.min(...gaps) >= interval - 1, `gaps ${gaps}`);
    assert.ok(Math.max(...gaps) <= interval * 1.5 + 60, `gaps ${gaps}`);
    assert.deepEqual(client.refused, []);
  } finally {
    await shutdown(client);
    await client.close();
  }
  await holder.release();
});

Deno.test("a poller takes the lock when the holder's expiry passes, not at its next poll", async () => {
  await using env = await bed();
  // The holder dies holding the lock: nobody releases it.
  await new Lock(await env.client(), "expiry", { expire: 300 }).acquire();
  const client = await countingClient(env.server.port);
  try {
    const started = performance.now();
    const lock = new Lock(client, "expiry", { pollInterval: 10_000 });
    assert.equal(await lock.acquire({ timeout: 5_000 }), true);
    const waited = performance.now() - started;
    assert.ok(waited < 900, `acquired after ${waited} ms`);
    assert.equal(client.polls.length, 1, "one poll, before the pause");
    await lock.release();
  } finally {
    await shutdown(client);
    await client.close();
  }
});

Deno.test("a poller is handed the lock and hears a Python-style wake-up", async () => {
  await using env = await bed();
  const client = await countingClient(env.server.port);
  try {
    // First come, first served: the release hands the lock over.
    const holder = await acquire(await env.client(), "handed");
    const waiter = new Lock(client, "handed", { pollInterval: 20 });
    const waiting = waiter.acquire({ timeout: 5_000 });
    await queued({ raw: env.command }, "handed");
    await holder.release();
    assert.equal(await waiting, true);
    assert.equal(await env.command("GET", "lock:handed"), waiter.id);
    await waiter.release();
    // A waiter hears the signal list, where python-redis-lock's releases
    // push: here a Python release is played by hand.
    await env.command("SET", "lock:racing", "python-holder", "EX", 60);
    const racer = new Lock(client, "racing", { pollInterval: 5_000 });
    const racing = racer.acquire({ timeout: 4_000 });
    await queued({ raw: env.command }, "racing");
    await env.command("DEL", "lock:racing");
    await env.command("LPUSH", "lock-signal:racing", "1");
    assert.equal(await racing, true);
    await racer.release();
    assert.deepEqual(client.refused, []);
  } finally {
    await shutdown(client);
    await client.close();
  }
});

Deno.test("transport poll on a client that opens connections polls on its own connection, never BLPOP", async () => {
  await using env = await bed();
  const holderClient = await env.client();
  const client = await env.client({ maxRetriesPerRequest: 0 });
  await env.command("CONFIG", "RESETSTAT");
  const holder = await acquire(holderClient, "own");
  const waiter = new Lock(client, "own", {
    transport: "poll",
    pollInterval: 20,
  });
  const waiting = waiter.acquire({ timeout: 20_000 });
  await queued({ raw: env.command }, "own");
  // Killing the waiter's connections: polls recover on a new one.
  await killOwnConnections(env, [holderClient, client], 3, 200);
  await holder.release();
  assert.equal(await waiting, true);
  await waiter.release();
  const stats = String(await env.command("INFO", "commandstats"));
  assert.doesNotMatch(stats, /cmdstat_blpop:/);
});

Deno.test("a poller's wait fails with a LockError saying so when Redis stays unreachable past its timeout", async () => {
  await using env = await bed();
  const holder = new Lock(await env.client(), "unreachable");
  await holder.acquire();
  const client = await countingClient(env.server.port);
  try {
    const waiting = new Lock(client, "unreachable", { pollInterval: 20 })
      .acquire({ timeout: 1_500 });
    await queued({ raw: env.command }, "unreachable");
    await env.raw.close();
    await env.server.kill();
    await assert.rejects(waiting, (error: Error) => {
      assert.ok(error instanceof LockError, String(error));
      assert.match(error.message, /unreachable/);
      return true;
    });
  } finally {
    await shutdown(client);
    await client.close();
  }
  await env.server.restart();
  await env.reconnect();
});

/** No racers' turn is due on `name` for a minute: releases hand over. */
async function noTurn(env: { command: Bed["command"] }, name: string) {
  await env.command("SET", `lock-turn:${name}`, "q", "PX", 60_000);
}

/** Hand-overs reach a `"pubsub"` waiter long before its every-second poll. */
async function promptHandOvers(
  env: Awaited<ReturnType<typeof bed>>,
  client: RedisClient,
  name: string,
): Promise<void> {
  const holderClient = await env.client();
  for (let round = 0; round < 3; round++) {
    const holder = await acquire(holderClient, name);
    const waiter = new Lock(client, name, { transport: "pubsub" });
    const waiting = waiter.acquire({ timeout: 5_000 });
    await queued({ raw: env.command }, name);
    await delay(150);
    const released = performance.now();
    await holder.release();
    assert.equal(await waiting, true);
    const waited = performance.now() - released;
    assert.ok(waited < 300, `round ${round}: handed over after ${waited} ms`);
    await waiter.release();
  }
}

Deno.test("pubsub: a hand-over is published, with ioredis, redis v5 and a subscribing { send } client", async () => {
  await using env = await bed();
  await env.command("CONFIG", "RESETSTAT");
  await promptHandOvers(env, await env.client(), "io");
  const node = await createClient({ url: env.server.url }).connect();
  try {
    await promptHandOvers(env, node as unknown as RedisClient, "node");
  } finally {
    await shutdown(node as unknown as RedisClient);
    await node.close();
  }
  const subscribing = new SubscribingClient(
    await RespClient.connect(env.server.port),
    env.server.port,
  );
  try {
    await promptHandOvers(env, subscribing, "send");
    assert.deepEqual(subscribing.refused, []);
  } finally {
    await shutdown(subscribing);
    await subscribing.close();
  }
  const stats = String(await env.command("INFO", "commandstats"));
  assert.doesNotMatch(stats, /cmdstat_blpop:/);
  assert.match(stats, /cmdstat_subscribe:/);
});

Deno.test("pubsub: a killed subscription is made again, and hand-overs go on", async () => {
  await using env = await bed();
  await noTurn(env, "resubscribed");
  const holderClient = await env.client();
  const client = await env.client();
  const waiter = new Lock(client, "resubscribed", { transport: "pubsub" });
  for (let round = 0; round < 3; round++) {
    const holder = await acquire(holderClient, "resubscribed");
    const waiting = waiter.acquire({ timeout: 10_000 });
    await queued({ raw: env.command }, "resubscribed");
    await env.command("CLIENT", "KILL", "TYPE", "pubsub");
    await delay(300);
    const released = performance.now();
    await holder.release();
    assert.equal(await waiting, true);
    // Heard on the new subscription, not at the next poll a second later.
    const waited = performance.now() - released;
    assert.ok(waited < 300, `round ${round}: handed over after ${waited} ms`);
    await waiter.release();
  }
});

Deno.test("pubsub: a client that cannot subscribe is refused at once", async () => {
  await using env = await bed();
  const http = new HttpLikeClient(await RespClient.connect(env.server.port));
  try {
    assert.throws(
      () => new Lock(http, "x", { transport: "pubsub" }),
      (error: Error) =>
        error instanceof TypeError && /'transport'/.test(error.message),
    );
  } finally {
    await http.close();
  }
});
