/**
 * Waiting for a busy lock without polling: the waiter sleeps in `BLPOP` on
 * the lock's signal list, on a connection of its own, and is woken by a
 * release, by a timer at the moment the holder's expiry passes, at its
 * timeout, or by its abort signal. Timers interrupt the `BLPOP` with
 * `CLIENT UNBLOCK` from the application's connection, which tells a wait
 * that ended in time from one whose wake-up is already on its way back.
 *
 * @module
 */

import type { Connection } from "./clients.ts";
import { MAX_TIMER_DELAY } from "./options.ts";
import { PASS_ON, Script } from "./scripts.ts";

const passOn = new Script(PASS_ON);

/** What one wait is for. */
export interface WaitRequest {
  /** The signal list a release pushes a wake-up to. */
  readonly signalKey: string;
  /** How long the signal list keeps a wake-up, in ms. */
  readonly signalExpire: number;
  /** Remaining life of the holder's key in ms; -1 when it never expires. */
  readonly ttl: number;
  /** `performance.now()` at which the caller gives up; may be `Infinity`. */
  readonly deadline: number;
  /** Aborts the wait. */
  readonly signal: AbortSignal | undefined;
}

/**
 * Why a wait ended: a release left a wake-up, the holder's expiry passed, or
 * the deadline came.
 */
export type WakeReason = "released" | "expired" | "timeout";

const wait = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The waits of one `acquire()` call, on one blocking connection. */
export class Waiter implements AsyncDisposable {
  readonly #main: Connection;
  #blocking: Promise<{ connection: Connection; id: string }> | undefined;

  constructor(main: Connection) {
    this.#main = main;
  }

  async #open(): Promise<{ connection: Connection; id: string }> {
    const connection = await this.#main.duplicate();
    try {
      const id = String(await connection.send("CLIENT", ["ID"]));
      return { connection, id };
    } catch (error) {
      await connection.close();
      throw error;
    }
  }

  /**
   * Sleeps until a wake-up, the holder's expiry, the deadline or an abort.
   * An aborted wait that had taken a wake-up puts it back before rejecting
   * with the signal's reason.
   */
  async wait(request: WaitRequest): Promise<WakeReason> {
    const { signal } = request;
    signal?.throwIfAborted();
    const blocking = await (this.#blocking ??= this.#open());
    signal?.throwIfAborted();

    const now = performance.now();
    const expiresAt = request.ttl >= 0 ? now + request.ttl : Infinity;
    const wakeAt = Math.min(expiresAt, request.deadline);
    let reason: WakeReason | "aborted" | undefined;
    let settled = false;
    let unblocking: Promise<void> | undefined;

    const interrupt = (why: WakeReason | "aborted") => {
      if (reason !== undefined || settled) return;
      reason = why;
      unblocking = this.#unblock(blocking.id, () => settled).catch(
        async (error) => {
          // Without CLIENT UNBLOCK the BLPOP would sleep on: end it by
          // closing its connection.
          await blocking.connection.close();
          throw error;
        },
      );
    };
    const timer = wakeAt === Infinity ? undefined : setTimeout(
      () => interrupt(wakeAt === request.deadline ? "timeout" : "expired"),
      Math.min(Math.max(0, wakeAt - now), MAX_TIMER_DELAY),
    );
    const onAbort = () => interrupt("aborted");
    signal?.addEventListener("abort", onAbort, { once: true });

    try {
      const reply = await blocking.connection.send("BLPOP", [
        request.signalKey,
        "0",
      ]);
      settled = true;
      await unblocking;
      if (reason === "aborted") {
        if (reply !== null) {
          await passOn.run(this.#main, [request.signalKey], [
            String(request.signalExpire),
          ]);
        }
        throw signal!.reason;
      }
      return reply !== null || reason === undefined ? "released" : reason;
    } finally {
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      await unblocking?.catch(() => {});
    }
  }

  /**
   * `CLIENT UNBLOCK` answers 0 both when the `BLPOP` was already served and
   * when it has not reached the server yet; in the second case it is asked
   * again until the `BLPOP` settles.
   */
  async #unblock(id: string, settled: () => boolean): Promise<void> {
    for (let attempt = 0; !settled(); attempt++) {
      if (await this.#main.send("CLIENT", ["UNBLOCK", id]) === 1) return;
      if (!settled()) await wait(Math.min(1 << attempt, 50));
    }
  }

  /** Closes the blocking connection, if one was opened. */
  async [Symbol.asyncDispose](): Promise<void> {
    const blocking = this.#blocking;
    this.#blocking = undefined;
    if (blocking === undefined) return;
    const { connection } = await blocking.catch(() => ({
      connection: undefined,
    }));
    await connection?.close();
  }
}
