/**
 * A worker process of the model-based test (model_test.ts), driven by JSON
 * commands on stdin, one per line, and reporting JSON events on stdout:
 *
 * - `{op: "acquire", id, name, timeout?, expire?, python}`: starts an
 *   acquire; reports `acquired` (with its token), `timeout`, `aborted` or
 *   `error` when it settles, and `told` if the lock is later lost. With
 *   `python`, the acquire is python-redis-lock's (a racer: `SET NX`, then
 *   `BLPOP` on the signal list), which has no token and is never told: its
 *   `acquired` says `until` when its expiry ends the holding.
 * - `{op: "abort", id}`: aborts acquire `id` if it still waits.
 * - `{op: "release", id}`: releases what acquire `id` holds; reports
 *   `release` when sent, then `released` or `release-error`.
 * - `{op: "reset", name}`: resets a lock; reports `reset`.
 * - `{op: "drain"}`: releases everything held, and whatever is acquired from
 *   then on; reports `drained` once no acquire is pending.
 *
 * Its connections are named `model-<worker>`, so the test can kill them.
 *
 *   deno run -A tests/_model_worker.ts <port> <worker>
 */

import { Redis } from "ioredis";
import { Lock, LockLostError, shutdown } from "../mod.ts";
import { PYTHON_UNLOCK } from "./_python.ts";

const [port, worker] = Deno.args;
const redis = new Redis(Number(port), "127.0.0.1", {
  connectionName: `model-${worker}`,
});
redis.on("error", () => {});
const now = () => performance.timeOrigin + performance.now();
const emit = (event: Record<string, unknown>) =>
  console.log(JSON.stringify({ worker: Number(worker), at: now(), ...event }));

/** What the model needs of a lock: ours, or python-redis-lock's. */
interface ModelLock {
  acquire(options: {
    timeout?: number;
    signal?: AbortSignal;
  }): Promise<boolean>;
  release(): Promise<void>;
  readonly token?: number;
  readonly signal?: AbortSignal;
}

/**
 * A python-redis-lock `Lock` as its `acquire()` and `release()` run, on a
 * connection of its own (its `BLPOP` blocks). Two liberties, so that a
 * schedule always ends: its `BLPOP` waits at most a second (Python's waits
 * for ever without an expiry, even for a lock that expired), and `SET NX
 * GET` tells it that an earlier `SET` whose reply was lost took the lock.
 * It cannot be aborted. Its connection is closed once it is released or
 * gives up.
 */
class PythonLock implements ModelLock {
  readonly #redis: Redis;
  readonly #key: string;
  readonly #signal: string;
  readonly #expire: number | undefined;
  readonly #id = crypto.randomUUID();
  /** When the holding ends by its expiry (`now()`), if it has one. */
  until: number | undefined;

  constructor(redis: Redis, name: string, expire: number | undefined) {
    this.#redis = redis.duplicate();
    this.#redis.on("error", () => {});
    this.#key = `lock:${name}`;
    this.#signal = `lock-signal:${name}`;
    this.#expire = expire;
  }

  async acquire({ timeout }: { timeout?: number }): Promise<boolean> {
    const deadline = timeout === undefined ? Infinity : now() + timeout;
    let firstSent: number | undefined;
    for (;;) {
      const sentAt = now();
      firstSent ??= sentAt;
      const expiry = this.#expire === undefined ? [] : ["PX", this.#expire];
      let previous: string | null;
      try {
        previous = await this.#redis.call(
          "SET",
          this.#key,
          this.#id,
          "NX",
          "GET",
          ...expiry,
        ) as string | null;
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 50));
        continue;
      }
      if (previous === null || previous === this.#id) {
        const start = previous === null ? sentAt : firstSent;
        this.until = this.#expire === undefined
          ? undefined
          : start + this.#expire;
        return true;
      }
      firstSent = undefined;
      const left = deadline - now();
      if (left <= 0) {
        this.close();
        return false;
      }
      await this.#redis.blpop(this.#signal, Math.min(left, 1_000) / 1_000)
        .catch(() => {});
    }
  }

  async release(): Promise<void> {
    try {
      const reply = await this.#redis.eval(
        PYTHON_UNLOCK,
        2,
        this.#key,
        this.#signal,
        this.#id,
        1_000,
      );
      if (reply !== 0) throw new Error("python: NotAcquired");
    } finally {
      this.close();
    }
  }

  close(): void {
    this.#redis.disconnect();
  }
}

interface Op {
  readonly lock: ModelLock;
  readonly controller: AbortController;
  state: "waiting" | "held" | "done";
  token?: number;
}

const ops = new Map<number, Op>();
let draining = false;

function checkDrained(): void {
  if (draining && [...ops.values()].every((op) => op.state === "done")) {
    emit({ type: "drained" });
  }
}

async function release(id: number): Promise<void> {
  const op = ops.get(id);
  if (op?.state !== "held") return;
  op.state = "done";
  emit({ type: "release", id, token: op.token });
  try {
    await op.lock.release();
    emit({ type: "released", id });
  } catch (error) {
    emit({ type: "release-error", id, message: String(error) });
  }
  checkDrained();
}

function acquire(command: {
  id: number;
  name: string;
  timeout?: number;
  expire?: number;
  python: boolean;
}): void {
  const { id, name, timeout, expire, python } = command;
  const lock: ModelLock = python
    ? new PythonLock(redis, name, expire)
    : new Lock(redis, name, { expire, autoRenewal: expire !== undefined });
  const controller = new AbortController();
  const op: Op = { lock, controller, state: "waiting" };
  ops.set(id, op);
  lock.acquire({ timeout, signal: controller.signal }).then(
    (acquired) => {
      if (!acquired) {
        op.state = "done";
        emit({ type: "timeout", id });
        checkDrained();
        return;
      }
      op.state = "held";
      op.token = lock.token;
      emit({
        type: "acquired",
        id,
        name,
        token: lock.token,
        until: lock instanceof PythonLock ? lock.until : undefined,
      });
      lock.signal?.addEventListener("abort", () => {
        if (lock.signal?.reason instanceof LockLostError) {
          emit({ type: "told", id, token: op.token });
        }
      });
      if (draining) void release(id);
    },
    (error) => {
      op.state = "done";
      emit({
        type: controller.signal.aborted ? "aborted" : "error",
        id,
        message: String(error),
      });
      checkDrained();
    },
  );
}

emit({ type: "ready" });
let rest = "";
for await (
  const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())
) {
  const lines = (rest + chunk).split("\n");
  rest = lines.pop()!;
  for (const line of lines) {
    const command = JSON.parse(line);
    switch (command.op) {
      case "acquire":
        acquire(command);
        break;
      case "abort":
        ops.get(command.id)?.controller.abort(new Error("aborted"));
        break;
      case "release":
        void release(command.id);
        break;
      case "reset":
        new Lock(redis, command.name).reset().then(
          () => emit({ type: "reset", name: command.name }),
          (error) => emit({ type: "reset-error", message: String(error) }),
        );
        break;
      case "drain":
        draining = true;
        for (const [id, op] of ops) if (op.state === "held") void release(id);
        checkDrained();
        break;
    }
  }
}
await shutdown(redis);
redis.disconnect();
for (const op of ops.values()) {
  if (op.lock instanceof PythonLock) op.lock.close();
}
Deno.exit(0);
