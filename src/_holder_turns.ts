/**
 * Holders' turns: a process that loops on a lock (acquires it again right
 * after releasing it) keeps it for a short while, instead of waking a
 * sleeping waiter of another process at every release, as Go's
 * `sync.Mutex` lets a running goroutine take a mutex before a woken one.
 * Fairness is kept over turns, not per acquisition.
 *
 * The invariant, kept by RELEASE (see `scripts.ts`) and by `Lock.release`:
 * a release gives its process a turn only when waiters of other processes
 * are queued, the holding it ends lasted less than `HOLDER_TURN` ms, and
 * the process has held the lock for less than `HOLDER_TENURE` ms since it
 * came to it from another process or free (its tenure, which the process
 * measures from when it sent the try that took a free lock, or from when a
 * hand-over reached it: a process stalled between a hand-over and hearing
 * of it may get up to `HOLDER_TENURE` ms of turns more, and a waiter then
 * waits that much longer), with fewer than `HOLDER_TURNS` turns in that
 * tenure (turns of equal length keep the processes' shares equal). During
 * the turn the lock is set to the turn's mark (for at most `TURN_LEASE` ms,
 * or see below): nobody holds it, no other process can take it, and only an
 * acquire of this process takes it, with a fresh token and the tenure the
 * turn started with. So no waiter
 * waits longer than its queue position × (`HOLDER_TENURE` + hold +
 * hand-over).
 *
 * Each turn has a mark of its own (`turn:<hex>:<n>`), so that no command
 * about one turn, or about a holding under its mark, can touch another.
 *
 * Local takes: a release of a lock with an expiry asks RELEASE to draw the
 * next holding's token too; when the lock data's epoch is the one the
 * process knows, RELEASE does, and sets the mark with that expiry rather
 * than `TURN_LEASE`. An acquire of the process by a `Lock` with an id of its
 * own making and the same expiry then takes the turn with no command, at
 * once (within `HOLDER_TURN` of the release), while the process still
 * knows that epoch: it holds the lock under the turn's mark (its release,
 * extension and renewal name the mark), with that token. The mark is a
 * holding of the process from the moment RELEASE ran: a `reset()` then
 * takes it from the process, as from any holder, and the holder learns of
 * it at its next renewal, `extend()` or `release()`. A process that dies,
 * or stalls (its event loop blocked, so that the timer cannot end the
 * turn), within such a turn delays the lock by at most that expiry, as a
 * holder that dies or stalls does.
 *
 * Ownership: this module owns the turns the process was given, one timer
 * that ends those not taken at once, and a connection of its own that
 * carries those ends. A turn ends exactly once: taken by an acquire of this
 * process ({@linkcode HolderTurns.take}), or, when the task that released
 * does not come back at once, ended by the timer, which hands the lock on
 * as a release does (RESET of the mark). That end goes on the library's own
 * connection, not the application's: the application may have sent a
 * blocking command of its own right after its release (`BLPOP` of a job
 * queue), and an end behind it would keep the other processes' waiters out
 * until it returns. No order is lost: the turn was given by the reply of
 * the RELEASE that set the mark, and no command about the mark follows an
 * end. If the own connection fails, the end is sent again on the
 * application's (RESET of a mark is a no-op once the mark is gone); if that
 * fails too, the mark expires on its own and the waiters' next look finds
 * the lock free. An end after a command whose reply did not come
 * ({@linkcode HolderTurns.mayHaveLeft}) goes on the application's
 * connection, behind that command, which may still run. Ends on their way
 * are tracked until they settle, so that `shutdown()` waits for them; the
 * own connection closes after `IDLE` ms without an end, and at
 * `shutdown()`.
 *
 * A process asks for a turn only when it loops: when the holding began
 * right after a release of the same name by this process. A process that
 * takes a lock once never delays the next waiter.
 *
 * @module
 */

import type { Connection } from "./clients.ts";
import { OwnedConnection } from "./_owned_connection.ts";
import { unrefTimer } from "./_runtime.ts";
import type { Sender } from "./scripts.ts";

/** Milliseconds within which an acquire after a release counts as looping. */
const LOOPING = 5;

/** Milliseconds the own connection stays open after the last end. */
const IDLE = 1_000;

