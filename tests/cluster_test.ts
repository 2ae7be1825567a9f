/**
 * Locks on a real local Redis Cluster (3 masters, 3 replicas): keys of one
 * lock in one slot, names over every master, waiting, resetAll, a manual
 * failover, and node-redis's cluster client.
 */

import assert from "node:assert/strict";
import { Cluster } from "ioredis";
import { createCluster } from "redis";
import {
  acquire,
  Lock,
  LockError,
  LockLostError,
  type RedisClient,
  resetAll,
  shutdown,
} from "../mod.ts";
import { type LocalCluster, migrateSlot, startCluster } from "./_cluster.ts";
import { RespClient } from "./_resp.ts";
import { slotOf } from "../src/keys.ts";
import { denoScript } from "./_deno.ts";

const worker = new URL("./_worker.ts", import.meta.url);

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Stops the client's waiting, disconnects it and waits until every node
 * has ended.
 */
async function closeCluster(client: Cluster): Promise<void> {
  await shutdown(client);
  if (client.status === "end") return;
  await new Promise<void>((resolve) => {
    client.once("end", () => resolve());
    client.disconnect();
  });
}

async function ioCluster(cluster: LocalCluster): Promise<Cluster> {
  const client = new Cluster(cluster.addresses);
  client.on("error", () => {});
  await new Promise((resolve) => client.once("ready", resolve));
  return client;
}

/**
 * `perMaster` names for each master: names whose slots the masters own,
 * found by trying `<prefix><i>`.
 */
function namesOnEveryMaster(
  client: Cluster,
  prefix: string,
  perMaster: number,
): string[] {
  const byMaster = new Map<string, string[]>();
  for (
    let i = 0;
    byMaster.size < 3 ||
    [...byMaster.values()].some((names) => names.length < perMaster);
    i++
  ) {
    const name = `${prefix}${i}`;
    const master = (client as unknown as { slots: string[][] })
      .slots[slotOf(`lock:{${name}}`)][0];
    const names = byMaster.get(master) ?? [];
    if (names.length < perMaster) names.push(name);
    byMaster.set(master, names);
  }
  return [...byMaster.values()].flat();
}

/** The number of Pub/Sub connections on each master, by `CLIENT LIST`. */
async function subscribersOnMasters(cluster: LocalCluster): Promise<number[]> {
  const counts: number[] = [];
  for (const node of cluster.nodes) {
    const raw = await RespClient.connect(node.port);
    try {
      const role = String(await raw.command("ROLE"));
      if (!role.startsWith("master")) continue;
      const list = String(
        await raw.command("CLIENT", "LIST", "TYPE", "pubsub"),
      );
      counts.push(list.split("\n").filter((line) => line.trim()).length);
    } finally {
      await raw.close();
    }
  }
  return counts;
}

/** Subscriptions to a sharded channel, over every node. */
async function shardSubscriptions(
  cluster: LocalCluster,
  channel: string,
): Promise<number> {
  let count = 0;
  for (const node of cluster.nodes) {
    const raw = await RespClient.connect(node.port);
    try {
      const reply = await raw.command("PUBSUB", "SHARDNUMSUB", channel);
      count += Number((reply as unknown[])[1]);
    } finally {
      await raw.close();
    }
  }
  return count;
}

/** Kills every Pub/Sub connection on every node. */
async function killSubscribers(cluster: LocalCluster): Promise<void> {
  for (const node of cluster.nodes) {
    const raw = await RespClient.connect(node.port);
    try {
      await raw.command("CLIENT", "KILL", "TYPE", "pubsub");
    } finally {
      await raw.close();
    }
  }
}

/** Every key on every node's masters, by `KEYS` on each. */
async function keysOnMasters(cluster: LocalCluster): Promise<string[]> {
  const keys: string[] = [];
  for (const node of cluster.nodes) {
    const raw = await RespClient.connect(node.port);
    try {
      const role = String(await raw.command("ROLE"));
      if (!role.startsWith("master")) continue;
      keys.push(...await raw.command("KEYS", "lock*") as string[]);
    } finally {
      await raw.close();
    }
  }
  return keys.sort();
}

