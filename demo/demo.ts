/**
 * The demo: several processes increment one counter in Redis with a
 * non-atomic GET then SET, first without the lock, then with it, and the
 * totals are compared. Uses REDIS_URL, or starts a throwaway redis-server.
 *
 *   deno task demo
 */

import { Redis } from "ioredis";
import { RedisServer } from "../tests/_server.ts";
import { denoScript } from "../tests/_deno.ts";

const WORKERS = 4;
const SECONDS = Number(Deno.env.get("DEMO_SECONDS") ?? 3);

const server = Deno.env.get("REDIS_URL")
  ? undefined
  : await RedisServer.start();
const url = Deno.env.get("REDIS_URL") ?? server!.url;
const redis = new Redis(url);
const worker = new URL("./worker.ts", import.meta.url);

async function run(mode: "lock" | "nolock") {
  await redis.del("demo:counter");
  const started = performance.now();
  const outputs = await Promise.all(
    Array.from(
      { length: WORKERS },
      () =>
        denoScript(worker, [url, String(SECONDS), mode], {
          stdout: "piped",
          stderr: "inherit",
        }).output(),
    ),
  );
  const seconds = (performance.now() - started) / 1000;
  const counts = outputs.map((output) => {
    if (output.code !== 0) throw new Error(`a ${mode} worker failed`);
    return Number(new TextDecoder().decode(output.stdout));
  });
  const expected = counts.reduce((sum, count) => sum + count, 0);
  const actual = Number(await redis.get("demo:counter"));
  return { expected, actual, counts, rate: expected / SECONDS, seconds };
}

console.log(
  `${WORKERS} processes, ${SECONDS} s each, incrementing one counter with GET then SET, on ${url}\n`,
);
let ok = true;
for (const mode of ["nolock", "lock"] as const) {
  const { expected, actual, counts, rate } = await run(mode);
  const lost = expected - actual;
  const title = mode === "lock" ? "with @x/redis-lock" : "without a lock   ";
  console.log(
    `${title}  expected ${String(expected).padStart(6)}  actual ${
      String(actual).padStart(6)
    }  ${lost === 0 ? "✔ no update lost" : `✘ ${lost} updates lost`}`,
  );
  console.log(
    `                    ${Math.round(rate)} ${
      mode === "lock" ? "acquisitions" : "increments"
    }/s; per process: ${counts.join(", ")}\n`,
  );
  if (mode === "lock" && lost !== 0) ok = false;
}
await redis.quit();
await server?.[Symbol.asyncDispose]();
if (!ok) Deno.exit(1);
