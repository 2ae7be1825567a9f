/**
 * What a held lock does on its own: auto-renewal, and stopping it once the
 * lock object is garbage collected (python-redis-lock's
 * test_auto_renewal_stops_after_gc). Needs `--v8-flags=--expose-gc`.
 */

import assert from "node:assert/strict";
import { Redis } from "ioredis";
import { Lock, LockLostError } from "../mod.ts";
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
