/**
 * Bad input is answered by a TypeError or RangeError that names the
 * argument and its value, with nothing sent to Redis; unusual but valid
 * names work like any other.
 */

import assert from "node:assert/strict";
import { acquire, Lock, resetAll } from "../mod.ts";
import { bed } from "./_bed.ts";

/** Every kind of bad number. */
const BAD_NUMBERS: [unknown, ErrorConstructor][] = [
  ["10", TypeError],
  [true, TypeError],
  [null, TypeError],
  [{}, TypeError],
  [10n, TypeError],
  [NaN, RangeError],
  [Infinity, RangeError],
  [-Infinity, RangeError],
  [-1, RangeError],
  [0, RangeError],
  [1.5, RangeError],
  [2 ** 53, RangeError],
];

async function commandsProcessed(
  command: (c: string, ...a: string[]) => Promise<unknown>,
): Promise<number> {
  const info = String(await command("INFO", "stats"));
  return Number(/total_commands_processed:(\d+)/.exec(info)![1]);
}

/** Expects `call` to fail with `type`, naming `name`, without a Redis command. */
async function refused(
  call: () => unknown,
  type: ErrorConstructor,
  name: string,
): Promise<void> {
  let result: unknown;
  try {
    result = call();
  } catch (error) {
    result = Promise.reject(error);
  }
  await assert.rejects(Promise.resolve(result), (error: Error) => {
    assert.ok(error instanceof Error, `${name}: refused`);
    assert.ok(
      error instanceof type,
      `${name}: ${error} is not a ${type.name}`,
    );
    assert.match(error.message, new RegExp(`'${name}'`), error.message);
    assert.match(error.message, /current value is /, error.message);
    return true;
  });
}

