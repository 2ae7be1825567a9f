/**
 * Model-based randomised test: fast-check generates schedules of acquire
 * (this library's, or python-redis-lock's racing one beside it, with and
 * without expiry and timeout), abort, release,
 * reset, SIGKILL of a process, CLIENT KILL of its connections, restart of
 * Redis and pauses, across worker processes (_model_worker.ts) against a
 * real server. After each schedule every process drains, and the checks
 * are:
 *
 * - every acquire settles (no waiter sleeps past a free lock for ever);
 * - no holder overlaps an earlier one that had not been told, while Redis
 *   keeps its data (a restart without it ends the holdings: the restart and
 *   fault tests check what follows), and but for a reset (which takes a lock
 *   without asking);
 * - fencing tokens of a name increase in the order of its acquisitions;
 * - nothing of the names stays in Redis once the expiries of killed
 *   processes have passed.
 *
 * `MODEL_RUNS` sets the number of schedules (default 10), `MODEL_SEED` the
 * seed to replay one.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { Redis } from "ioredis";
import { Lock, shutdown } from "../mod.ts";
import { close, delay, eventually } from "./_bed.ts";
import { denoScript, readJsonLines } from "./_deno.ts";
import { RespClient } from "./_resp.ts";
import { RedisServer } from "./_server.ts";

const WORKERS = 3;
const RUNS = Number(Deno.env.get("MODEL_RUNS") ?? 10);
const SEED = Deno.env.get("MODEL_SEED");
const TOLERANCE = 25;
/**
 * How long a grant may take to be reported: a reset that ends within this
 * before a holding is reported may have come after the grant in Redis.
 */
const REPORT_LATENCY = 50;

type Step =
  | {
    kind: "acquire";
    worker: number;
    name: number;
    timeout?: number;
    expire?: number;
    python: boolean;
  }
  | { kind: "abort" | "release"; worker: number; pick: number }
  | { kind: "reset"; name: number }
  | { kind: "kill" | "killConnections"; worker: number }
  | { kind: "restart" }
  | { kind: "sleep"; ms: number };

const worker = fc.nat(WORKERS - 1);
const step: fc.Arbitrary<Step> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      kind: fc.constant("acquire" as const),
      worker,
      name: fc.nat(1),
      timeout: fc.constantFrom(20, 200, 1_000, undefined),
      expire: fc.constantFrom(300, 2_000, undefined),
      // One in four is python-redis-lock's.
      python: fc.nat(3).map((n) => n === 0),
    }, { requiredKeys: ["kind", "worker", "name", "python"] }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant("abort" as const),
      worker,
      pick: fc.nat(),
    }),
  },
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant("release" as const),
      worker,
      pick: fc.nat(),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant("reset" as const),
      name: fc.nat(1),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constantFrom("kill" as const, "killConnections" as const),
      worker,
    }),
  },
  { weight: 1, arbitrary: fc.constant({ kind: "restart" as const }) },
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant("sleep" as const),
      ms: fc.constantFrom(0, 5, 50, 200),
    }),
  },
);

interface Event {
  worker: number;
  at: number;
  type: string;
  id?: number;
  name?: string;
  token?: number;
  /** When a python-redis-lock holding ends by its expiry. */
  until?: number;
  message?: string;
}

/** A worker process and what it reported. */
class Worker {
  readonly child: Deno.ChildProcess;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly reading: Promise<void>;
  killedAt: number | undefined;

  constructor(port: number, index: number, events: Event[]) {
    const child = denoScript(
      new URL("./_model_worker.ts", import.meta.url),
      [String(port), String(index)],
      { stdin: "piped", stdout: "piped", stderr: "inherit" },
    ).spawn();
    this.child = child;
    this.#writer = child.stdin.getWriter();
    this.reading = readJsonLines(child.stdout, events);
  }

  send(command: Record<string, unknown>): Promise<void> {
    return this.#writer.write(
      new TextEncoder().encode(JSON.stringify(command) + "\n"),
    );
  }

  async kill(): Promise<void> {
    this.killedAt = performance.timeOrigin + performance.now();
    this.child.kill("SIGKILL");
    await this.#writer.close().catch(() => {});
    await this.child.status;
    await this.reading;
  }

  async stop(): Promise<void> {
    await this.#writer.close().catch(() => {});
    await this.child.status;
    await this.reading;
  }
}

/** A reset a schedule ran, between two times. */
interface Reset {
  readonly name: string;
  readonly from: number;
  readonly to: number;
}

/** What one schedule did, for the checks. */
interface Acquire {
  readonly id: number;
  readonly worker: Worker;
  readonly name: string;
  readonly expire?: number;
}

