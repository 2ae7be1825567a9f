/**
 * Clients and connections with faults a test switches on: a `{ send }`
 * client whose own connections (the waiter's) can answer slowly, and a TCP
 * proxy that can lose a reply by closing the connection (ioredis then
 * re-sends the unanswered command on a new one). Both talk to a real
 * server; nothing here imitates Redis.
 *
 * @module
 */

import { Redis } from "ioredis";
import type { SendClient } from "../mod.ts";

/** Switches of a {@linkcode SlowClient} and of every connection it opens. */
export interface SlowSwitches {
  /** The next script on the waiter's command connection answers this much later (ms). */
  delayNextScript: number;
  /** Called when that script is sent. */
  onDelayed?: () => void;
  /** Called whenever the waiting connection sends a BLPOP. */
  onBlpop?: () => void;
}

/**
 * A `{ send }` client over ioredis. Its duplicates are the waiter's: the
 * one that first sends BLPOP (or PING) is the waiting connection, the other
 * the command connection, whose next script can be made to answer late.
 */
export class SlowClient implements SendClient {
  readonly switches: SlowSwitches;
  readonly #redis: Redis;
  readonly #port: number;
  readonly #own: boolean;
  #role: "app" | "wait" | "command" | undefined;

  constructor(port: number, switches?: SlowSwitches, own = false) {
    this.#port = port;
    this.#own = own;
    this.switches = switches ?? { delayNextScript: 0 };
    this.#redis = new Redis(
      port,
      "127.0.0.1",
      own
        ? { retryStrategy: () => null, autoResendUnfulfilledCommands: false }
        : {},
    );
    this.#redis.on("error", () => {});
    this.#role = own ? undefined : "app";
  }

  async send(command: string, args: string[]): Promise<unknown> {
    this.#role ??= command === "BLPOP" || command === "PING"
      ? "wait"
      : "command";
    if (this.#role === "wait" && command === "BLPOP") this.switches.onBlpop?.();
    const delay = this.#role === "command" && command.startsWith("EVAL")
      ? this.switches.delayNextScript
      : 0;
    if (delay > 0) {
      this.switches.delayNextScript = 0;
      this.switches.onDelayed?.();
    }
    try {
      return await this.#redis.call(command, ...args);
    } finally {
      if (delay > 0) await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }

  duplicate(): SlowClient {
    return new SlowClient(this.#port, this.switches, true);
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      if (this.#redis.status === "end") return resolve();
      this.#redis.once("end", () => resolve());
      this.#redis.disconnect();
    });
  }

  /** Whether this is the application's connection (not one of the waiter's). */
  get own(): boolean {
    return this.#own;
  }
}

/**
 * A TCP proxy in front of a server that can lose the next reply it would
 * pass to a client, by closing that client's connection instead.
 */
export class ReplyDropper implements AsyncDisposable {
  readonly port: number;
  /** Set to lose the next reply (once). */
  dropNextReply = false;
  /**
   * Replies still let through before `dropNextReply` takes effect (for
   * commands sent one after the other, a reply is one read).
   */
  passReplies = 0;
  /**
   * Only the connection accepted `dropOn`-th (from 0) loses a reply: 0 is
   * the application's own, before the waiter opens its connections.
   */
  dropOn: number | undefined;
  #accepted = 0;
  readonly #listener: Deno.TcpListener;
  readonly #conns = new Set<Deno.Conn>();
  readonly #serving: Promise<void>;
  readonly #pipes = new Set<Promise<void>>();

  constructor(target: number) {
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.port = (this.#listener.addr as Deno.NetAddr).port;
    this.#serving = this.#serve(target);
  }

  async #serve(target: number): Promise<void> {
    try {
      for await (const client of this.#listener) {
        const pipe = this.#pipe(client, target, this.#accepted++).finally(() =>
          this.#pipes.delete(pipe)
        );
        this.#pipes.add(pipe);
      }
    } catch {
      // closed
    }
  }

  async #pipe(
    client: Deno.Conn,
    target: number,
    index: number,
  ): Promise<void> {
    let server: Deno.Conn;
    try {
      server = await Deno.connect({ hostname: "127.0.0.1", port: target });
    } catch {
      client.close();
      return;
    }
    this.#conns.add(client).add(server);
    const close = () => {
      for (const conn of [client, server]) {
        if (this.#conns.delete(conn)) {
          try {
            conn.close();
          } catch {
            // already closed
          }
        }
      }
    };
    const copy = async (from: Deno.Conn, to: Deno.Conn, replies: boolean) => {
      const buffer = new Uint8Array(64 * 1024);
      try {
        for (;;) {
          const n = await from.read(buffer);
          if (n === null) break;
          if (
            replies && this.dropNextReply &&
            (this.dropOn === undefined || this.dropOn === index)
          ) {
            if (this.passReplies > 0) {
              this.passReplies--;
            } else {
              this.dropNextReply = false;
              break;
            }
          }
          await to.write(buffer.subarray(0, n));
        }
      } catch {
        // the other side closed
      }
      close();
    };
    await Promise.all([
      copy(client, server, false),
      copy(server, client, true),
    ]);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.#listener.close();
    await this.#serving;
    for (const conn of [...this.#conns]) {
      try {
        conn.close();
      } catch {
        // already closed
      }
    }
    this.#conns.clear();
    await Promise.all(this.#pipes);
  }
}
