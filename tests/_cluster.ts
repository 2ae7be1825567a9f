/**
 * A local Redis Cluster for tests: six `redis-server --cluster-enabled yes`
 * on free loopback ports, joined by `redis-cli --cluster create` with one
 * replica per master, ready once every node reports `cluster_state:ok`.
 *
 * @module
 */

import { RespClient } from "./_resp.ts";
import { RedisServer } from "./_server.ts";

/** A running cluster; `await using` stops it. */
export interface LocalCluster extends AsyncDisposable {
  readonly nodes: RedisServer[];
  /** `host:port` of every node, for a cluster client's start-up nodes. */
  readonly addresses: { host: string; port: number }[];
}

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Starts a cluster of `size` nodes (3 masters, 3 replicas by default). */
export async function startCluster(size = 6): Promise<LocalCluster> {
  const nodes: RedisServer[] = [];
  try {
    for (let i = 0; i < size; i++) {
      nodes.push(
        await RedisServer.start({
          args: [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
          ],
        }),
      );
    }
    const { code, stderr } = await new Deno.Command("redis-cli", {
      args: [
        "--cluster",
        "create",
        ...nodes.map((node) => `${node.hostname}:${node.port}`),
        "--cluster-replicas",
        "1",
        "--cluster-yes",
      ],
      stdout: "null",
      stderr: "piped",
    }).output();
    if (code !== 0) {
      throw new Error(
        `redis-cli --cluster create failed: ${
          new TextDecoder().decode(stderr)
        }`,
      );
    }
    const deadline = Date.now() + 20_000;
    for (const node of nodes) {
      const raw = await RespClient.connect(node.port);
      try {
        for (;;) {
          const info = String(await raw.command("CLUSTER", "INFO"));
          if (info.includes("cluster_state:ok")) break;
          if (Date.now() > deadline) throw new Error("cluster not ok");
          await delay(50);
        }
      } finally {
        await raw.close();
      }
    }
  } catch (error) {
    for (const node of nodes) await node[Symbol.asyncDispose]();
    throw error;
  }
  return {
    nodes,
    addresses: nodes.map((node) => ({ host: node.hostname, port: node.port })),
    async [Symbol.asyncDispose]() {
      for (const node of nodes) await node[Symbol.asyncDispose]();
    },
  };
}

/** The id and port of the master that owns `slot`, and of another master. */
async function owners(
  cluster: LocalCluster,
  slot: number,
): Promise<{ from: [string, number]; to: [string, number] }> {
  const raw = await RespClient.connect(cluster.nodes[0].port);
  const lines = String(await raw.command("CLUSTER", "NODES")).trim().split(
    "\n",
  );
  await raw.close();
  const masters = lines.map((line) => line.split(" ")).filter((fields) =>
    fields[2].includes("master")
  );
  const port = (fields: string[]) => Number(fields[1].split(/[:@]/)[1]);
  const owns = (fields: string[]) =>
    fields.slice(8).some((range) => {
      const [from, to] = range.split("-").map(Number);
      return slot >= from && slot <= (to ?? from);
    });
  const from = masters.find(owns)!;
  const to = masters.find((fields) => fields !== from)!;
  return { from: [from[0], port(from)], to: [to[0], port(to)] };
}

/**
 * Moves `slot` to another master, the way `redis-cli --cluster reshard`
 * does: importing and migrating, `MIGRATE` of its keys, then the new owner
 * told to every master. `during` runs while the slot is half-way.
 */
export async function migrateSlot(
  cluster: LocalCluster,
  slot: number,
  during: () => Promise<void>,
): Promise<void> {
  const { from: [fromId, fromPort], to: [toId, toPort] } = await owners(
    cluster,
    slot,
  );
  const source = await RespClient.connect(fromPort);
  const target = await RespClient.connect(toPort);
  try {
    await target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", fromId);
    await source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", toId);
    await during();
    for (;;) {
      const keys = await source.command(
        "CLUSTER",
        "GETKEYSINSLOT",
        slot,
        100,
      ) as string[];
      if (keys.length === 0) break;
      await source.command(
        "MIGRATE",
        "127.0.0.1",
        toPort,
        "",
        0,
        5000,
        "KEYS",
        ...keys,
      );
    }
    for (const node of cluster.nodes) {
      const raw = await RespClient.connect(node.port);
      try {
        const role = String(await raw.command("ROLE"));
        if (role.startsWith("master")) {
          await raw.command("CLUSTER", "SETSLOT", slot, "NODE", toId);
        }
      } finally {
        await raw.close();
      }
    }
  } finally {
    await source.close();
    await target.close();
  }
}