/** Names remembered at most before old releases are forgotten. */
const REMEMBERED = 64;

const now = () => performance.now();

/** The next holding's token, drawn by the RELEASE that gave the turn. */
export interface LocalTake {
  readonly token: number;
  /** The epoch of the lock data the token was drawn in. */
  readonly epoch: string;
  /** The mark's expiry, in ms. */
  readonly px: number;
  /**
   * `performance.now()` when that RELEASE was sent: the mark's expiry
   * counts from there at the earliest.
   */
  readonly since: number;
}

/** A turn this process was given, until taken or ended. */
interface Turn {
  /** The lock's value during the turn. */
  readonly mark: string;
  /** The tenure's start (`performance.now()`). */
  readonly tenure: number;
  /** Its place among the turns given: the sweep that ends it is after it. */
  readonly given: number;
  /**
   * Hands the lock on (RESET of the mark), on `via`, else on the
   * application's connection.
   */
  readonly end: TurnEnd;
  /** Set when an acquire may take the turn with no command. */
  readonly local: LocalTake | undefined;
}

/** Hands the lock on at the end of a turn: on `via`, else the application's connection. */
export type TurnEnd = (via?: Sender) => Promise<unknown>;

/** The holders' turns of one application connection. */
export class HolderTurns {
  /** The start of the lock's value during this process's turns. */
  readonly prefix: string = `turn:${
    Array.from(
      crypto.getRandomValues(new Uint8Array(12)),
      (byte) => byte.toString(16).padStart(2, "0"),
    ).join("")
  }:`;
  #marks = 0;
  /** When each name was last released by this process. */
  readonly #released = new Map<string, number>();
  readonly #turns = new Map<string, Turn>();
  /** The turns given in the latest tenure of each name. */
  readonly #counts = new Map<string, { tenure: number; turns: number }>();
  /** Ends sent and not yet answered. */
  readonly #ending = new Set<Promise<void>>();
  /** Turns given so far. */
  #given = 0;
  /**
   * One timer for all turns (not one per turn: a loop would set and clear
   * one per acquisition): it ends the turns given up to `#sweepThrough`,
   * all given before it was set, and is set again for the later ones.
   */
  #sweeper: ReturnType<typeof setTimeout> | undefined;
  #sweepThrough = 0;
  /** The connection the timer's ends go on; none without `main`. */
  readonly #own: OwnedConnection | undefined;
  /** Closes `#own` once no end has been sent for `IDLE` ms. */
  #idler: ReturnType<typeof setTimeout> | undefined;

  /**
   * @param main The application's connection, whose `duplicate()` opens
   * the connection that ends turns (without it, or when it cannot open
   * connections, ends go on the application's connection).
   */
  constructor(main?: Connection) {
    this.#own = main && new OwnedConnection(main, !main.canDuplicate);
  }