Deno.test("Cluster: names over every master, the keys of each in one slot", async (t) => {
  await using cluster = await startCluster();
  const client = await ioCluster(cluster);
  try {
    await t.step("acquire, extend and release 40 names", async () => {
      const names = Array.from({ length: 40 }, (_, i) => `job:${i}`);
      const locks = names.map((name) =>
        new Lock(client, name, { expire: 10_000 })
      );
      for (const lock of locks) {
        assert.equal(await lock.acquire({ blocking: false }), true);
      }
      const slots = new Set<number>();
      for (const name of names) {
        assert.ok(await client.get(`lock:{${name}}`));
        slots.add(Number(await client.cluster("KEYSLOT", `lock:{${name}}`)));
      }
      // Every master holds some: the names spread.
      const perMaster = new Map<number, number>();
      for (const node of client.nodes("master")) {
        const count = Number(await node.dbsize());
        perMaster.set(Number(node.options.port), count);
        assert.ok(count > 0, `master ${node.options.port} holds locks`);
      }
      for (const lock of locks) await lock.extend(20_000);
      const tokens = locks.map((lock) => lock.token);
      for (const lock of locks) await lock.release();
      // Tokens per name keep increasing.
      for (const [i, lock] of locks.entries()) {
        assert.equal(await lock.acquire({ blocking: false }), true);
        assert.ok(lock.token > tokens[i]);
        await lock.release();
      }
      // One fencing counter per slot used, whatever the number of names.
      const keys = await keysOnMasters(cluster);
      const fences = keys.filter((key) => key.startsWith("lock-fence"));
      assert.equal(fences.length, slots.size);
      assert.deepEqual(keys.filter((key) => key.startsWith("lock:")), []);
    });

    await t.step("a name with a hash tag keeps it", async () => {
      const lock = new Lock(client, "{account:7}:payout");
      await lock.acquire({ blocking: false });
      assert.equal(await client.get("lock:{account:7}:payout"), lock.id);
      await lock.release();
    });

    await t.step(
      "a waiter takes the lock at a release and at an expiry",
      async () => {
        const other = await ioCluster(cluster);
        try {
          const holder = await acquire(client, "waited", { expire: 10_000 });
          const waiting = new Lock(other, "waited").acquire({ timeout: 5_000 });
          await delay(150);
          await holder.release();
          assert.equal(await waiting, true);
          await new Lock(other, "waited").reset();
          await new Lock(client, "expiring", { expire: 300 }).acquire();
          const started = performance.now();
          const lock = new Lock(other, "expiring");
          assert.equal(await lock.acquire({ timeout: 5_000 }), true);
          const waited = performance.now() - started;
          assert.ok(waited < 700, `acquired after ${waited} ms`);
          await lock.release();
          assert.equal(
            await new Lock(other, "expiring").acquire({ timeout: 200 }),
            true,
          );
          await new Lock(other, "expiring").reset();
        } finally {
          await closeCluster(other);
        }
      },
    );

    await t.step(
      "pythonPeers: false leaves no wake-up in the signal list, and still hands the lock over",
      async () => {
        const other = await ioCluster(cluster);
        try {
          const options = { expire: 10_000, pythonPeers: false };
          const holder = new Lock(client, "alone", options);
          await holder.acquire();
          await holder.release();
          assert.equal(await client.exists("lock-signal:{alone}"), 0);
          await holder.acquire();
          const waiter = new Lock(other, "alone", options);
          const waiting = waiter.acquire({ timeout: 5_000 });
          await delay(150);
          await holder.release();
          assert.equal(await waiting, true);
          assert.equal(await client.get("lock:{alone}"), waiter.id);
          assert.ok(waiter.token > holder.token);
          await waiter.release();
          assert.equal(await client.exists("lock-signal:{alone}"), 0);
          assert.equal(await client.exists("lock:{alone}"), 0);
        } finally {
          await closeCluster(other);
        }
      },
    );

    await t.step("waiters of several clients exclude each other", async () => {
      const clients = [
        client,
        await ioCluster(cluster),
        await ioCluster(cluster),
      ];
      try {
        let inside = 0;
        let most = 0;
        await Promise.all(clients.map(async (c) => {
          for (let i = 0; i < 15; i++) {
            await using _lock = await acquire(c, "shared", {
              expire: 5_000,
              pollInterval: 5,
            });
            inside++;
            most = Math.max(most, inside);
            await delay(2);
            inside--;
          }
        }));
        assert.equal(most, 1);
      } finally {
        for (const c of clients.slice(1)) await closeCluster(c);
      }
    });

    await t.step(
      "waiters woken across nodes by sharded Pub/Sub, one subscriber connection per node",
      async () => {
        const other = await ioCluster(cluster);
        try {
          const names = namesOnEveryMaster(client, "woken:", 3);
          const holders = await Promise.all(
            names.map((name) => acquire(client, name, { expire: 20_000 })),
          );
          const waits = names.map((name) => {
            const lock = new Lock(other, name);
            return lock.acquire({ timeout: 10_000 }).then((acquired) => ({
              lock,
              acquired,
              at: performance.now(),
            }));
          });
          // Settled when shut down after a failure, too.
          waits.forEach((wait) => wait.catch(() => {}));
          await delay(300);
          // One subscriber connection on each master, whatever the number
          // of names; one subscription to each name's channel.
          assert.deepEqual(await subscribersOnMasters(cluster), [1, 1, 1]);
          for (const name of names) {
            assert.equal(
              await shardSubscriptions(cluster, `lock-signal:{${name}}`),
              1,
            );
          }
          const released = performance.now();
          for (const holder of holders) await holder.release();
          for (const { lock, acquired, at } of await Promise.all(waits)) {
            assert.equal(acquired, true);
            // Well before a tick (1,000 ms or more): heard, not polled.
            assert.ok(at - released < 300, `woken after ${at - released} ms`);
            await lock.release();
          }
          // The subscriber closes about a second after the last wait.
          await delay(1_500);
          assert.deepEqual(await subscribersOnMasters(cluster), [0, 0, 0]);
        } finally {
          await closeCluster(other);
        }
      },
    );

    await t.step(
      "a subscription dropped while waiting costs at most a tick",
      async () => {
        const other = await ioCluster(cluster);
        try {
          const holder = await acquire(client, "dropped", { expire: 20_000 });
          const started = performance.now();
          const waiting = new Lock(other, "dropped").acquire({
            timeout: 10_000,
          });
          await delay(300);
          await killSubscribers(cluster);
          await holder.release();
          assert.equal(await waiting, true);
          const waited = performance.now() - started;
          assert.ok(waited < 300 + 1_600, `acquired after ${waited} ms`);
          await new Lock(other, "dropped").reset();
          // Subscribed again: the next release is heard at once.
          const again = await acquire(client, "dropped", { expire: 20_000 });
          const next = new Lock(other, "dropped").acquire({ timeout: 10_000 });
          await delay(1_700);
          const released = performance.now();
          await again.release();
          assert.equal(await next, true);
          const heard = performance.now() - released;
          assert.ok(heard < 300, `acquired ${heard} ms after the release`);
          await new Lock(other, "dropped").reset();
        } finally {
          await closeCluster(other);
        }
      },
    );

    await t.step(
      "transports: BLPOP refused, polling waits, shutdown() ends waits",
      async () => {
        assert.throws(
          () => new Lock(client, "t", { transport: "blpop" }),
          (error: Error) =>
            error instanceof TypeError && /transport/.test(error.message) &&
            /Cluster/.test(error.message),
        );
        const other = await ioCluster(cluster);
        try {
          const holder = await acquire(client, "polled", { expire: 20_000 });
          const polled = new Lock(other, "polled", {
            transport: "poll",
            pollInterval: 50,
          }).acquire({ timeout: 10_000 });
          await delay(200);
          // Polling subscribes to nothing.
          assert.deepEqual(await subscribersOnMasters(cluster), [0, 0, 0]);
          await holder.release();
          assert.equal(await polled, true);
          await new Lock(other, "polled").reset();

          const held = await acquire(client, "ended", { expire: 20_000 });
          const waits = [
            new Lock(other, "ended").acquire(),
            new Lock(other, "ended", { transport: "poll" }).acquire(),
          ];
          waits.forEach((wait) => wait.catch(() => {}));
          await delay(200);
          await shutdown(other);
          for (const wait of waits) {
            await assert.rejects(
              wait,
              (error: Error) =>
                error instanceof LockError && /shut down/.test(error.message),
            );
          }
          assert.deepEqual(await subscribersOnMasters(cluster), [0, 0, 0]);
          await held.release();
          // A later wait opens a new subscriber.
          const next = await acquire(client, "ended", { expire: 20_000 });
          const later = new Lock(other, "ended").acquire({ timeout: 10_000 });
          await delay(200);
          await next.release();
          assert.equal(await later, true);
          await new Lock(other, "ended").reset();
        } finally {
          await closeCluster(other);
        }
      },
    );

    await t.step(
      "no two processes hold a lock at once, names over every master",
      async () => {
        const names = namesOnEveryMaster(client, "procs:", 1);
        const iterations = 30;
        const children = Array.from({ length: 4 }, () =>
          denoScript(
            worker,
            [
              "cluster",
              String(cluster.addresses[0].port),
              names.join(","),
              String(iterations),
            ],
            { stdout: "piped", stderr: "inherit" },
          ).spawn());
        const results = await Promise.all(
          children.map((child) => child.output()),
        );
        const byName = new Map<string, [number, number][]>();
        for (const result of results) {
          assert.equal(result.code, 0);
          const { intervals } = JSON.parse(
            new TextDecoder().decode(result.stdout),
          ) as { intervals: [number, number, string][] };
          for (const [start, end, name] of intervals) {
            byName.set(name, [...byName.get(name) ?? [], [start, end]]);
          }
        }
        for (const name of names) {
          const held = byName.get(name)!.sort((a, b) => a[0] - b[0]);
          for (let i = 1; i < held.length; i++) {
            assert.ok(held[i][0] >= held[i - 1][1], `overlap on ${name}`);
          }
          assert.equal(
            await client.get(`counter:{${name}}`),
            String(held.length),
          );
        }
        assert.equal(
          [...byName.values()].reduce((sum, held) => sum + held.length, 0),
          4 * iterations,
        );
      },
    );

    await t.step(
      "waiters served first come, first served; a releaser that asks again goes last",
      async () => {
        const [a, b] = [await ioCluster(cluster), await ioCluster(cluster)];
        try {
          const order: string[] = [];
          const take = async (c: Cluster, who: string) => {
            const lock = new Lock(c, "fifo", { expire: 20_000 });
            assert.equal(await lock.acquire({ timeout: 10_000 }), true);
            order.push(who);
            await delay(50);
            await lock.release();
          };
          const holder = await acquire(client, "fifo", { expire: 20_000 });
          const first = take(a, "a");
          await delay(200);
          const second = take(b, "b");
          await delay(200);
          await holder.release();
          const again = take(client, "again");
          await Promise.all([first, second, again]);
          assert.deepEqual(order, ["a", "b", "again"]);
          // Nothing of the waits stays.
          assert.deepEqual(
            (await keysOnMasters(cluster)).filter((key) =>
              key.includes("{fifo}") && !key.startsWith("lock-signal")
            ),
            [],
          );
        } finally {
          await closeCluster(a);
          await closeCluster(b);
        }
      },
    );

    await t.step(
      "a wait whose process died is skipped once its time has passed",
      async () => {
        const other = await ioCluster(cluster);
        const child = denoScript(
          worker,
          ["cluster-queue", String(cluster.addresses[0].port), "dead"],
          { stdout: "null", stderr: "inherit" },
        ).spawn();
        try {
          const holder = await acquire(client, "dead", { expire: 30_000 });
          // The child queues, then dies without a word.
          const deadline = Date.now() + 15_000;
          while ((await client.llen("lock-queue:{dead}")) === 0) {
            assert.ok(Date.now() < deadline, "the child queued");
            await delay(50);
          }
          child.kill("SIGKILL");
          await child.status;
          const waiting = new Lock(other, "dead").acquire({ timeout: 20_000 })
            .then((acquired) => ({ acquired, at: performance.now() }));
          waiting.catch(() => {});
          await delay(5_500); // past the dead wait's time (ALIVE_TTL)
          const released = performance.now();
          await holder.release();
          const { acquired, at } = await waiting;
          assert.equal(acquired, true);
          assert.ok(at - released < 300, `acquired ${at - released} ms after`);
          await new Lock(other, "dead").reset();
          assert.deepEqual(
            (await keysOnMasters(cluster)).filter((key) =>
              key.includes("{dead}") && !key.startsWith("lock-signal")
            ),
            [],
          );
        } finally {
          try {
            child.kill("SIGKILL");
            await child.status;
          } catch {
            // already dead
          }
          await closeCluster(other);
        }
      },
    );

    await t.step(
      "waits that give up at random leave nothing and never strand the lock",
      async () => {
        const clients = [await ioCluster(cluster), await ioCluster(cluster)];
        try {
          const until = performance.now() + 1_500;
          const holding = (async () => {
            while (performance.now() < until) {
              const lock = new Lock(client, "giving-up", { expire: 5_000 });
              if (await lock.acquire({ timeout: 2_000 })) {
                await delay(20 + Math.random() * 30);
                await lock.release();
              }
            }
          })();
          const waits: Promise<unknown>[] = [];
          for (let i = 0; i < 40; i++) {
            const c = clients[i % 2];
            const lock = new Lock(c, "giving-up", { expire: 5_000 });
            const abort = new AbortController();
            const wait = lock.acquire(
              i % 3 === 0
                ? { signal: abort.signal }
                : { timeout: 20 + Math.random() * 200 },
            ).then(async (acquired) => {
              if (acquired) {
                await delay(5);
                await lock.release();
              }
            }, () => {});
            if (i % 3 === 0) {
              setTimeout(() => abort.abort(), Math.random() * 200);
            }
            waits.push(wait);
            await delay(Math.random() * 40);
          }
          await Promise.all([holding, ...waits]);
          // Waits that time out under a holder leave nothing behind.
          const held = await acquire(client, "giving-up", { expire: 20_000 });
          const timedOut = await Promise.all(
            Array.from(
              { length: 6 },
              (_, i) =>
                new Lock(clients[i % 2], "giving-up").acquire({
                  timeout: 100 + i * 40,
                }),
            ),
          );
          assert.deepEqual(timedOut, Array(6).fill(false));
          assert.deepEqual(
            (await keysOnMasters(cluster)).filter((key) =>
              key.includes("{giving-up}") && !key.startsWith("lock-signal") &&
              !key.startsWith("lock:")
            ),
            [],
          );
          await held.release();
          // Free, and nothing of the waits left.
          assert.equal(
            await new Lock(client, "giving-up").acquire({ blocking: false }),
            true,
          );
          await new Lock(client, "giving-up").reset();
          assert.deepEqual(
            (await keysOnMasters(cluster)).filter((key) =>
              key.includes("{giving-up}") && !key.startsWith("lock-signal")
            ),
            [],
          );
        } finally {
          for (const c of clients) await closeCluster(c);
        }
      },
    );

    await t.step("resetAll() resets the locks of every master", async () => {
      const names = Array.from({ length: 12 }, (_, i) => `reset:${i}`);
      for (const name of names) await acquire(client, name);
      assert.equal(await resetAll(client), names.length);
      assert.deepEqual(
        (await keysOnMasters(cluster)).filter((key) => key.startsWith("lock:")),
        [],
      );
    });

    await t.step(
      "a lock kept through the migration of its slot, or its loss told",
      async () => {
        const lock = new Lock(client, "migrated", {
          expire: 900,
          autoRenewal: true,
        });
        await lock.acquire();
        const slot = Number(
          await client.cluster("KEYSLOT", "lock:{migrated}"),
        );
        // Half-way for longer than the lock's expiry: renewals go on.
        await migrateSlot(cluster, slot, async () => {
          await delay(1_200);
        });
        await delay(1_200);
        if (lock.signal.aborted) {
          assert.ok(lock.signal.reason instanceof LockLostError);
        } else {
          assert.equal(await client.get("lock:{migrated}"), lock.id);
          await lock.release();
        }
        // The lock works on its new master.
        await using again = await acquire(client, "migrated", {
          timeout: 2_000,
        });
        assert.equal(await client.get("lock:{migrated}"), again.id);
      },
    );

    await t.step(
      "a lock kept through a manual failover, or its loss told",
      async () => {
        const lock = new Lock(client, "failover", {
          expire: 3_000,
          autoRenewal: true,
        });
        await lock.acquire();
        const slot = Number(await client.cluster("KEYSLOT", "lock:{failover}"));
        // The replica of the master that owns the slot takes over.
        const nodes = String(await client.cluster("NODES")).trim().split("\n");
        const master = nodes.find((line) =>
          line.includes("master") && line.split(" ").slice(8).some((range) => {
            const [from, to] = range.split("-").map(Number);
            return slot >= from && slot <= (to ?? from);
          })
        )!.split(" ")[0];
        const replica = nodes.find((line) =>
          line.split(" ")[3] === master
        )!;
        const port = Number(replica.split(" ")[1].split(":")[1].split("@")[0]);
        const raw = await RespClient.connect(port);
        await raw.command("CLUSTER", "FAILOVER");
        await raw.close();
        await delay(3_500); // past the lock's expiry: renewals go on
        if (lock.signal.aborted) {
          assert.ok(lock.signal.reason instanceof LockLostError);
        } else {
          assert.equal(await client.get("lock:{failover}"), lock.id);
          await lock.release();
        }
        await resetAll(client);
      },
    );
  } finally {
    await closeCluster(client);
  }
});

