/** The test bed itself: a server of the test's own that it can stop, kill and restart. */

import assert from "node:assert/strict";
import { RespClient } from "./_resp.ts";
import { RedisServer } from "./_server.ts";

Deno.test("RedisServer starts on a free port, and stops, is killed and restarts", async () => {
  await using server = await RedisServer.start();
  await using other = await RedisServer.start();
  assert.notEqual(server.port, other.port);
  assert.notEqual(server.port, 6379);

  let client = await RespClient.connect(server.port);
  assert.equal(await client.command("SET", "k", "v"), "OK");
  await client.close();

  await server.kill();
  assert.equal(server.running, false);
  await assert.rejects(RespClient.connect(server.port));

  await server.restart();
  client = await RespClient.connect(server.port);
  assert.equal(await client.command("GET", "k"), null, "restarted empty");
  await client.close();

  await server.stop();
  await assert.rejects(RespClient.connect(server.port));
});

Deno.test("RedisServer does not take another server on its port for its own", async () => {
  // Servers started at once may draw the same free port: the second fails to
  // bind and exits, and must not pass for started because the first answers.
  await using server = await RedisServer.start();
  const dir = await Deno.makeTempDir({ prefix: "redis-lock-test-" });
  // deno-lint-ignore no-explicit-any
  const twin: RedisServer = new (RedisServer as any)(server.port, dir, []);
  await assert.rejects(twin.restart(), /did not start/);
  assert.equal(twin.running, false);
  await twin[Symbol.asyncDispose]();
  assert.equal(server.running, true);
});
