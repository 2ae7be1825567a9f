/**
 * A connection the library opens for itself (the client's `duplicate()`)
 * and owns: it is never the application's, so the library may block it,
 * close it and open it again. After a connection failure it is dropped and
 * opened anew on next use, after a backoff that grows with each failure in
 * a row.
 *
 * Commands on it are never sent twice: adapters open it without the
 * client's own retries where the client allows (ioredis re-sends unanswered
 * commands after a reconnect; here a lost reply stays lost, and the waiter
 * finds out from Redis what happened).
 *
 * A client that cannot open connections (an HTTP client, say) can still
 * carry the commands of a waiter that polls: then the "owned" connection is
 * the application's own, shared, and never closed by the library.
 *
 * @module
 */

import type { Connection, Reply } from "./clients.ts";
import { classify } from "./_failure.ts";

/** The first backoff after a failure, in ms; it doubles up to the next. */
const BACKOFF_MIN = 25;
const BACKOFF_MAX = 1_000;

const now = () => performance.now();

/** Resolves after `ms`; the timer is cleared if `signal` fires first. */
export function sleep(ms: number, signal?: { promise: Promise<void> }) {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const slept = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, Math.max(0, ms));
  });
  return Promise.race(signal ? [slept, signal.promise] : [slept]).finally(() =>
    clearTimeout(timer)
  );
}

/** A connection of the library's own, opened on demand. */
export class OwnedConnection {
  readonly #main: Connection;
  /** Whether commands go on the application's connection itself. */
  readonly #shared: boolean;
  #open: Promise<Connection> | undefined;
  /** Failures in a row; 0 once a command succeeds. */
  #failures = 0;
  #retryAt = 0;
  /** `performance.now()` of the first failure since the last success. */
  #failingSince: number | undefined;
  #lastError: unknown;
  #closed = false;
  /** Commands on their way, for close(). */
  #inFlight = 0;

  /**
   * @param main The application's connection, whose `duplicate()` opens
   * this one.
   * @param shared Send on `main` itself, which cannot open connections:
   * only for commands that never block.
   */
  constructor(main: Connection, shared = false) {
    this.#main = main;
    this.#shared = shared;
  }

  /** Whether a connection is open or opening. */
  get isOpen(): boolean {
    return this.#open !== undefined;
  }

  /**
   * Whether a command sent now would first wait out the backoff after a
   * failure.
   */
  get backingOff(): boolean {
    return this.#open === undefined && now() < this.#retryAt;
  }

  /** Whether no command is on its way. */
  get idle(): boolean {
    return this.#inFlight === 0;
  }

  /**
   * Since when (`performance.now()`) the connection has been failing, and
   * the last failure; `undefined` while it works.
   */
  get failing(): { since: number; error: unknown } | undefined {
    return this.#failingSince === undefined
      ? undefined
      : { since: this.#failingSince, error: this.#lastError };
  }

  /**
   * Sends one command, opening the connection first if needed. A
   * connection failure drops the connection (the next command opens a new
   * one) and rejects with the client's error.
   */
  async send(command: string, args: readonly string[]): Promise<Reply> {
    if (this.#closed) throw new Error("Connection closed by the lock");
    this.#inFlight++;
    try {
      const open = this.#connection();
      let connection: Connection;
      try {
        connection = await open;
      } catch (error) {
        // Whatever stopped the opening, the next command tries anew.
        this.#fail(open, error);
        throw error;
      }
      try {
        const reply = await connection.send(command, args);
        this.#failures = 0;
        this.#failingSince = undefined;
        return reply;
      } catch (error) {
        if (classify(error) === "connection") this.#fail(open, error);
        throw error;
      }
    } finally {
      this.#inFlight--;
    }
  }

  #connection(): Promise<Connection> {
    return this.#open ??= (async () => {
      const wait = this.#retryAt - now();
      if (wait > 0) await sleep(wait);
      if (this.#closed) throw new Error("Connection closed by the lock");
      return this.#shared ? this.#main : await this.#main.duplicate();
    })();
  }

  #fail(open: Promise<Connection>, error: unknown): void {
    this.#failures++;
    this.#failingSince ??= now();
    this.#lastError = error;
    const backoff = Math.min(
      BACKOFF_MAX,
      BACKOFF_MIN * 2 ** Math.min(this.#failures - 1, 10),
    );
    this.#retryAt = now() + backoff * (0.8 + Math.random() * 0.4);
    // A failure of a connection already replaced says nothing of the new one.
    if (this.#open !== open) return;
    this.#open = undefined;
    if (this.#shared) return;
    void open.then((connection) => connection.close()).catch(() => {});
  }

  /**
   * Closes the connection, now. A command on its way fails; one sent later
   * opens a new connection unless `final`.
   */
  async close(final = false): Promise<void> {
    if (final) this.#closed = true;
    const open = this.#open;
    this.#open = undefined;
    if (this.#shared) return;
    await open?.then((connection) => connection.close(), () => {});
  }
}
