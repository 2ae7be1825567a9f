/**
 * Runs the behavioural suite under Node with ioredis, on a server this test
 * starts. Needs `node` (20 or later) and `npx` on PATH: esbuild, fetched
 * from the npm registry, bundles the suite for Node.
 */

import assert from "node:assert/strict";
import { runs } from "./_scenarios.ts";
import { RedisServer } from "./_server.ts";

const ESBUILD = "esbuild@0.25.9";

Deno.test("Lock with ioredis, under Node", async () => {
  const root = new URL("../", import.meta.url).pathname;
  const out = `${root}.tmp/node_suite.mjs`;
  await Deno.mkdir(`${root}.tmp`, { recursive: true });
  const bundled = await new Deno.Command("npx", {
    args: [
      "--yes",
      ESBUILD,
      new URL("./node_suite.ts", import.meta.url).pathname,
      "--bundle",
      "--platform=node",
      "--target=node20",
      "--format=esm",
      "--packages=external",
      `--outfile=${out}`,
      "--log-level=error",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(
    bundled.code,
    0,
    `esbuild failed:\n${new TextDecoder().decode(bundled.stderr)}`,
  );
  await using server = await RedisServer.start();
  // A suite that hangs (a wait that never settles) fails instead.
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), 180_000);
  const { code, stdout, stderr } = await new Deno.Command("node", {
    args: [out, server.url],
    stdout: "piped",
    stderr: "piped",
    signal: controller.signal,
  }).output().finally(() => clearTimeout(timer));
  const output = new TextDecoder().decode(stdout);
  const errors = new TextDecoder().decode(stderr);
  assert.equal(code, 0, `node failed:\n${output}\n${errors}`);
  for (const { name } of runs()) {
    assert.ok(output.includes(`ok ${name}\n`), `ran ${name}`);
  }
  console.log(output.trim().split("\n").at(-1));
});