Deno.test({
  name:
    `model: ${RUNS} random schedules of ${WORKERS} processes keep every invariant`,
  // A run's processes may outlive the step that killed them by a moment.
  sanitizeResources: true,
  async fn() {
    await using server = await RedisServer.start();
    let raw = await RespClient.connect(server.port);
    const resetter = new Redis(server.port, server.hostname);
    resetter.on("error", () => {});
    let run = 0;
    const summaries: string[] = [];
    try {
      await fc.assert(
        fc.asyncProperty(
          fc.array(step, { minLength: 8, maxLength: 30 }),
          async (steps) => {
            run++;
            const names = [`m${run}:a`, `m${run}:b`];
            const events: Event[] = [];
            /** What of the names stayed in Redis at the last look. */
            let left: string[] = [];
            const workers = Array.from(
              { length: WORKERS },
              (_, i) => new Worker(server.port, i, events),
            );
            const all: Worker[] = [...workers];
            const acquires: Acquire[] = [];
            const resets: Reset[] = [];
            const restarts: number[] = [];
            const now = () => performance.timeOrigin + performance.now();
            const pending = (w: Worker) =>
              acquires.filter((a) =>
                a.worker === w &&
                !events.some((e) =>
                  e.id === a.id && e.type !== "acquired" && e.type !== "told"
                )
              );
            const held = (w: Worker) =>
              acquires.filter((a) =>
                a.worker === w &&
                events.some((e) => e.id === a.id && e.type === "acquired") &&
                !events.some((e) => e.id === a.id && e.type === "release")
              );
            try {
              await eventually(
                () =>
                  workers.every((w) =>
                    events.some((e) =>
                      e.worker === all.indexOf(w) && e.type === "ready"
                    )
                  ),
                "workers start",
                30_000,
              );
              for (const s of steps) {
                switch (s.kind) {
                  case "acquire": {
                    const id = acquires.length + 1;
                    const w = workers[s.worker];
                    acquires.push({
                      id,
                      worker: w,
                      name: names[s.name],
                      expire: s.expire,
                    });
                    await w.send({
                      op: "acquire",
                      id,
                      name: names[s.name],
                      timeout: s.timeout,
                      expire: s.expire,
                      python: s.python,
                    });
                    break;
                  }
                  case "abort":
                  case "release": {
                    const w = workers[s.worker];
                    const choices = s.kind === "abort" ? pending(w) : held(w);
                    if (choices.length === 0) break;
                    const { id } = choices[s.pick % choices.length];
                    await w.send({ op: s.kind, id });
                    break;
                  }
                  case "reset": {
                    const from = now();
                    await new Lock(resetter, names[s.name]).reset()
                      .catch(() => {});
                    resets.push({ name: names[s.name], from, to: now() });
                    break;
                  }
                  case "kill": {
                    const w = workers[s.worker];
                    await w.kill();
                    // A process of the same slot starts again, new.
                    const index = all.length;
                    const fresh = new Worker(server.port, index, events);
                    all.push(fresh);
                    workers[s.worker] = fresh;
                    await eventually(
                      () =>
                        events.some((e) =>
                          e.worker === index && e.type === "ready"
                        ),
                      "a new worker starts",
                      30_000,
                    );
                    break;
                  }
                  case "killConnections": {
                    const index = all.indexOf(workers[s.worker]);
                    const list = String(await raw.command("CLIENT", "LIST"));
                    for (const line of list.split("\n")) {
                      if (!line.includes(` name=model-${index} `)) continue;
                      const id = /\bid=(\d+)/.exec(line)?.[1];
                      if (id) {
                        await raw.command("CLIENT", "KILL", "ID", id).catch(
                          () => {},
                        );
                      }
                    }
                    break;
                  }
                  case "restart":
                    await raw.close();
                    await server.stop();
                    restarts.push(now()); // the data is lost from here
                    await server.restart();
                    raw = await RespClient.connect(server.port);
                    break;
                  case "sleep":
                    await delay(s.ms);
                    break;
                }
              }
              // Locks without expiry held by killed processes are never
              // freed but by a reset: that is what reset is for. An acquire
              // the process had not reported as settled when it was killed
              // may have taken its lock just before.
              const settled = (a: Acquire) =>
                events.some((e) =>
                  e.id === a.id &&
                  ["acquired", "timeout", "aborted", "error"].includes(e.type)
                );
              for (const a of acquires) {
                if (
                  a.worker.killedAt !== undefined && a.expire === undefined &&
                  (held(a.worker).includes(a) || !settled(a))
                ) {
                  const from = now();
                  await new Lock(resetter, a.name).reset();
                  resets.push({ name: a.name, from, to: now() });
                }
              }
              for (const w of workers) await w.send({ op: "drain" });
              await eventually(
                () =>
                  workers.every((w) =>
                    events.some((e) =>
                      e.worker === all.indexOf(w) && e.type === "drained"
                    )
                  ),
                "every acquire settles",
                30_000,
              );
              check(events, acquires, all, resets, restarts);
              const count = (type: string) =>
                events.filter((e) => e.type === type).length;
              const did = (kind: string) =>
                steps.filter((s) => s.kind === kind).length;
              summaries.push(
                `${acquires.length} acquires (${
                  steps.filter((s) => s.kind === "acquire" && s.python).length
                } python's): ${count("acquired")} acquired, ${
                  count("timeout")
                } timed out, ${count("aborted")} aborted, ${
                  count("told")
                } told; ${did("kill")} kills, ${
                  did("killConnections")
                } connection kills, ${did("restart")} restarts, ${
                  did("reset")
                } resets`,
              );
              await eventually(
                async () => {
                  left = [];
                  for (const name of names) {
                    const [lock, queue] = [
                      `lock:${name}`,
                      `lock-queue:${name}`,
                    ];
                    if (await raw.command("EXISTS", lock)) {
                      left.push(
                        `${lock} = ${await raw.command(
                          "GET",
                          lock,
                        )} (pttl ${await raw.command("PTTL", lock)})`,
                      );
                    }
                    if (await raw.command("EXISTS", queue)) {
                      left.push(
                        `${queue} = ${await raw.command(
                          "LRANGE",
                          queue,
                          0,
                          -1,
                        )} (pttl ${await raw.command("PTTL", queue)})`,
                      );
                    }
                  }
                  return left.length === 0;
                },
                "nothing of the names stays in Redis",
                15_000,
              );
            } catch (error) {
              const start = events[0]?.at ?? 0;
              throw new Error(
                `${(error as Error).message}\nleft: ${
                  left.join("; ")
                }\nschedule: ${JSON.stringify(steps)}\nrestarts: ${
                  restarts.map((at) => Math.round(at - start))
                }\nevents:\n${
                  events.map((e) =>
                    `${Math.round(e.at - start)} w${e.worker} ${e.type} ${
                      e.id ?? ""
                    } ${e.name ?? ""} ${e.token ?? ""} ${e.message ?? ""}`
                  ).join("\n")
                }`,
                { cause: error },
              );
            } finally {
              for (const w of workers) await w.stop();
            }
          },
        ),
        {
          numRuns: RUNS,
          endOnFailure: true,
          ...(SEED === undefined ? {} : { seed: Number(SEED) }),
        },
      );
      console.log(summaries.join("\n"));
    } finally {
      await shutdown(resetter);
      await close(resetter);
      await raw.close();
    }
  },
});

