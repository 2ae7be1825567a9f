/**
 * The safety checker: runs worker processes (_safety_worker.ts) that
 * contend for one lock and write through a fencing check to a store (a
 * second Redis, never faulted), collects their events, and checks what a
 * lock promises:
 *
 * - no overlap in which the earlier holder had not been told (its
 *   `lock.signal` aborted) by the time the later one acquired, unless the
 *   earlier holder's process was paused (SIGSTOP): fencing covers that;
 * - tokens strictly increase in the order of acquisition;
 * - no write of the newest holder is refused, and no write of an older
 *   holder is accepted after a newer holder has written;
 * - every worker that lives makes progress after the fault
 *   ({@linkcode SafetyRun.progressed});
 * - nothing is left in Redis but keys that expire by themselves.
 *
 * @module
 */

import assert from "node:assert/strict";
import { denoScript, readJsonLines } from "./_deno.ts";
import type { RespClient } from "./_resp.ts";
import type { RedisServer } from "./_server.ts";

/** An event a worker printed. */
export interface SafetyEvent {
  readonly worker: number;
  readonly at: number;
  readonly type:
    | "acquired"
    | "write"
    | "told"
    | "release"
    | "released-late"
    | "timeout"
    | "error"
    | "ready"
    | "exit";
  readonly token?: number;
  readonly seq?: number;
  readonly attempt?: number;
  /** `write`: when the store answered. */
  readonly answered?: number;
  readonly accepted?: boolean | null;
  readonly message?: string;
}

/** One holding of the lock, as the events tell it. */
interface Holding {
  readonly worker: number;
  readonly token: number;
  readonly from: number;
  /** When it ended for its holder: told, release sent, or process killed. */
  readonly to: number;
}

/** Timers of a busy process fire a little late: so may a holder be told. */
const TOLERANCE = 25;

const now = () => performance.timeOrigin + performance.now();

const worker = new URL("./_safety_worker.ts", import.meta.url);

/** Options of a run. */
export interface SafetyOptions {
  readonly lockServer: RedisServer;
  readonly storeServer: RedisServer;
  readonly name: string;
  readonly workers: number;
  /** The lock's expiry (auto-renewed). */
  readonly expire: number;
  /** How long each holding lasts, in ms. */
  readonly hold: number;
}

interface Worker {
  readonly child: Deno.ChildProcess;
  readonly reading: Promise<void>;
  killedAt?: number;
  paused: [number, number][];
}

/** A run of worker processes. */
export class SafetyRun {
  readonly events: SafetyEvent[] = [];
  readonly #workers: Worker[] = [];
  readonly #options: SafetyOptions;

  private constructor(options: SafetyOptions) {
    this.#options = options;
  }

