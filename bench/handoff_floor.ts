/**
 * The floor of a hand-over between processes: N worker processes pass one
 * token round a ring with raw Redis commands, each sleeping in `BLPOP` on its
 * own list and, once woken, `LPUSH`ing the token to the next. Every hop is
 * what a first-come first-served hand-over costs at the least: the sleeping
 * process wakes on a reply and sends one command. No lock that hands over to
 * a waiter that sleeps (rather than polls) can pass it faster than this.
 *
 *   deno run -A bench/handoff_floor.ts [seconds] [processes,...]
 */

import { Redis } from "ioredis";
import { RedisServer } from "../tests/_server.ts";
import { denoScript } from "../tests/_deno.ts";

const [mode, ...rest] = Deno.args;

if (mode === "--worker") {
  const [port, index, count, seconds] = rest.map(Number);
  const redis = new Redis(port, "127.0.0.1");
  const me = `ring:${index}`;
  const next = `ring:${(index + 1) % count}`;
  await redis.incr("ring:ready");
  let hops = 0;
  const until = performance.now() + seconds * 1000;
  while (performance.now() < until) {
    const popped = await redis.blpop(me, 1);
    if (popped === null) continue;
    hops++;
    await redis.lpush(next, "token");
  }
  console.log(hops);
  redis.disconnect();
  Deno.exit(0);
}

const seconds = Number(mode ?? 3);
const counts = (rest[0] ?? "2,8,32").split(",").map(Number);
const self = new URL(import.meta.url);

await using server = await RedisServer.start();
const redis = new Redis(server.port, server.hostname);
console.log("| processes | hand-overs per s |\n| ---: | ---: |");
for (const count of counts) {
  await redis.flushall();
  const children = Array.from(
    { length: count },
    (_, index) =>
      denoScript(self, [
        "--worker",
        String(server.port),
        String(index),
        String(count),
        String(seconds),
      ], { stdout: "piped" }).spawn(),
  );
  while (Number(await redis.get("ring:ready")) < count) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  await redis.lpush("ring:0", "token");
  const outputs = await Promise.all(children.map((child) => child.output()));
  const hops = outputs.reduce(
    (sum, output) => sum + Number(new TextDecoder().decode(output.stdout)),
    0,
  );
  console.log(`| ${count} | ${Math.round(hops / seconds)} |`);
}
redis.disconnect();
