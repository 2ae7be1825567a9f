/**
 * The behavioural suite under Bun, with Bun's built-in `RedisClient`: run by
 * bun_test.ts as `bun tests/bun_suite.ts <redis url>`. Prints one line per
 * scenario and exits non-zero if any failed.
 */

// @ts-ignore: the "bun" module exists only under Bun.
import { RedisClient } from "bun";
import { runs, runScenario } from "./_scenarios.ts";

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
let failed = 0;
const all = runs();
for (const { scenario, index, fair, name } of all) {
  try {
    await runScenario(scenario, index, {
      async open() {
        const client = await open();
        return [client, () => Promise.resolve(client.close())] as const;
      },
      raw: (command, args) => raw.send(command, args),
    }, fair);
    console.log(`ok ${name}`);
  } catch (error) {
    failed++;
    console.log(`FAILED ${name}: ${(error as Error).stack ?? error}`);
  }
}
raw.close();
console.log(`${all.length - failed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
