/**
 * The behavioural suite under Node (20 and later), with ioredis: run by
 * node_test.ts, which bundles this file with esbuild (lowering `await
 * using` for Node 20) and runs it as `node node_suite.mjs <redis url>`.
 * Prints one line per scenario and exits non-zero if any failed.
 */

import { Redis } from "ioredis";
import { runAll, runs } from "./_scenarios.ts";

const url = process.argv[2];
const open = async (): Promise<Redis> => {
  const client = new Redis(url);
  await new Promise((resolve) => client.once("ready", resolve));
  return client;
};

const raw = await open();
const failed = await runAll({
  async open() {
    const client = await open();
    return [client, () => client.quit()] as const;
  },
  raw: (command, args) => raw.call(command, ...args),
});
const all = runs();
await raw.quit();
console.log(
  `node ${process.version}: ${all.length - failed} passed, ${failed} failed`,
);
process.exit(failed === 0 ? 0 : 1);