Deno.test("every option with a wrong type or value is refused, naming it, with nothing sent", async () => {
  await using env = await bed();
  const client = await env.client();
  const name = "bad-input";
  const lock = new Lock(client, name);
  const before = await commandsProcessed(env.command);
  const cases: [
    string,
    (value: unknown) => unknown,
    [unknown, ErrorConstructor][],
  ][] = [
    [
      "expire",
      (v) => new Lock(client, name, { expire: v as number }),
      BAD_NUMBERS,
    ],
    [
      "signalExpire",
      (v) => new Lock(client, name, { signalExpire: v as number }),
      BAD_NUMBERS,
    ],
    [
      "expire",
      (v) => lock.extend(v as number),
      BAD_NUMBERS.filter(([v]) => v !== null),
    ],
    [
      "expire",
      (v) => acquire(client, name, { expire: v as number }),
      BAD_NUMBERS,
    ],
    [
      "signalExpire",
      (v) => resetAll(client, { signalExpire: v as number }),
      BAD_NUMBERS,
    ],
    ["timeout", (v) => lock.acquire({ timeout: v as number }), [
      ["1", TypeError],
      [null, TypeError],
      [NaN, RangeError],
      [-Infinity, RangeError],
      [-1, RangeError],
      [2 ** 60, RangeError],
    ]],
    ["id", (v) => new Lock(client, name, { id: v as string }), [
      [5, TypeError],
      ["", TypeError],
      [{}, TypeError],
    ]],
    [
      "autoRenewal",
      (v) => new Lock(client, name, { autoRenewal: v as boolean }),
      [
        ["yes", TypeError],
        [1, TypeError],
      ],
    ],
    // Removed before any release: holders' turns gave what it was for.
    ["fair", (v) => new Lock(client, name, { fair: v } as never), [
      [false, TypeError],
      [true, TypeError],
    ]],
    [
      "pythonPeers",
      (v) => new Lock(client, name, { pythonPeers: v as boolean }),
      [["no", TypeError], [0, TypeError]],
    ],
    ["turns", (v) => new Lock(client, name, { turns: v as boolean }), [[
      "no",
      TypeError,
    ], [0, TypeError]]],
    [
      "transport",
      (v) => new Lock(client, name, { transport: v as "poll" }),
      [["BLPOP", TypeError], ["pubsub ", TypeError], [1, TypeError], [
        null,
        TypeError,
      ]],
    ],
    [
      "pollInterval",
      (v) => new Lock(client, name, { pollInterval: v as number }),
      BAD_NUMBERS,
    ],
    ["blocking", (v) => lock.acquire({ blocking: v as boolean }), [[
      1,
      TypeError,
    ], ["true", TypeError]]],
    ["signal", (v) => lock.acquire({ signal: v as AbortSignal }), [[
      {},
      TypeError,
    ], ["x", TypeError]]],
    ["name", (v) => new Lock(client, v as string), [
      [5, TypeError],
      ["", TypeError],
      [null, TypeError],
      [undefined, TypeError],
    ]],
    // Options that are not an object, and misspelt options.
    ["options", (v) => acquire(client, name, v as never), [
      [42, TypeError],
      ["x", TypeError],
      [null, TypeError],
      [[], TypeError],
    ]],
    ["options", (v) => resetAll(client, v as never), [["x", TypeError], [
      7,
      TypeError,
    ]]],
    ["options", (v) => new Lock(client, name, v as never), [[7, TypeError], [
      true,
      TypeError,
    ]]],
    ["options", (v) => lock.acquire(v as never), [[7, TypeError], [
      "x",
      TypeError,
    ]]],
    ["expires", (v) => new Lock(client, name, { expires: v } as never), [[
      1_000,
      TypeError,
    ]]],
    ["expires", (v) => acquire(client, name, { expires: v } as never), [[
      1_000,
      TypeError,
    ]]],
    ["timeOut", (v) => lock.acquire({ timeOut: v } as never), [[
      1_000,
      TypeError,
    ]]],
    ["timeOut", (v) => acquire(client, name, { timeOut: v } as never), [[
      1_000,
      TypeError,
    ]]],
    ["signalexpire", (v) => resetAll(client, { signalexpire: v } as never), [[
      1_000,
      TypeError,
    ]]],
  ];
  for (const [option, call, values] of cases) {
    for (const [value, type] of values) {
      await refused(() => call(value), type, option).catch((error) => {
        throw new Error(`${option} = ${String(value)}: ${error.message}`);
      });
    }
  }
  await refused(
    () => lock.acquire({ blocking: false, timeout: 1 }),
    TypeError,
    "timeout",
  );
  await refused(
    () => new Lock(client, name, { autoRenewal: true }),
    TypeError,
    "autoRenewal",
  );
  await refused(() => new Lock(null as never, name), TypeError, "client");
  await refused(() => new Lock({} as never, name), TypeError, "client");
  // Only the INFO before is counted: nothing was sent in between.
  assert.equal(await commandsProcessed(env.command) - before, 1);
  assert.equal(await env.command("EXISTS", `lock:${name}`), 0);
});

Deno.test("acquire(client, name, 42) is refused rather than acquiring with no expiry", async () => {
  await using env = await bed();
  const client = await env.client();
  await assert.rejects(acquire(client, "n", 42 as never), TypeError);
  await assert.rejects(resetAll(client, "x" as never), TypeError);
  assert.equal(await env.command("DBSIZE"), 0);
});

Deno.test("names with spaces, unicode, braces, glob characters or 10 kB work like any other", async () => {
  await using env = await bed();
  const holderClient = await env.client();
  const client = await env.client();
  const names = [
    "with spaces",
    "ünïcødé 🔒 名前",
    "{tagged}",
    "{",
    "*",
    "a?b[c]",
    "pipe|colon:bang!",
    "x".repeat(10_240),
  ];
  for (const name of names) {
    const holder = await acquire(holderClient, name, { expire: 10_000 });
    assert.equal(await env.command("GET", `lock:${name}`), holder.id);
    const waiter = new Lock(client, name, { expire: 10_000 });
    const waiting = waiter.acquire({ timeout: 5_000 });
    await holder.release();
    assert.equal(await waiting, true, name.slice(0, 20));
    assert.ok(waiter.token > holder.token);
    await waiter.release();
  }
  for (const name of names) await acquire(holderClient, name);
  assert.equal(await resetAll(holderClient), names.length);
  const left = await env.command("KEYS", "lock:*") as string[];
  assert.deepEqual(left, []);
});