Deno.test("Cluster: node-redis's cluster client", async () => {
  await using cluster = await startCluster();
  const client = await createCluster({
    rootNodes: cluster.addresses.map(({ host, port }) => ({
      url: `redis://${host}:${port}`,
    })),
  }).connect();
  try {
    const redis = client as unknown as RedisClient;
    const names = Array.from({ length: 10 }, (_, i) => `n:${i}`);
    for (const name of names) {
      await using lock = await acquire(redis, name, { expire: 5_000 });
      assert.equal(await lock.ownerId(), lock.id);
      await lock.extend();
    }
    // Waiters on every master, woken by sharded Pub/Sub.
    const woken = names.slice(0, 6);
    const holders = await Promise.all(
      woken.map((name) => acquire(redis, name, { expire: 20_000 })),
    );
    const waits = woken.map((name) =>
      new Lock(redis, name).acquire({ timeout: 10_000 }).then((acquired) => ({
        acquired,
        at: performance.now(),
      }))
    );
    waits.forEach((wait) => wait.catch(() => {}));
    await delay(300);
    const released = performance.now();
    for (const holder of holders) await holder.release();
    for (const { acquired, at } of await Promise.all(waits)) {
      assert.equal(acquired, true);
      assert.ok(at - released < 300, `woken after ${at - released} ms`);
    }
    assert.equal(await resetAll(redis), woken.length);
    await shutdown(redis);
  } finally {
    await client.close();
  }
});
