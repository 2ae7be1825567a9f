/**
 * A test bed: a server of the test's own, a raw connection to it, and
 * ioredis clients that are shut down and closed at the end.
 *
 * @module
 */

import { Redis, type RedisOptions } from "ioredis";
import { shutdown } from "../mod.ts";
import { RespClient } from "./_resp.ts";
import { RedisServer, type RedisServerOptions } from "./_server.ts";

export const delay = (ms: number): Promise<void> =>
  new Promise((resolve) => setTimeout(resolve, ms));

/** What a test gets: its server, a raw connection, and clients. */
export interface Bed extends AsyncDisposable {
  readonly server: RedisServer;
  readonly raw: RespClient;
  /** A new ioredis client, ready; shut down and closed at the end. */
  client(options?: RedisOptions): Promise<Redis>;
  /** A raw command on the bed's own connection. */
  command(command: string, ...args: (string | number)[]): Promise<unknown>;
  /** The raw connection, reopened (after a restart of the server). */
  reconnect(): Promise<void>;
}

/** Starts a bed; `await using` stops it. */
export async function bed(options: RedisServerOptions = {}): Promise<Bed> {
  const server = await RedisServer.start(options);
  let raw = await RespClient.connect(server.port);
  const clients: Redis[] = [];
  return {
    server,
    get raw() {
      return raw;
    },
    command: (command, ...args) => raw.command(command, ...args),
    async reconnect() {
      await raw.close();
      raw = await RespClient.connect(server.port);
    },
    async client(options = {}) {
      const client = new Redis(server.port, server.hostname, options);
      client.on("error", () => {}); // reconnecting after a fault
      await new Promise((resolve) => client.once("ready", resolve));
      clients.push(client);
      return client;
    },
    async [Symbol.asyncDispose]() {
      for (const client of clients) {
        await shutdown(client);
        await close(client);
      }
      await raw.close();
      await server[Symbol.asyncDispose]();
    },
  };
}

/**
 * Closes an ioredis client and waits until it has ended. One that is
 * reconnecting (after a fault) is let reconnect first: ioredis ends a
 * connection cleanly only from a live socket.
 */
export async function close(client: Redis): Promise<void> {
  if (client.status === "end") return;
  if (client.status !== "ready") {
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      new Promise((resolve) => client.once("ready", resolve)),
      new Promise((resolve) => timer = setTimeout(resolve, 5_000)),
    ]);
    clearTimeout(timer);
  }
  await new Promise<void>((resolve) => {
    client.once("end", () => resolve());
    client.disconnect();
  });
}

/** Resolves once `check` holds, polling every 5 ms; fails after `ms`. */
export async function eventually(
  check: () => Promise<boolean> | boolean,
  message: string,
  ms = 5_000,
): Promise<void> {
  const deadline = performance.now() + ms;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`Timed out: ${message}`);
    await delay(5);
  }
}

/** The ids of the server's clients, from `CLIENT LIST`. */
export async function clientIds(raw: RespClient): Promise<string[]> {
  const list = String(await raw.command("CLIENT", "LIST"));
  return [...list.matchAll(/\bid=(\d+)/g)].map((match) => match[1]);
}

/**
 * Kills every connection but the bed's own and those of `spare` (the
 * applications'), `rounds` times, `pause` ms apart: the library's own
 * connections must recover each time.
 */
export async function killOwnConnections(
  env: Pick<Bed, "command" | "raw">,
  spare: readonly Redis[],
  rounds = 3,
  pause = 300,
): Promise<void> {
  const spared = new Set([
    String(await env.command("CLIENT", "ID")),
    ...await Promise.all(
      spare.map(async (client) => String(await client.call("CLIENT", "ID"))),
    ),
  ]);
  for (let round = 0; round < rounds; round++) {
    for (const id of await clientIds(env.raw)) {
      if (!spared.has(id)) await env.command("CLIENT", "KILL", "ID", id);
    }
    await delay(pause);
  }
}

/** Resolves with `performance.now()` when the signal aborts. */
export function abortedAt(signal: AbortSignal): Promise<number> {
  return new Promise((resolve) =>
    signal.addEventListener("abort", () => resolve(performance.now()), {
      once: true,
    })
  );
}
