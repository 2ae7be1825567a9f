/**
 * The fault suite: worker processes contend for one lock under each fault
 * while the safety checker (_safety.ts) watches. Every run checks: no
 * overlap with an untold holder, tokens in order, fenced writes, progress,
 * and nothing left behind. `FAULTS_LONG=1` runs longer and harder.
 */

import assert from "node:assert/strict";
import { RespClient } from "./_resp.ts";
import { nothingLeft, SafetyRun } from "./_safety.ts";
import { RedisServer } from "./_server.ts";

const LONG = Deno.env.get("FAULTS_LONG") === "1";
const WORKERS = LONG ? 8 : 4;
const RUN = LONG ? 10_000 : 2_000;
const EXPIRE = 1_000;
const HOLD = 30;

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const now = () => performance.timeOrigin + performance.now();

interface FaultBed extends AsyncDisposable {
  readonly lockServer: RedisServer;
  readonly raw: () => RespClient;
  start(name: string, expire?: number, hold?: number): Promise<SafetyRun>;
  /** The raw connection, reopened after a restart. */
  reconnect(): Promise<void>;
}

async function faultBed(args: string[] = []): Promise<FaultBed> {
  const lockServer = await RedisServer.start({ args });
  const storeServer = await RedisServer.start();
  let raw = await RespClient.connect(lockServer.port);
  let run: SafetyRun | undefined;
  return {
    lockServer,
    raw: () => raw,
    async start(name, expire = EXPIRE, hold = HOLD) {
      run = await SafetyRun.start({
        lockServer,
        storeServer,
        name,
        workers: WORKERS,
        expire,
        hold,
      });
      return run;
    },
    async reconnect() {
      await raw.close();
      raw = await RespClient.connect(lockServer.port);
    },
    async [Symbol.asyncDispose]() {
      await run?.stop();
      await raw.close();
      await lockServer[Symbol.asyncDispose]();
      await storeServer[Symbol.asyncDispose]();
    },
  };
}

/** Time for every worker to hold once, after a fault: none may be stuck. */
function progressBound(hold: number): number {
  return WORKERS * (hold + 200) + EXPIRE + 2_000;
}

/**
 * The end of every scenario: every worker acquires after `from` (the
 * fault), the workers stop, the checker finds nothing wrong (errors from
 * Redis allowed from `errorsFrom` on), and nothing is left in Redis.
 */
async function finish(
  env: FaultBed,
  run: SafetyRun,
  name: string,
  from: number,
  { hold = HOLD, errorsFrom, note = "" }: {
    hold?: number;
    errorsFrom?: number;
    note?: string;
  } = {},
): Promise<void> {
  await run.progressed(from, progressBound(hold));
  await run.stop();
  console.log(`${note}${run.check({ errorsFrom })}`);
  await nothingLeft(env.raw(), name);
}

/**
 * SIGKILLs the holder; resolves when and how long after another worker
 * acquired (within the expiry and a second).
 */
async function killHolder(
  run: SafetyRun,
): Promise<{ killedAt: number; waited: number }> {
  await run.kill(await run.holding());
  const killedAt = now();
  await run.until(
    () => run.acquisitions(killedAt).length > 0,
    "the next holder",
    EXPIRE + 1_000,
  );
  const waited = run.acquisitions(killedAt)[0].at - killedAt;
  assert.ok(waited <= EXPIRE + 1_000, `next holder after ${waited} ms`);
  return { killedAt, waited };
}

Deno.test("safety: no faults", async () => {
  await using env = await faultBed();
  const run = await env.start("calm");
  const started = now();
  await delay(RUN);
  await finish(env, run, "calm", started);
});

Deno.test("safety: SIGKILL of the holder", async () => {
  await using env = await faultBed();
  const run = await env.start("killed");
  const { killedAt, waited } = await killHolder(run);
  await delay(RUN);
  await finish(env, run, "killed", killedAt, {
    note: `next holder ${Math.round(waited)} ms after the kill; `,
  });
});

Deno.test("safety: holders that loop with short holds take turns; the looping holder killed", async () => {
  await using env = await faultBed();
  // Holds of a few ms, shorter than a holder's tenure: releases give turns.
  const run = await env.start("turns", EXPIRE, 0);
  await delay(RUN);
  // Turns happened: one worker held the lock several times in a row, while
  // the others were queued (in strict order, each holds once per cycle).
  let streak = 1;
  let longest = 1;
  const holdings = run.acquisitions();
  for (let i = 1; i < holdings.length; i++) {
    streak = holdings[i].worker === holdings[i - 1].worker ? streak + 1 : 1;
    longest = Math.max(longest, streak);
  }
  assert.ok(longest >= 2, `the longest run of one worker: ${longest}`);
  const { killedAt, waited } = await killHolder(run);
  await delay(RUN);
  await finish(env, run, "turns", killedAt, {
    hold: 0,
    note: `longest run ${longest}; next holder ${
      Math.round(waited)
    } ms after the kill; `,
  });
});