  /** A mark for a turn to ask for: no other turn of the process has it. */
  nextMark(): string {
    return this.prefix + (this.#marks++).toString(36);
  }

  /** A holding of `name` ended in a release of this process. */
  released(name: string): void {
    const at = now();
    if (this.#released.size >= REMEMBERED) {
      for (const [other, when] of this.#released) {
        if (at - when >= LOOPING) this.#released.delete(other);
      }
    }
    this.#released.set(name, at);
  }

  /** Whether a holding of `name` beginning now comes right after a release. */
  looping(name: string): boolean {
    const when = this.#released.get(name);
    return when !== undefined && now() - when < LOOPING;
  }

  /**
   * RELEASE gave this process a turn on `name`: unless an acquire of the
   * process takes it first, `end` hands the lock on.
   */
  given(
    name: string,
    mark: string,
    tenure: number,
    end: TurnEnd,
    local?: LocalTake,
  ): void {
    this.take(name);
    const count = this.#counts.get(name);
    if (count?.tenure === tenure) {
      count.turns++;
    } else {
      if (this.#counts.size >= REMEMBERED) this.#counts.clear();
      this.#counts.set(name, { tenure, turns: 1 });
    }
    const given = ++this.#given;
    this.#turns.set(name, { mark, tenure, given, end, local });
    this.#sweepSoon();
  }

  /**
   * Ends, once the tasks that released have had their chance to come back
   * (a timer of 0 ms set after the turn was given), every turn not taken.
   */
  #sweepSoon(): void {
    if (this.#sweeper !== undefined || this.#turns.size === 0) return;
    this.#sweepThrough = this.#given;
    this.#sweeper = setTimeout(() => {
      this.#sweeper = undefined;
      for (const [name, turn] of this.#turns) {
        if (turn.given > this.#sweepThrough) continue;
        this.#turns.delete(name);
        this.#endOnOwn(turn.end);
      }
      this.#sweepSoon();
    }, 0);
  }

  /** The turns given so far to the tenure `tenure` of `name`. */
  turnsIn(name: string, tenure: number): number {
    const count = this.#counts.get(name);
    return count?.tenure === tenure ? count.turns : 0;
  }

  /** Whether this process has a turn on `name`, not yet taken or ended. */
  has(name: string): boolean {
    return this.#turns.has(name);
  }

  /**
   * Takes this process's turn on `name` with no command, if it has one with
   * the next token drawn and `usable` accepts it: the holding is under the
   * turn's mark, with its tenure.
   */
  takeLocally(
    name: string,
    usable: (local: LocalTake) => boolean,
  ): { mark: string; tenure: number; local: LocalTake } | undefined {
    const local = this.#turns.get(name)?.local;
    if (local === undefined || !usable(local)) return undefined;
    return { ...this.take(name)!, local };
  }

  /**
   * Takes this process's turn on `name`, if it has one: the acquire sends
   * its mark, and the holding keeps the turn's tenure.
   */
  take(name: string): { mark: string; tenure: number } | undefined {
    const turn = this.#turns.get(name);
    if (turn === undefined) return undefined;
    this.#turns.delete(name);
    return { mark: turn.mark, tenure: turn.tenure };
  }

  /**
   * A command may have left the mark and cannot be sure (its reply was
   * lost, or said the lock was gone): `end` hands the lock on now.
   */
  mayHaveLeft(end: TurnEnd): void {
    this.#end(end);
  }

  /**
   * Sends `end` on the own connection (on the application's if that fails,
   * or while it waits out a failure), which closes once no end has been
   * sent for `IDLE` ms.
   */
  #endOnOwn(end: TurnEnd): void {
    const own = this.#own;
    if (own === undefined || own.backingOff) {
      this.#end(end);
      return;
    }
    clearTimeout(this.#idler);
    this.#idler = undefined;
    void this.#end(() => end(own).catch(() => end())).then(() => {
      // An end still on its way sets the timer again when it settles.
      clearTimeout(this.#idler);
      this.#idler = setTimeout(() => {
        this.#idler = undefined;
        if (own.idle) void own.close();
      }, IDLE);
      unrefTimer(this.#idler);
    });
  }

  /**
   * Sends `end`, tracked until it settles; a failure is left to the mark's
   * expiry.
   */
  #end(end: TurnEnd): Promise<void> {
    // With no connection given, `end` sends on the application's.
    const ending: Promise<void> = Promise.resolve().then(() => end()).then(
      () => {},
      () => {
        // The mark expires by itself (TURN_LEASE, or the lock's expiry).
      },
    ).finally(() => this.#ending.delete(ending));
    this.#ending.add(ending);
    return ending;
  }

  /**
   * Ends every turn not yet taken or ended (a shutdown), and resolves once
   * every end on its way has settled.
   */
  async endAll(): Promise<void> {
    const turns = [...this.#turns.values()];
    this.#turns.clear();
    clearTimeout(this.#sweeper);
    this.#sweeper = undefined;
    for (const { end } of turns) this.#end(end);
    await Promise.all([...this.#ending]);
    clearTimeout(this.#idler);
    this.#idler = undefined;
    await this.#own?.close();
  }
}

const turnsByConnection = new WeakMap<Connection, HolderTurns>();

/** The holders' turns of an application connection. */
export function holderTurnsOf(connection: Connection): HolderTurns {
  let turns = turnsByConnection.get(connection);
  if (turns === undefined) {
    turns = new HolderTurns(connection);
    turnsByConnection.set(connection, turns);
  }
  return turns;
}
