/**
 * A worker process of the model-based test (model_test.ts), driven by JSON
 * commands on stdin, one per line, and reporting JSON events on stdout:
 *
 * - `{op: "acquire", id, name, timeout?, expire?, fair}`: starts an
 *   acquire; reports `acquired` (with its token), `timeout`, `aborted` or
 *   `error` when it settles, and `told` if the lock is later lost.
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

const [port, worker] = Deno.args;
const redis = new Redis(Number(port), "127.0.0.1", {
  connectionName: `model-${worker}`,
});
redis.on("error", () => {});
const now = () => performance.timeOrigin + performance.now();
const emit = (event: Record<string, unknown>) =>
  console.log(JSON.stringify({ worker: Number(worker), at: now(), ...event }));

interface Op {
  readonly lock: Lock;
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
  fair: boolean;
}): void {
  const { id, name, timeout, expire, fair } = command;
  const lock = new Lock(redis, name, {
    expire,
    autoRenewal: expire !== undefined,
    fair,
  });
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
      emit({ type: "acquired", id, name, token: lock.token });
      lock.signal.addEventListener("abort", () => {
        if (lock.signal.reason instanceof LockLostError) {
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
Deno.exit(0);
