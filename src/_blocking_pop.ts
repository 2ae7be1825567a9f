/**
 * One `BLPOP` kept running, on a connection of its own, over the keys its
 * owner wants: the waiting connection of a client. It opens the connection
 * on first use, interrupts the `BLPOP` with `CLIENT UNBLOCK` when new keys
 * are wanted, and closes the connection once it has been idle a while.
 *
 * @module
 */

import type { Connection, Reply } from "./clients.ts";

/** What the owner of a {@linkcode BlockingPop} decides and learns. */
export interface PopOwner {
  /** The keys to cover now; none lets the running `BLPOP` end. */
  wantedKeys(): string[];
  /** A `BLPOP` popped `value` from `key`. */
  popped(key: string, value: string): void;
  /** A `BLPOP` over `keys`, sent at `sentAt`, ended with nothing. */
  empty(keys: ReadonlySet<string>, sentAt: number): void;
  /** After every `BLPOP`, whatever it brought. */
  ended(): void;
  /** The connection failed. */
  failed(error: unknown): void;
}

interface Running {
  readonly keys: ReadonlySet<string>;
  readonly sentAt: number;
}

type Timer = ReturnType<typeof setTimeout>;

const now = () => performance.now();
const pause = (ms: number) =>
  new Promise<void>((resolve) => setTimeout(resolve, ms));

/** The waiting connection of a client and its one `BLPOP`. */
export class BlockingPop {
  readonly #main: Connection;
  readonly #owner: PopOwner;
  /** Seconds a `BLPOP` blocks at most. */
  readonly #timeout: number;
  /** Milliseconds of idleness before the connection closes. */
  readonly #idle: number;
  #blocking: Promise<{ connection: Connection; id: string }> | undefined;
  #running: Running | undefined;
  #popping: Promise<void> = Promise.resolve();
  #unblocking: Promise<void> | undefined;
  #idleTimer: Timer | undefined;
  #idleSince = 0;
  #closed = false;

  /**
   * @param main The application's connection, which `duplicate()`s the
   * waiting one and sends `CLIENT UNBLOCK`.
   * @param owner Decides the keys and hears what is popped.
   * @param timeout Seconds a `BLPOP` blocks at most.
   * @param idle Milliseconds of idleness before the connection closes.
   */
  constructor(
    main: Connection,
    owner: PopOwner,
    timeout: number,
    idle: number,
  ) {
    this.#main = main;
    this.#owner = owner;
    this.#timeout = timeout;
    this.#idle = idle;
  }

  /**
   * Keeps one `BLPOP` running over the wanted keys: starts one, or
   * interrupts the running one when it misses a key. With none wanted, lets
   * the running one end and closes the connection once idle.
   */
  pump(): void {
    if (this.#closed) return;
    const wanted = this.#owner.wantedKeys();
    const running = this.#running;
    if (wanted.length === 0) {
      if (running === undefined) this.#idleSoon();
    } else if (running === undefined) {
      this.#popping = this.#pop(wanted);
    } else if (wanted.some((key) => !running.keys.has(key))) {
      this.#interrupt(running);
    }
  }

  #connection(): Promise<{ connection: Connection; id: string }> {
    return this.#blocking ??= (async () => {
      const connection = await this.#main.duplicate();
      try {
        const id = String(await connection.send("CLIENT", ["ID"]));
        return { connection, id };
      } catch (error) {
        await connection.close();
        throw error;
      }
    })();
  }

  async #pop(keys: string[]): Promise<void> {
    const running: Running = { keys: new Set(keys), sentAt: now() };
    this.#running = running;
    clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
    let reply: Reply;
    try {
      const { connection } = await this.#connection();
      reply = await connection.send("BLPOP", [...keys, String(this.#timeout)]);
    } catch (error) {
      this.#running = undefined;
      if (!this.#closed) {
        await this.#drop();
        this.#owner.failed(error);
      }
      return;
    }
    this.#running = undefined;
    if (reply === null) {
      this.#owner.empty(running.keys, running.sentAt);
    } else {
      const [key, value] = reply as string[];
      this.#owner.popped(key, value);
    }
    this.#owner.ended();
    this.pump();
  }

  /**
   * Interrupts the running `BLPOP` with `CLIENT UNBLOCK`, which answers 0
   * both when the `BLPOP` was served already and when it has not reached
   * the server yet; in the second case it is asked again.
   */
  #interrupt(running: Running): void {
    if (this.#unblocking !== undefined) return;
    this.#unblocking = (async () => {
      const { id } = await this.#connection();
      // Within a few tries the BLPOP has arrived, or it ends at its timeout.
      for (
        let attempt = 0;
        attempt < 8 && this.#running === running;
        attempt++
      ) {
        if (await this.#main.send("CLIENT", ["UNBLOCK", id]) === 1) return;
        if (this.#running === running) await pause(Math.min(1 << attempt, 20));
      }
    })().catch(() => {}).finally(() => {
      this.#unblocking = undefined;
      // Keys wanted meanwhile may need another interruption.
      this.pump();
    });
  }

  /** One timer per idle spell, not per wait: it looks again when it fires. */
  #idleSoon(): void {
    if (this.#blocking === undefined) return;
    this.#idleSince = now();
    this.#idleTimer ??= setTimeout(() => this.#closeIfIdle(), this.#idle);
  }

  #closeIfIdle(): void {
    this.#idleTimer = undefined;
    if (this.#running !== undefined || this.#owner.wantedKeys().length > 0) {
      return;
    }
    const idle = now() - this.#idleSince;
    if (idle >= this.#idle) {
      this.#drop();
    } else {
      this.#idleTimer = setTimeout(
        () => this.#closeIfIdle(),
        this.#idle - idle,
      );
    }
  }

  #drop(): Promise<void> {
    const blocking = this.#blocking;
    this.#blocking = undefined;
    return blocking?.then(({ connection }) => connection.close(), () => {}) ??
      Promise.resolve();
  }

  /** Ends the running `BLPOP` and closes the connection. */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
    const running = this.#running;
    if (running !== undefined) this.#interrupt(running);
    await this.#unblocking;
    await this.#drop();
    await this.#popping;
  }
}
