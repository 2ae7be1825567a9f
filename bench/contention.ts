/**
 * The contention benchmark: the protocol of python-redis-lock's own
 * (examples/bench.py). For each number of worker processes and each hold
 * time, every worker loops acquire → hold → release on one lock name for
 * T seconds, and the implementations run one after another on the same
 * redis-server, with the same client (ioredis):
 *
 * - @x/redis-lock (this library)
 * - node-redlock, with its defaults and with `retryDelay: 10`
 * - redis-semaphore's Mutex, with its defaults
 * - over three masters: this library's Redlock, and node-redlock with
 *   `retryDelay: 10` (commands are counted on all three)
 * - a naive SET NX PX that polls every 10 ms
 *
 * A last case runs one process with many tasks at once on the name (a busy
 * server: `--tasks 64`, hold times `--task-hold 0,1`; `--tasks 0` leaves it
 * out).
 *
 * With `--rounds n`, each group of cases (one number of workers, tasks and
 * hold time) runs n times over, the implementations in a rotated order each
 * round, and every figure printed is the median over the rounds: this
 * machine's speed drifts by ±30% over minutes, which one run per case
 * cannot tell from a difference between implementations.
 *
 * Each case runs `--settle` seconds (default 1) before its T seconds
 * are measured: 32 worker processes on two cores take over 100 ms to send
 * their first tries, and a first wait then says more about the start than
 * about the lock. Every figure below counts the acquisitions whose wait
 * began within the T seconds, and Redis's commands and CPU time from the
 * start of those T seconds.
 *
 * For each case it prints: total acquisitions, per-worker (per-task)
 * min / avg / max (and min/max, the fairness), acquire-wait p50 and p99,
 * Redis commands per acquisition (INFO commandstats, commands run inside
 * scripts included), redis-server's CPU time per acquisition (user + sys
 * over the run, INFO cpu, on every master used) and the clients connected
 * during the run. A hold of d ms takes longer (Deno's timers fire ~1 ms
 * late): the mean measured is printed beside it. Output: a Markdown table, and JSON
 * in bench/results/contention.json.
 *
 *   deno task bench:contention                      # T = 5 s
 *   deno task bench:contention --seconds 2 --workers 1,8 --hold 0 --only @x/redis-lock
 *   deno task bench:contention --rounds 3 --hold 0 --task-hold 0 --out rounds
 */

import { Redis } from "ioredis";
import { RedisServer } from "../tests/_server.ts";
import { implementations } from "./_contention_worker.ts";
import { denoScript } from "../tests/_deno.ts";

interface Case {
  implementation: string;
  workers: number;
  /** Tasks per worker process. */
  tasks: number;
  hold: number;
}

interface Result extends Case {
  seconds: number;
  total: number;
  perSecond: number;
  min: number;
  avg: number;
  max: number;
  fairness: number;
  p50: number;
  p99: number;
  commandsPerAcquisition: number;
  /** The mean time a hold really took (a timer fires late), ms. */
  holdMeasured: number;
  /** redis-server CPU time (user + sys) per acquisition, µs. */
  cpuPerAcquisition: number;
  clients: number;
}

function option(name: string, fallback: string): string {
  const index = Deno.args.indexOf(`--${name}`);
  return index >= 0 ? Deno.args[index + 1] : fallback;
}

const SECONDS = Number(option("seconds", "5"));
const SETTLE = Number(option("settle", "1"));
const WORKERS = option("workers", "1,2,8,32").split(",").map(Number);
const HOLDS = option("hold", "0,10").split(",").map(Number);
const ONLY = option("only", "");
const TASKS = Number(option("tasks", "64"));
const TASK_HOLDS = option("task-hold", "0,1").split(",").map(Number);
const ROUNDS = Number(option("rounds", "1"));
const OUT = option("out", "contention");
const NAMES = Object.keys(implementations).filter((name) =>
  ONLY === "" || ONLY.split(",").includes(name)
);

/** Milliseconds between the go and the start, for every worker to wake. */
const START_LEAD = 250;