  /** Starts the workers; resolves once each runs and one holds the lock. */
  static async start(options: SafetyOptions): Promise<SafetyRun> {
    const run = new SafetyRun(options);
    for (let i = 0; i < options.workers; i++) {
      const child = denoScript(worker, [
        String(options.lockServer.port),
        String(options.storeServer.port),
        options.name,
        String(i),
        String(options.expire),
        String(options.hold),
      ], { stdin: "piped", stdout: "piped", stderr: "inherit" }).spawn();
      run.#workers.push({
        child,
        reading: readJsonLines(child.stdout, run.events),
        paused: [],
      });
    }
    await run.until(
      () =>
        run.events.filter((e) => e.type === "ready").length === options.workers,
      "the workers start",
      30_000,
    );
    await run.until(() => run.acquisitions().length > 0, "a first holder");
    return run;
  }

  /** Resolves once `check` holds; fails after `ms`. */
  async until(check: () => boolean, what: string, ms = 15_000) {
    const deadline = performance.now() + ms;
    while (!check()) {
      if (performance.now() > deadline) throw new Error(`Timed out: ${what}`);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  /** The worker holding the lock now, as far as its events tell. */
  holder(): number | undefined {
    const last = new Map<number, SafetyEvent>();
    for (const event of this.events) {
      if (event.type !== "write") last.set(event.worker, event);
    }
    for (const [worker, event] of last) {
      if (
        event.type === "acquired" &&
        this.#workers[worker].killedAt === undefined
      ) {
        return worker;
      }
    }
    return undefined;
  }

  /**
   * Whether `worker` was told that its holding with `token` was lost: its
   * signal aborted, or (paused while releasing) its release said so.
   */
  told(worker: number, token: number | undefined): boolean {
    return this.events.some((e) =>
      e.worker === worker && e.token === token &&
      (e.type === "told" || e.type === "released-late")
    );
  }

  /** The token of the latest acquisition of `worker`. */
  tokenOf(worker: number): number | undefined {
    return this.#lastToken(worker);
  }

  /** Waits for a holder, and a write of it, and returns it. */
  async holding(): Promise<number> {
    let holder: number | undefined;
    await this.until(() => {
      holder = this.holder();
      return holder !== undefined &&
        this.events.some((e) =>
          e.worker === holder && e.type === "write" &&
          e.token === this.#lastToken(holder!)
        );
    }, "a holder that writes");
    return holder!;
  }

  #lastToken(worker: number): number | undefined {
    for (let i = this.events.length - 1; i >= 0; i--) {
      const event = this.events[i];
      if (event.worker === worker && event.type === "acquired") {
        return event.token;
      }
    }
  }

  /** Acquisitions so far. */
  acquisitions(after = 0): SafetyEvent[] {
    return this.events.filter((e) => e.type === "acquired" && e.at > after);
  }

  /**
   * Waits until every worker alive has acquired after `after` (a fault):
   * none is stuck. Fails after `ms`.
   */
  async progressed(after: number, ms: number): Promise<void> {
    const live = this.#workers.flatMap(({ killedAt }, worker) =>
      killedAt === undefined ? [worker] : []
    );
    await this.until(
      () =>
        live.every((worker) =>
          this.acquisitions(after).some((e) => e.worker === worker)
        ),
      `every worker acquires after the fault (stuck: ${
        live.filter((worker) =>
          !this.acquisitions(after).some((e) => e.worker === worker)
        ).join(", ")
      })`,
      ms,
    );
  }

  /** SIGKILLs a worker. */
  async kill(worker: number): Promise<void> {
    this.#workers[worker].killedAt = now();
    this.#workers[worker].child.kill("SIGKILL");
    await this.#workers[worker].child.status;
  }

  /** SIGSTOPs a worker for `ms`, then SIGCONTs it. */
  async pause(worker: number, ms: number): Promise<void> {
    const { child, paused } = this.#workers[worker];
    const from = now();
    child.kill("SIGSTOP");
    await new Promise((resolve) => setTimeout(resolve, ms));
    child.kill("SIGCONT");
    paused.push([from, now()]);
  }

  /** Stops the workers (closing their stdin) and waits for them to exit. */
  async stop(): Promise<void> {
    for (const { child } of this.#workers) {
      await child.stdin.close().catch(() => {});
    }
    for (const { child, reading, killedAt } of this.#workers) {
      if (killedAt === undefined) {
        await child.status;
      }
      await reading;
    }
  }

  /**
   * Checks the run: see the module's doc. `errorsFrom`: errors from the
   * lock's Redis are expected from then on (it is down for a while).
   */
  check(options: { errorsFrom?: number } = {}): string {
    const holdings: Holding[] = [];
    const byWorker = new Map<number, SafetyEvent[]>();
    for (const event of this.events) {
      if (!byWorker.has(event.worker)) byWorker.set(event.worker, []);
      byWorker.get(event.worker)!.push(event);
    }
    for (const [worker, events] of byWorker) {
      const { killedAt } = this.#workers[worker];
      for (let i = 0; i < events.length; i++) {
        const event = events[i];
        if (event.type !== "acquired") continue;
        const end = events.slice(i + 1).find((e) =>
          (e.type === "told" || e.type === "release") && e.token === event.token
        );
        holdings.push({
          worker,
          token: event.token!,
          from: event.at,
          to: end?.at ?? killedAt ?? Infinity,
        });
      }
    }
    holdings.sort((a, b) => a.from - b.from);
    const paused = (worker: number, at: number) =>
      this.#workers[worker].paused.some(([from, to]) => from <= at && at <= to);

    const untold: string[] = [];
    for (let j = 0; j < holdings.length; j++) {
      const later = holdings[j];
      for (let i = 0; i < j; i++) {
        const earlier = holdings[i];
        if (
          earlier.to > later.from + TOLERANCE &&
          !paused(earlier.worker, later.from)
        ) {
          untold.push(
            `worker ${earlier.worker} (token ${earlier.token}) not told ${
              Math.round(earlier.to - later.from)
            } ms after worker ${later.worker} (token ${later.token}) acquired`,
          );
        }
      }
    }
    const inversions = holdings.filter((h, i) =>
      i > 0 && h.token <= holdings[i - 1].token
    ).map((h) => `token ${h.token} of worker ${h.worker} after a higher one`);

    const writes = this.events.filter((e) => e.type === "write");
    // Holdings are sorted by start: the newer ones of a holding are those
    // after the first that starts later. Per holding, the earliest attempt
    // of any write of a newer holding (a suffix minimum).
    const indexOf = new Map(
      holdings.map((h, i) => [`${h.worker}:${h.token}`, i]),
    );
    const firstNewer = holdings.map((h, i) => {
      let j = i + 1;
      while (j < holdings.length && holdings[j].from <= h.from) j++;
      return j;
    });
    const earliestAttempt = new Array<number>(holdings.length).fill(Infinity);
    for (const write of writes) {
      const i = indexOf.get(`${write.worker}:${write.token}`)!;
      earliestAttempt[i] = Math.min(earliestAttempt[i], write.attempt!);
    }
    const earliestFrom = new Array<number>(holdings.length + 1).fill(Infinity);
    for (let i = holdings.length - 1; i >= 0; i--) {
      earliestFrom[i] = Math.min(earliestFrom[i + 1], earliestAttempt[i]);
    }
    const refused: string[] = [];
    const stale: string[] = [];
    for (const write of writes) {
      const next = firstNewer[indexOf.get(`${write.worker}:${write.token}`)!];
      if (
        write.accepted === false &&
        !(next < holdings.length && holdings[next].from < write.answered!)
      ) {
        refused.push(
          `worker ${write.worker} token ${write.token} refused while newest`,
        );
      }
      const newerWrote = earliestFrom[next] + TOLERANCE < write.attempt!;
      if (write.accepted === true && newerWrote) {
        stale.push(
          `worker ${write.worker} token ${write.token} accepted after a newer holder wrote`,
        );
      }
    }
    const errors = this.events.filter((e) =>
      (e.type === "error" &&
        (options.errorsFrom === undefined || e.at < options.errorsFrom)) ||
      e.type === "timeout"
    ).map((e) => `worker ${e.worker}: ${e.type} ${e.message ?? ""}`);
    const problems = { untold, inversions, refused, stale, errors };
    for (const [kind, list] of Object.entries(problems)) {
      assert.deepEqual(list, [], `${kind}: ${list.slice(0, 5).join("; ")}`);
    }
    const told = this.events.filter((e) => e.type === "told").length;
    return `${holdings.length} holdings, ${writes.length} writes (${
      writes.filter((w) => w.accepted === false).length
    } refused), ${told} told of a loss`;
  }
}

/**
 * Checks that nothing of the lock stays in Redis but keys that expire by
 * themselves (wake lists, liveness, turn state, signal lists) and the
 * fencing counter.
 */
export async function nothingLeft(raw: RespClient, name: string) {
  assert.equal(await raw.command("EXISTS", `lock:${name}`), 0, "lock");
  assert.equal(await raw.command("EXISTS", `lock-queue:${name}`), 0, "queue");
  const keys = await raw.command("KEYS", "*") as string[];
  for (const key of keys) {
    if (key === "lock-fence") continue;
    const pttl = await raw.command("PTTL", key) as number;
    assert.ok(pttl > 0 || pttl === -2, `${key} expires by itself (${pttl})`);
  }
}
