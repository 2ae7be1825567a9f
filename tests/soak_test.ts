/**
 * Many cycles in one process leave nothing growing: the heap, timers (the
 * test's sanitizers fail on a timer left running) and keys stay as they
 * were. `FAULTS_LONG=1` runs ten times as many. Needs
 * `--v8-flags=--expose-gc`.
 */

import assert from "node:assert/strict";
import { Lock } from "../mod.ts";
import { bed } from "./_bed.ts";

const LONG = Deno.env.get("FAULTS_LONG") === "1";
const CYCLES = LONG ? 200_000 : 20_000;
const ABORTED = LONG ? 20_000 : 2_000;

const gc = (globalThis as { gc?: () => void }).gc;

function heap(): number {
  gc!();
  gc!();
  return Deno.memoryUsage().heapUsed;
}

/** Keys that stay without an expiry. */
async function lasting(
  command: (c: string, ...a: string[]) => Promise<unknown>,
): Promise<string[]> {
  const lasting: string[] = [];
  for (const key of await command("KEYS", "*") as string[]) {
    if (await command("PTTL", key) === -1) lasting.push(key);
  }
  return lasting.sort();
}

Deno.test(`${CYCLES} acquire/release cycles and ${ABORTED} given-up waits leave heap, timers and keys as they were`, async () => {
  assert.ok(gc, "run with --v8-flags=--expose-gc");
  await using env = await bed();
  const client = await env.client();
  const holderClient = await env.client();
  const cycles = async (count: number) => {
    const locks = Array.from({ length: 4 }, () => new Lock(client, "soak"));
    for (let i = 0; i < count; i++) {
      const lock = i % 8 === 0 ? new Lock(client, "soak") : locks[i % 4];
      await lock.acquire();
      await lock.release();
    }
  };
  const givenUp = async (count: number) => {
    const holder = new Lock(holderClient, "soak");
    await holder.acquire();
    for (let i = 0; i < count; i++) {
      const controller = new AbortController();
      const waiting = new Lock(client, "soak").acquire({
        signal: controller.signal,
        timeout: i % 2 === 0 ? 2 : undefined,
      });
      if (i % 2 === 1) {
        await new Promise((resolve) => setTimeout(resolve, i % 4));
        controller.abort();
      }
      await waiting.catch(() => false);
    }
    await holder.release();
  };
  // Warm up: the connections, the scripts, the JIT.
  await cycles(1_000);
  await givenUp(200);
  const before = heap();
  const keysBefore = await lasting(env.command);
  await cycles(CYCLES);
  await givenUp(ABORTED);
  const grown = heap() - before;
  assert.ok(
    grown < 4 * 1024 * 1024,
    `the heap grew by ${Math.round(grown / 1024)} kB`,
  );
  assert.deepEqual(await lasting(env.command), keysBefore);
  assert.equal(await env.command("EXISTS", "lock:soak"), 0);
  assert.equal(await env.command("EXISTS", "lock-queue:soak"), 0);
  console.log(
    `heap ${Math.round(before / 1024)} kB before, ${
      Math.round(grown / 1024)
    } kB more after; keys without expiry: ${keysBefore.join(", ")}`,
  );
});