/** The invariants of one schedule's events. */
function check(
  events: Event[],
  acquires: Acquire[],
  workers: Worker[],
  resets: Reset[],
  restarts: number[],
): void {
  interface Holding {
    id: number;
    name: string;
    /** None for python-redis-lock's. */
    token: number | undefined;
    from: number;
    to: number;
  }
  const holdings: Holding[] = [];
  for (const event of events) {
    if (event.type !== "acquired") continue;
    const acquire = acquires.find((a) => a.id === event.id)!;
    const end = events.find((e) =>
      e.id === event.id && (e.type === "told" || e.type === "release")
    );
    const killedAt = workers[event.worker].killedAt;
    // A reset ends the holdings it may have come after in Redis.
    const reset = resets.find((r) =>
      r.name === event.name && r.to + REPORT_LATENCY > event.at
    );
    // Exclusion holds while Redis keeps its data: a restart without it ends
    // the holdings (the restart and fault tests check what follows).
    const restart = restarts.find((at) => at > event.at);
    holdings.push({
      id: event.id!,
      name: acquire.name,
      token: event.token,
      from: event.at,
      to: Math.min(
        end?.at ?? Infinity,
        event.until ?? Infinity,
        killedAt ?? Infinity,
        reset ? Math.max(reset.from, event.at) : Infinity,
        restart ?? Infinity,
      ),
    });
  }
  holdings.sort((a, b) => a.from - b.from);
  for (let j = 0; j < holdings.length; j++) {
    const later = holdings[j];
    for (let i = 0; i < j; i++) {
      const earlier = holdings[i];
      if (earlier.name !== later.name) continue;
      assert.ok(
        earlier.to <= later.from + TOLERANCE,
        `acquire ${later.id} (token ${later.token}) overlaps acquire ${earlier.id} (token ${earlier.token}), told ${
          Math.round(earlier.to - later.from)
        } ms later`,
      );
    }
    const previous = holdings.slice(0, j).findLast((h) =>
      h.name === later.name && h.token !== undefined
    );
    if (previous?.token !== undefined && later.token !== undefined) {
      assert.ok(
        later.token > previous.token,
        `token ${later.token} after ${previous.token} on ${later.name}`,
      );
    }
  }
  const errors = events.filter((e) => e.type === "error");
  for (const error of errors) {
    // Redis down (a restart) or its connections killed may fail a call,
    // saying so; anything else is a bug.
    assert.match(error.message ?? "", /Redis (failed|unreachable)|LockError/);
  }
}
