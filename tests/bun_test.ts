/**
 * Runs the behavioural suite under Bun with its built-in `RedisClient`, on a
 * server this test starts. Needs `bun` on PATH (`npm i -g bun`).
 */

import assert from "node:assert/strict";
import { runs } from "./_scenarios.ts";
import { RedisServer } from "./_server.ts";

Deno.test("Lock with Bun's RedisClient, under Bun", async () => {
  await using server = await RedisServer.start();
  const { code, stdout, stderr } = await new Deno.Command("bun", {
    args: [new URL("./bun_suite.ts", import.meta.url).pathname, server.url],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const output = new TextDecoder().decode(stdout);
  const errors = new TextDecoder().decode(stderr);
  assert.equal(code, 0, `bun failed:\n${output}\n${errors}`);
  for (const { name } of runs()) {
    assert.ok(output.includes(`ok ${name}\n`), `ran ${name}`);
  }
  assert.ok(output.includes("ok pubsub hand-over\n"), output);
});
