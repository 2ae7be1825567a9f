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
  LockLostError,
  type RedisClient,
  resetAll,
} from "../mod.ts";
import { type LocalCluster, migrateSlot, startCluster } from "./_cluster.ts";
import { RespClient } from "./_resp.ts";

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Disconnects a cluster client and waits until every node has ended. */
async function closeCluster(client: Cluster): Promise<void> {
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
    const holder = await acquire(redis, "waited");
    const waiting = new Lock(redis, "waited").acquire({ timeout: 5_000 });
    await delay(100);
    await holder.release();
    assert.equal(await waiting, true);
    assert.equal(await resetAll(redis), 1);
  } finally {
    await client.close();
  }
});
