/**
 * The behavioural suite under Bun, with Bun's built-in `RedisClient`: run by
 * bun_test.ts as `bun tests/bun_suite.ts <redis url>`. Prints one line per
 * scenario and exits non-zero if any failed.
 */

// @ts-ignore: the "bun" module exists only under Bun.
import { RedisClient } from "bun";
import { runAll, runs } from "./_scenarios.ts";

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
raw.close();
console.log(`${all.length - failed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