Deno.test("safety: SIGSTOP of the holder past its expiry", async () => {
  await using env = await faultBed();
  const run = await env.start("paused");
  let resumedAt = 0;
  // The holder as far as its events tell may have released just before the
  // pause (its "release" not yet read): then pause the next one.
  for (let attempt = 0;; attempt++) {
    const holder = await run.holding();
    const token = run.tokenOf(holder);
    const pausedAt = now();
    await run.pause(holder, EXPIRE * 2.5);
    resumedAt = now();
    const releasedBefore = run.events.some((e) =>
      e.worker === holder && e.token === token && e.type === "release" &&
      e.at < pausedAt
    );
    if (releasedBefore && attempt < 3) continue;
    assert.ok(
      run.acquisitions(pausedAt).some((e) => e.worker !== holder),
      "another holder acquired during the pause",
    );
    await run.until(
      () => run.told(holder, token),
      "the paused holder is told once it runs again",
      2_000,
    );
    break;
  }
  await delay(RUN);
  await finish(env, run, "paused", resumedAt);
});

Deno.test("safety: CLIENT KILL of the waiting connections", async () => {
  await using env = await faultBed();
  const run = await env.start("client-kill");
  const started = now();
  let killed = 0;
  while (now() - started < RUN) {
    const list = String(await env.raw().command("CLIENT", "LIST"));
    for (const [, id] of list.matchAll(/\bid=(\d+)\b.*\bcmd=blpop\b/g)) {
      await env.raw().command("CLIENT", "KILL", "ID", id).catch(() => {});
      killed++;
    }
    await delay(150);
  }
  assert.ok(killed > 0, "waiting connections were killed");
  await finish(env, run, "client-kill", now(), {
    note: `${killed} connections killed; `,
  });
});

Deno.test("safety: Redis restart without persistence", async () => {
  await using env = await faultBed();
  // Holdings longer than the expiry: the restart finds the holder renewing.
  const hold = EXPIRE * 1.5;
  const run = await env.start("restart-empty", EXPIRE, hold);
  const holder = await run.holding();
  const token = run.tokenOf(holder);
  await delay(EXPIRE / 3 + 50); // right after a renewal
  const restartedAt = now();
  await env.raw().close();
  await env.lockServer.restart();
  await env.reconnect();
  await finish(env, run, "restart-empty", now(), {
    hold,
    errorsFrom: restartedAt,
  });
  assert.ok(run.told(holder, token), "the holder was told");
});

Deno.test("safety: Redis restart with appendfsync always", async () => {
  await using env = await faultBed([
    "--appendonly",
    "yes",
    "--appendfsync",
    "always",
  ]);
  // An expiry longer than the restart: the lock outlives it.
  const hold = 1_500;
  const run = await env.start("restart-kept", 5_000, hold);
  const holder = await run.holding();
  const token = run.tokenOf(holder);
  const restartedAt = now();
  await env.raw().close();
  await env.lockServer.kill();
  await env.lockServer.restart();
  await env.reconnect();
  await finish(env, run, "restart-kept", now(), {
    hold,
    errorsFrom: restartedAt,
  });
  assert.deepEqual(
    run.events.filter((e) => e.type === "told"),
    [],
    "no holder lost its lock",
  );
  assert.ok(
    run.events.some((e) =>
      e.worker === holder && e.token === token && e.type === "write" &&
      e.at > restartedAt && e.accepted
    ),
    "the holder went on writing after the restart",
  );
});

Deno.test("safety: DEBUG SLEEP past the renewal margin", async () => {
  await using env = await faultBed(["--enable-debug-command", "yes"]);
  const hold = EXPIRE * 1.5;
  const run = await env.start("slept", EXPIRE, hold);
  const holder = await run.holding();
  const token = run.tokenOf(holder);
  await delay(EXPIRE / 3 + 50); // right after a renewal
  // Longer than the two thirds of the expiry that a renewal leaves.
  await env.raw().command("DEBUG", "SLEEP", (EXPIRE * 1.5) / 1000);
  await finish(env, run, "slept", now(), { hold });
  assert.ok(run.told(holder, token), "the holder was told");
});
