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