const worker = new URL("./_contention_worker.ts", import.meta.url);
const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}

/** Total calls in INFO commandstats, without the harness's own. */
function commandCalls(info: string): number {
  let total = 0;
  for (
    const [, command, calls] of info.matchAll(/cmdstat_(\S+?):calls=(\d+)/g)
  ) {
    if (command === "info" || command.startsWith("config")) continue;
    total += Number(calls);
  }
  return total;
}

/** redis-server's CPU time so far (user + sys, children excluded), in s. */
async function cpuSeconds(master: Redis): Promise<number> {
  const info = await master.info("cpu");
  return Number(/used_cpu_sys:([\d.]+)/.exec(info)![1]) +
    Number(/used_cpu_user:([\d.]+)/.exec(info)![1]);
}

/** Whether an implementation runs over the three masters. */
const overMasters = (implementation: string) =>
  implementation.endsWith("× 3 masters");

async function run(
  redis: Redis,
  ports: number[],
  others: Redis[],
  c: Case,
): Promise<Result> {
  const masters = overMasters(c.implementation) ? [redis, ...others] : [redis];
  for (const master of [redis, ...others]) {
    await master.flushall();
    // New data, but no lock was held before: Redlock need not wait.
    await master.set("lock-start", "0");
  }
  const children = Array.from(
    { length: c.workers },
    () =>
      denoScript(worker, [
        c.implementation,
        ports.slice(0, masters.length).join(","),
        String(c.hold),
        String(SECONDS),
        String(c.tasks),
        String(SETTLE),
      ], { stdout: "piped", stderr: "inherit" }).spawn(),
  );
  while (Number(await redis.get("bench:ready")) < c.workers) await delay(20);
  // Every worker starts at once, once all have had time to wake; the
  // measured window opens once they have settled.
  const start = Date.now() + START_LEAD;
  await redis.lpush("bench:go", ...Array(c.workers).fill(String(start)));
  await delay(start + SETTLE * 1000 - Date.now());
  for (const master of masters) await master.config("RESETSTAT");
  let cpu = 0;
  for (const master of masters) cpu -= await cpuSeconds(master);
  await delay(SECONDS * 500);
  const clientsInfo = await redis.info("clients");
  const clients = Number(/connected_clients:(\d+)/.exec(clientsInfo)![1]) - 1;
  const outputs = await Promise.all(children.map((child) => child.output()));
  for (const master of masters) cpu += await cpuSeconds(master);
  let commands = 0;
  for (const master of masters) {
    commands += commandCalls(await master.info("commandstats"));
  }

  const counts: number[] = [];
  const waits: number[] = [];
  let held = 0;
  for (const output of outputs) {
    if (output.code !== 0) {
      throw new Error(`a worker of ${c.implementation} failed`);
    }
    const result = JSON.parse(new TextDecoder().decode(output.stdout));
    counts.push(...result.counts);
    held += result.held;
    for (const wait of result.waits) waits.push(wait);
  }
  waits.sort((a, b) => a - b);
  const total = counts.reduce((sum, count) => sum + count, 0);
  const min = Math.min(...counts);
  const max = Math.max(...counts);
  return {
    ...c,
    seconds: SECONDS,
    total,
    perSecond: total / SECONDS,
    min,
    avg: total / counts.length,
    max,
    fairness: max === 0 ? 0 : min / max,
    p50: percentile(waits, 0.5),
    p99: percentile(waits, 0.99),
    commandsPerAcquisition: commands / total,
    cpuPerAcquisition: cpu * 1e6 / total,
    holdMeasured: held / total,
    clients,
  };
}

function fixed(value: number, digits: number): string {
  return Number.isFinite(value) ? value.toFixed(digits) : "–";
}

