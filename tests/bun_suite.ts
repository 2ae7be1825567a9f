/**
 * The behavioural suite under Bun, with Bun's built-in `RedisClient`: run by
 * bun_test.ts as `bun tests/bun_suite.ts <redis url>`. Prints one line per
 * scenario and exits non-zero if any failed.
 */

// @ts-ignore: the "bun" module exists only under Bun.
import { RedisClient } from "bun";
import { runAll, runs } from "./_scenarios.ts";
import { acquire, Lock, shutdown } from "../mod.ts";

interface BunRedis {
  send(command: string, args: string[]): Promise<unknown>;
  close(): void;
  connect(): Promise<void>;
}

const url = process.argv[2];
const open = async (): Promise<BunRedis> => {
  const client = new RedisClient(url) as BunRedis;
  await client.connect();
  return client;
};

const raw = await open();
const failed = await runAll({
  async open() {
    const client = await open();
    return [client, () => Promise.resolve(client.close())] as const;
  },
  raw: (command, args) => raw.send(command, args),
});
const all = runs();

/**
 * `transport: "pubsub"` with Bun's client (its `duplicate()` and
 * `subscribe()`): a hand-over reaches the waiter at once, well before the
 * second a poll would take.
 */
async function pubsubHandOver(): Promise<boolean> {
  const [first, second] = [await open(), await open()];
  try {
    const holder = await acquire(first, "bun:pubsub", { expire: 20_000 });
    const waiting = new Lock(second, "bun:pubsub", { transport: "pubsub" })
      .acquire({ timeout: 10_000 });
    await new Promise((resolve) => setTimeout(resolve, 300));
    const released = performance.now();
    await holder.release();
    const acquired = await waiting;
    const waited = performance.now() - released;
    await new Lock(second, "bun:pubsub").reset();
    if (acquired && waited < 300) return true;
    console.log(`pubsub hand-over: acquired ${acquired} after ${waited} ms`);
    return false;
  } finally {
    await shutdown(first);
    await shutdown(second);
    first.close();
    second.close();
  }
}
const pubsub = await pubsubHandOver().catch((error) => {
  console.log(error);
  return false;
});
if (pubsub) console.log("ok pubsub hand-over");
raw.close();
console.log(`${all.length - failed} passed, ${failed} failed`);
process.exit(failed === 0 && pubsub ? 0 : 1);
