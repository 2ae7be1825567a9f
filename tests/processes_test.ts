/**
 * Mutual exclusion across processes, as python-redis-lock's test_no_overlap
 * and test_no_overlap2: several worker processes contend for one lock.
 */

import assert from "node:assert/strict";
import { RespClient } from "./_resp.ts";
import { RedisServer } from "./_server.ts";
import { denoScript } from "./_deno.ts";

const worker = new URL("./_worker.ts", import.meta.url);

function spawn(...args: string[]): Deno.ChildProcess {
  return denoScript(worker, args, { stdout: "piped", stderr: "inherit" })
    .spawn();
}

/**
 * The holdings the workers printed, in order, checked to be disjoint:
 * `[start, end, pid]` each.
 */
function disjointHoldings(
  results: Deno.CommandOutput[],
): [number, number, number][] {
  const intervals: [number, number, number][] = [];
  for (const result of results) {
    assert.equal(result.code, 0);
    const { pid, intervals: own } = JSON.parse(
      new TextDecoder().decode(result.stdout),
    );
    for (const [start, end] of own) intervals.push([start, end, pid]);
  }
  intervals.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < intervals.length; i++) {
    const [start, , pid] = intervals[i];
    const [, previousEnd, previousPid] = intervals[i - 1];
    assert.ok(
      start >= previousEnd,
      `process ${pid} acquired at ${start} while ${previousPid} held the lock until ${previousEnd}`,
    );
  }
  return intervals;
}

Deno.test("no two processes hold the lock at once, and no update under it is lost", async () => {
  const processes = 6;
  const iterations = 40;
  await using server = await RedisServer.start();
  const children = Array.from(
    { length: processes },
    () => spawn("count", String(server.port), "overlap", String(iterations)),
  );
  const results = await Promise.all(children.map((child) => child.output()));
  const intervals = disjointHoldings(results);
  assert.equal(intervals.length, processes * iterations);
  const raw = await RespClient.connect(server.port);
  assert.equal(
    await raw.command("GET", "counter:overlap"),
    String(processes * iterations),
  );
  assert.equal(await raw.command("EXISTS", "lock:overlap"), 0);
  await raw.close();
});

Deno.test("of processes that all ask at the same moment, exactly one gets the lock", async () => {
  const processes = 8;
  await using server = await RedisServer.start();
  const startAt = Date.now() + 2_000;
  const children = Array.from(
    { length: processes },
    () => spawn("hold", String(server.port), "once", String(startAt)),
  );
  const raw = await RespClient.connect(server.port);
  try {
    // Once every other process sleeps in BLPOP, exactly one holds the lock.
    const deadline = Date.now() + 30_000;
    let blocked = 0;
    while (blocked < processes - 1 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      const info = String(await raw.command("INFO", "clients"));
      blocked = Number(/blocked_clients:(\d+)/.exec(info)![1]);
    }
    assert.equal(blocked, processes - 1, "the others are waiting, not polling");
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(await raw.command("GET", "acquired:once"), "1");
  } finally {
    for (const child of children) {
      child.kill("SIGKILL");
      await child.output();
    }
    await raw.close();
  }
});

Deno.test("the demo shows no lost update with the lock", async () => {
  await using server = await RedisServer.start();
  const { code, stdout } = await denoScript(
    new URL("../demo/demo.ts", import.meta.url),
    [],
    {
      env: { REDIS_URL: server.url, DEMO_SECONDS: "1" },
      stdout: "piped",
      stderr: "inherit",
    },
  ).output();
  const output = new TextDecoder().decode(stdout);
  assert.equal(code, 0, output);
  assert.match(output, /with @x\/redis-lock .* ✔ no update lost/);
});

Deno.test("Redlock: no two processes hold the lock at once while masters restart, and no update is lost", async () => {
  const processes = 3;
  const servers = await Promise.all(
    Array.from({ length: 5 }, () => RedisServer.start()),
  );
  await using store = await RedisServer.start();
  try {
    for (const server of servers) {
      const raw = await RespClient.connect(server.port);
      await raw.command("SET", "lock-start", "0"); // new masters: no wait
      await raw.close();
    }
    const ports = servers.map((server) => String(server.port)).join(",");
    const children = Array.from(
      { length: processes },
      () => spawn("redlock", ports, "redlock", "3000", String(store.port)),
    );
    // Restart masters one at a time, empty, while the workers run.
    for (let round = 0; round < 5; round++) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      await servers[round % 5].restart();
    }
    const results = await Promise.all(children.map((child) => child.output()));
    const intervals = disjointHoldings(results);
    assert.ok(intervals.length >= 30, `${intervals.length} holdings`);
    const raw = await RespClient.connect(store.port);
    assert.equal(
      await raw.command("GET", "counter:redlock"),
      String(intervals.length),
    );
    await raw.close();
  } finally {
    for (const server of servers) await server[Symbol.asyncDispose]();
  }
});
