/**
 * What this process knows of the lock data on one Redis server: its epoch,
 * and whether it has seen that data lost.
 *
 * The fencing counter `lock-fence` holds `<epoch>:<last token>`. The epoch
 * is the server time (µs) at which the counter was created: a new epoch
 * means the lock data was lost (a restart without persistence, a flush)
 * since the counter was made. A process that has seen the old epoch and
 * meets a new one knows that holders it cannot see may still believe they
 * hold their locks: it grants no lock with expiry `e` until `e` ms after the
 * new epoch began, and tells its own holders of the old epoch that their
 * locks are lost. A process that never saw the old epoch cannot know:
 * fencing tokens, which never go back, are the remedy.
 *
 * @module
 */

import type { Connection } from "./clients.ts";
import { FENCE_KEY, TURN } from "./keys.ts";

/** A holding that learns when the data it was granted in is lost. */
export interface EpochBound {
  /** The epoch the holding was granted in. */
  readonly epoch: string | undefined;
  /** Ends the holding as lost. */
  lose(message: string): void;
}

const now = () => performance.now();

/** This process's view of the lock data of one server. */
export class ServerView {
  #epoch: string | undefined;
  #restartedAt = -Infinity;
  readonly #watched = new Set<EpochBound>();
  /** Names whose racers' turn this process opened, until when. */
  readonly #turns = new Map<string, number>();

  /** The known epoch, or `undefined` before the first acquisition. */
  get epoch(): string | undefined {
    return this.#epoch;
  }

  /** The epoch as scripts take it: `""` when unknown. */
  get known(): string {
    return this.#epoch ?? "";
  }

  /** Records the epoch met on first contact. */
  learn(epoch: string): void {
    if (epoch !== "") this.#epoch ??= epoch;
  }

  /**
   * Records a new epoch, which began `age` ms ago: the data of the old one
   * is lost. Holdings of the old epoch are told.
   */
  restarted(epoch: string, age: number): void {
    if (epoch === this.#epoch) return;
    const known = this.#epoch !== undefined;
    this.#epoch = epoch;
    if (!known) return;
    this.#restartedAt = Math.max(this.#restartedAt, now() - Math.max(0, age));
    for (const holding of [...this.#watched]) {
      if (holding.epoch !== epoch) {
        holding.lose("Redis lost the lock data (restarted without it)");
      }
    }
  }

  /**
   * `performance.now()` before which a lock with this expiry may not be
   * granted: the longest life a lock of the old epoch may still have.
   */
  graceUntil(expire: number | undefined): number {
    return expire === undefined ? -Infinity : this.#restartedAt + expire;
  }

  /**
   * A release of this process opened a racers' turn: the process's own
   * acquires leave the lock to racers until it ends.
   */
  turnOpened(name: string): void {
    const at = now();
    if (this.#turns.size >= 64) {
      for (const [other, until] of this.#turns) {
        if (until <= at) this.#turns.delete(other);
      }
    }
    this.#turns.set(name, at + TURN);
  }

  /** Whether a racers' turn this process opened is still open. */
  inTurn(name: string): boolean {
    const until = this.#turns.get(name);
    if (until === undefined) return false;
    if (now() < until) return true;
    this.#turns.delete(name);
    return false;
  }

  /** Tells `holding` when its epoch is lost, until {@linkcode unwatch}. */
  watch(holding: EpochBound): void {
    this.#watched.add(holding);
  }

  /** Stops telling `holding`. */
  unwatch(holding: EpochBound): void {
    this.#watched.delete(holding);
  }
}

const views = new WeakMap<Connection, Map<string, ServerView>>();

/**
 * The view of the lock data behind an application connection that one
 * fencing counter covers: the whole server, or one slot of a Cluster
 * (whose slots move, and fail over, each on its own).
 */
export function viewOf(
  connection: Connection,
  fence: string = FENCE_KEY,
): ServerView {
  let byFence = views.get(connection);
  if (byFence === undefined) {
    byFence = new Map();
    views.set(connection, byFence);
  }
  let view = byFence.get(fence);
  if (view === undefined) {
    view = new ServerView();
    byFence.set(fence, view);
  }
  return view;
}