function row(r: Result): string {
  const workers = r.tasks > 1 ? `${r.workers} × ${r.tasks} tasks` : r.workers;
  const hold = r.hold > 0 ? `${r.hold} (${fixed(r.holdMeasured, 1)})` : "0";
  return `| ${r.implementation} | ${workers} | ${hold} | ${r.total} | ${
    Math.round(r.perSecond)
  } | ${r.min} / ${Math.round(r.avg)} / ${r.max} | ${fixed(r.fairness, 2)} | ${
    fixed(r.p50, 1)
  } | ${fixed(r.p99, 1)} | ${fixed(r.commandsPerAcquisition, 1)} | ${
    fixed(r.cpuPerAcquisition, 0)
  } | ${r.clients} |`;
}

const HEADER =
  "| implementation | workers | hold ms (measured) | acquisitions | per s | per worker min / avg / max | fairness | wait p50 ms | wait p99 ms | commands / acquisition | Redis CPU µs / acquisition | clients |\n" +
  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |";

await using server = await RedisServer.start();
await using second = await RedisServer.start();
await using third = await RedisServer.start();
const redis = new Redis(server.port, server.hostname);
const others = [second, third].map((s) => new Redis(s.port, s.hostname));
const ports = [server, second, third].map((s) => s.port);
const version = /redis_version:(\S+)/.exec(await redis.info("server"))![1];
console.log(
  `Contention benchmark: T = ${SECONDS} s per case after ${SETTLE} s of settling${
    ROUNDS > 1 ? `, medians of ${ROUNDS} rounds` : ""
  }, redis ${version} on loopback, ioredis, ${navigator.hardwareConcurrency} cores.\n`,
);
console.log(HEADER);
const results: Result[] = [];
const cases: Case[] = [];
for (const hold of HOLDS) {
  for (const workers of WORKERS) {
    for (const implementation of NAMES) {
      cases.push({ implementation, workers, tasks: 1, hold });
    }
  }
}
if (TASKS > 0) {
  for (const hold of TASK_HOLDS) {
    for (const implementation of NAMES.filter((name) => !overMasters(name))) {
      cases.push({ implementation, workers: 1, tasks: TASKS, hold });
    }
  }
}
/** Each figure of `rounds` (results of one case), its median. */
function median(rounds: Result[]): Result {
  const middle = (values: number[]) => {
    const sorted = values.filter(Number.isFinite).sort((a, b) => a - b);
    if (sorted.length === 0) return NaN;
    const half = sorted.length >> 1;
    return sorted.length % 2
      ? sorted[half]
      : (sorted[half - 1] + sorted[half]) / 2;
  };
  const result = { ...rounds[0] };
  for (const key of Object.keys(result) as (keyof Result)[]) {
    if (typeof result[key] === "number") {
      (result[key] as number) = middle(rounds.map((r) => r[key] as number));
    }
  }
  return result;
}

const groupOf = (c: Case) => `${c.workers}/${c.tasks}/${c.hold}`;
const groups = Map.groupBy(cases, groupOf);
for (const group of groups.values()) {
  const rounds = new Map<Case, Result[]>();
  for (let round = 0; round < ROUNDS; round++) {
    const shift = round % group.length;
    for (const c of [...group.slice(shift), ...group.slice(0, shift)]) {
      const result = await run(redis, ports, others, c);
      rounds.set(c, [...rounds.get(c) ?? [], result]);
    }
  }
  for (const c of group) {
    const result = median(rounds.get(c)!);
    results.push(result);
    console.log(row(result));
  }
}
redis.disconnect();
for (const other of others) other.disconnect();

await Deno.mkdir(new URL("./results/", import.meta.url), { recursive: true });
await Deno.writeTextFile(
  new URL(`./results/${OUT}.json`, import.meta.url),
  JSON.stringify(
    {
      date: new Date().toISOString(),
      redis: version,
      seconds: SECONDS,
      settle: SETTLE,
      rounds: ROUNDS,
      results,
    },
    null,
    2,
  ) + "\n",
);
await Deno.writeTextFile(
  new URL(`./results/${OUT}.md`, import.meta.url),
  `${HEADER}\n${results.map(row).join("\n")}\n`,
);
