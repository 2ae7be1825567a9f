/**
 * The waits of one lock name in one process, and the one loop (the driver)
 * that sends every Redis command about them.
 *
 * State: a local first-come first-served list of waits, and the process's
 * presence in Redis for the name, at most one of:
 *
 * | presence  | in Redis                                            |
 * | --------- | --------------------------------------------------- |
 * | `none`    | nothing of this process                             |
 * | `queued`  | one entry, for `wait`, under `ticket`               |
 * | `handed`  | the lock, held by `wait.id`, with a known token     |
 * | `owned`   | the lock, held by `wait.id`, token not known        |
 * | `holds`   | nothing queued: a wait of the process took the lock |
 * | `lent`    | what a release in flight of the process leaves      |
 * | `unsure`  | any of `candidates`' entries or holdings, or none   |
 *
 * Invariants, kept by construction:
 * - Only the driver sends commands for the name, one at a time, and only
 *   the driver changes the presence: before a command it records what the
 *   command may leave (`unsure`), after the reply what it did leave.
 * - A lost reply (connection failure) leaves `unsure`; the next command is
 *   INSPECT, which reads what is really in Redis.
 * - A wait that no longer wants the lock (timeout, abort, shutdown) is
 *   taken out of Redis before anything else: its entry cancelled (its place
 *   handed to the next local wait), a lock handed to it passed on. It
 *   settles once that is done, or after `SETTLE_GRACE`.
 * - The driver ends only with the presence `none` and every wait settled:
 *   nothing of a settled wait stays in Redis (unless Redis stayed
 *   unreachable through a shutdown).
 * - One command may be sent by another than the driver: the release of a
 *   holding the process took for one of its waits (`holds`) queues the next
 *   local wait in the same script, and is handed the lock in the reply when
 *   nobody is queued before it (see `lend`): a process whose tasks take
 *   turns on a name runs one script per acquisition. Until that release
 *   is settled (`lent`), the driver sends nothing for the name; a release
 *   that does not come within `HOLDER_TURN` ms leaves the driver to queue the
 *   next wait itself.
 *
 * @module
 */

import { classify } from "./_failure.ts";
import type { Acquisition, Wait } from "./_wait.ts";
import type { ServerView } from "./_server_view.ts";
import { AlreadyAcquiredError, LockError } from "./errors.ts";
import { HAND_OVER_EXPIRE, HOLDER_TURN, type LockKeys, TURN } from "./keys.ts";
import { MAX_TIMER_DELAY } from "./options.ts";
import type { Reply } from "./clients.ts";
import {
  ACQUIRE,
  CANCEL,
  CLAIM,
  INSPECT,
  Script,
  type Sender,
} from "./scripts.ts";

const acquireScript = new Script(ACQUIRE, (keys) => keys.all);
const inspectScript = new Script(INSPECT, (keys) => keys.all);
const cancelScript = new Script(CANCEL, (keys) => keys.all);
const claimScript = new Script(CLAIM, (keys) => keys.forClaim);

/** What the driver of a name needs from the process's waiter. */
export interface WaiterContext {
  /** The waiter's own connection for commands. */
  readonly control: Sender;
  /** The process's random id, in its queue entries. */
  readonly process: string;
  /** What the process knows of the server's lock data. */
  readonly view: ServerView;
  /**
   * Whether the waiter has stopped cleaning up (a shutdown that Redis did
   * not answer in time): the driver ends at once.
   */
  readonly abandoned: boolean;
  /** A new ticket, unique in the process. */
  ticket(): string;
  /** Routes hand-overs for `ticket` to `waits`. */
  register(ticket: string, waits: NameWaits): void;
  /** Stops routing hand-overs for `ticket`. */
  retire(ticket: string): void;
  /** The `BLPOP` should cover what the waits now want. */
  pump(): void;
  /** Puts a wake-up taken from a signal list back (when the lock is free). */
  putBack(keys: LockKeys, signalExpire: number, value: string): void;
  /** The name has nothing left, in the process or in Redis. */
  forget(waits: NameWaits): void;
}

/** A local wait and the queue entry it would have. */
interface Candidate {
  readonly wait: Wait;
  readonly entry?: string;
}

type Presence =
  | { readonly kind: "none" }
  | {
    readonly kind: "queued";
    readonly ticket: string;
    readonly entry: string;
    readonly wait: Wait;
    /** Before this (`performance.now()`) no hand-over to the entry happened. */
    readonly since: number;
  }
  | {
    readonly kind: "handed";
    readonly wait: Wait;
    readonly acquisition: Acquisition;
  }
  | { readonly kind: "owned"; readonly wait: Wait }
  | {
    readonly kind: "holds";
    /** After this (`performance.now()`) the driver queues the next wait. */
    readonly until: number;
  }
  | {
    readonly kind: "lent";
    readonly ticket: string;
    readonly entry: string;
    readonly wait: Wait;
  }
  | {
    readonly kind: "unsure";
    readonly ticket?: string;
    readonly candidates: readonly Candidate[];
  };

const NONE: Presence = { kind: "none" };

/**
 * A release that queues the next local wait of the name (see
 * `NameWaits.lend`).
 */
export interface Lent {
  /** The wait's queue entry, RELEASE's next entry. */
  readonly entry: string;
  /**
   * What the release did: its reply, `undefined` when it failed (the reply
   * may be lost); `sentAt` when it was sent (`performance.now()`).
   */
  settle(reply: Reply | undefined, sentAt: number): void;
}

/** Backoff of the driver after a failed command, in ms. */
const RETRY_MIN = 50;
const RETRY_MAX = 1_000;

type Timer = ReturnType<typeof setTimeout>;

const now = () => performance.now();

function alreadyHeld(wait: Wait): AlreadyAcquiredError {
  const { name, id } = wait.request;
  return new AlreadyAcquiredError(
    `Lock '${name}' is already held with id '${id}'`,
  );
}

/** The waits of one lock name in this process. */
export class NameWaits {
  readonly name: string;
  readonly keys: LockKeys;
  /** Waits not yet settled, first come first. */
  readonly waits: Wait[] = [];
  #presence: Presence = NONE;
  readonly #context: WaiterContext;
  /**
   * Hand-overs received, by ticket, not yet applied, with the time before
   * which each certainly had not happened (`performance.now()`).
   */
  readonly #mail = new Map<
    string,
    { token: number; notBefore: number; own: boolean }
  >();
  #checkDue = false;
  /** The wake-up taken from the signal list for this name ("" if none). */
  #wakeUp = "";
  /** While a racers' turn is open, the signal list is not listened to. */
  #quietUntil = 0;
  /** Failures in a row; no command before `#retryAt`. */
  #failures = 0;
  #permanentFailures = 0;
  #retryAt = 0;
  #expiryTimer: Timer | undefined;
  #wakeTimer: Timer | undefined;
  /** When `#wakeTimer` pokes the driver. */
  #wakeTimerAt = 0;
  #event: (() => void) | undefined;
  #driving: Promise<void> | undefined;
  /** The signal expiry of the latest wait, for the scripts that signal. */
  signalExpire = 1000;

  constructor(name: string, keys: LockKeys, context: WaiterContext) {
    this.name = name;
    this.keys = keys;
    this.#context = context;
  }

  /** What the process has in Redis for the name. */
  get presence(): Presence["kind"] {
    return this.#presence.kind;
  }

  /** Whether the `BLPOP` should cover the name's signal list. */
  get listens(): boolean {
    const kind = this.#presence.kind;
    return kind === "queued" && now() >= this.#quietUntil;
  }

  /** Whether the driver has ended. */
  get ended(): boolean {
    return this.#driving === undefined;
  }

  /** Resolves once the driver has ended. */
  get drained(): Promise<void> {
    return this.#driving ?? Promise.resolve();
  }

  /** Adds a wait at the end of the local queue. */
  join(wait: Wait): void {
    this.waits.push(wait);
    this.signalExpire = wait.request.signalExpire;
    this.poke();
  }

  /** Something changed: the driver looks again. */
  poke(): void {
    const event = this.#event;
    this.#event = undefined;
    event?.();
    this.#driving ??= this.#drive().finally(() => {
      this.#driving = undefined;
      clearTimeout(this.#expiryTimer);
      clearTimeout(this.#wakeTimer);
      this.#expiryTimer = this.#wakeTimer = undefined;
      if (this.waits.length > 0) this.poke();
      else this.#context.forget(this);
    });
  }

  /** Look at the lock again (a tick, the holder's expiry). */
  check(): void {
    if (this.#presence.kind !== "queued") return;
    this.#checkDue = true;
    this.poke();
  }

  /**
   * A wake-up was taken from the name's signal list: look at the lock, and
   * put the wake-up back if it is not for this process.
   */
  signalled(value: string): void {
    this.#wakeUp = value;
    this.check();
  }

  /**
   * A hand-over arrived for `ticket`; it happened after `notBefore`
   * (`performance.now()`: when the last `BLPOP` that found the wake list
   * empty was sent, or when the release that handed it over was sent).
   * `own`: the hand-over set the waiter's own expiry (a release of this
   * process), not the short one of a hand-over between processes.
   */
  mail(ticket: string, token: number, notBefore: number, own = false): void {
    this.#mail.set(ticket, { token, notBefore, own });
    this.poke();
  }

  /**
   * A release of the lock by this process is about to be sent: when a wait
   * of the process took the lock (`holds`) and another wants it, the
   * release queues that one (its entry is returned) and hands it the lock
   * in the reply if nobody is queued before it. Until `settle`, the driver
   * sends nothing for the name.
   */
  lend(): Lent | undefined {
    if (this.#presence.kind !== "holds" || this.#context.abandoned) {
      return undefined;
    }
    const wait = this.waits.find((other) => other.wants);
    if (wait === undefined) return undefined;
    const ticket = this.#context.ticket();
    const entry = this.#entry(ticket, wait);
    this.#context.register(ticket, this);
    const lent = { kind: "lent", ticket, entry, wait } as const;
    this.#presence = lent;
    return {
      entry,
      settle: (reply, sentAt) => this.#settle(lent, reply, sentAt),
    };
  }

  /**
   * What a release that queued `lent`'s entry did: handed it the lock, let
   * the lock go to another (or free for racers) with the entry queued, or,
   * when it did not hold the lock or its reply was lost, what Redis says.
   */
  #settle(
    lent: Extract<Presence, { kind: "lent" }>,
    reply: Reply | undefined,
    sentAt: number,
  ): void {
    // Dropped meanwhile (a shutdown nobody answered).
    if (this.#presence !== lent) return;
    const { ticket, entry, wait } = lent;
    const [status, handedTo, token] = Array.isArray(reply) ? reply : [reply];
    if (status === 3 && String(handedTo) === ticket) {
      this.#retire(ticket);
      this.#presence = {
        kind: "handed",
        wait,
        acquisition: {
          token: Number(token),
          since: sentAt,
          initial: wait.request.expire,
        },
      };
    } else if (status === 0 || status === 2 || status === 3) {
      this.#presence = { kind: "queued", ticket, entry, wait, since: sentAt };
      // Handed to another: if it died, its hold ends by then. Free for
      // racers: the signal list is theirs till the turn ends.
      if (status === 2) this.#quietUntil = now() + TURN;
      this.#armExpiry(status === 2 ? TURN : HAND_OVER_EXPIRE);
      this.#context.pump();
    } else {
      // Not held by the releaser (nothing was queued), or run again after a
      // lost reply (its first run may have): Redis says.
      this.#presence = {
        kind: "unsure",
        ticket,
        candidates: [{ wait, entry }],
      };
    }
    this.poke();
  }

  /** Fails every wait that still wants the lock. */
  failAll(error: unknown): void {
    for (const wait of this.waits) wait.fail(error);
    this.poke();
  }

  async #drive(): Promise<void> {
    for (;;) {
      const step = this.#decide();
      if (step === "done") return;
      if (step !== undefined) {
        await this.#run(step);
        continue;
      }
      await new Promise<void>((resolve) => this.#event = resolve);
    }
  }

  /**
   * Settles the waits that gave up and have nothing in Redis, and forgets
   * the settled ones.
   */
  #settleLoose(): void {
    let pinned: Set<Wait> | undefined;
    let settled = false;
    for (const wait of this.waits) {
      if (wait.gaveUp !== undefined) {
        pinned ??= this.#pinned();
        if (!pinned.has(wait)) wait.settleGaveUp();
      }
      settled ||= wait.settled;
    }
    if (!settled) return;
    for (let i = this.waits.length - 1; i >= 0; i--) {
      if (this.waits[i].settled) this.waits.splice(i, 1);
    }
  }

  /** The waits the presence in Redis stands for. */
  #pinned(): Set<Wait> {
    const presence = this.#presence;
    switch (presence.kind) {
      case "none":
        return new Set();
      case "unsure":
        return new Set(presence.candidates.map(({ wait }) => wait));
      case "holds":
        return new Set();
      default:
        return new Set([presence.wait]);
    }
  }

  /** The next command, `undefined` to wait for an event, or `"done"`. */
  #decide(): (() => Promise<void>) | "done" | undefined {
    if (this.#context.abandoned) {
      for (const wait of this.waits) wait.settleGaveUp();
      this.waits.length = 0;
      this.#drop();
      return "done";
    }
    this.#applyMail();
    this.#settleLoose();
    const presence = this.#presence;
    const at = now();
    if (at < this.#retryAt) return this.#wakeAt(this.#retryAt);
    // A wake-up taken from the signal list is used by the next look at the
    // lock; on any other way it goes back, for the racers it may have been
    // meant for.
    const looks = this.#checkDue && presence.kind === "queued" &&
      presence.wait.wants;
    if (!looks) this.#giveBackWakeUp();
    switch (presence.kind) {
      case "handed": {
        const { wait, acquisition } = presence;
        if (!wait.wants) return () => this.#passOn(wait);
        const { since, initial } = acquisition;
        // Handed over long ago (a busy process, a slow reply): the lock may
        // have little life left, so it is claimed anew before it counts.
        if (initial !== undefined && at - since > initial / 3) {
          return () => this.#claim(wait);
        }
        // The release of this holding queues the next wait (see `lend`).
        this.#presence = { kind: "holds", until: at + HOLDER_TURN };
        wait.resolve(acquisition);
        return this.#decide();
      }
      case "holds":
        if (at < presence.until && this.waits.some((wait) => wait.wants)) {
          return this.#wakeAt(presence.until);
        }
        this.#presence = NONE;
        return this.#decide();
      case "lent":
        return undefined;
      case "owned": {
        const { wait } = presence;
        return wait.wants ? () => this.#claim(wait) : () => this.#passOn(wait);
      }
      case "unsure":
        return () => this.#inspect();
      case "queued":
        if (!presence.wait.wants) return () => this.#cancel(presence);
        return this.#checkDue ? () => this.#inspect() : undefined;
      case "none": {
        const head = this.waits.find((wait) => wait.wants);
        if (head === undefined) {
          return this.waits.length === 0 ? "done" : undefined;
        }
        const grace = this.#context.view.graceUntil(head.request.expire);
        if (at < grace) return this.#wakeAt(grace);
        return () => this.#try(head);
      }
    }
  }

  /**
   * Pokes the driver at `at` (`performance.now()`) at the latest; nothing
   * to do till then. A timer already due by then is kept: its poke makes
   * the driver decide again, which sets the next. (A loop on the lock
   * moves `holds`' end at every acquisition: one timer per
   * `HOLDER_TURN`, not one per acquisition.)
   */
  #wakeAt(at: number): undefined {
    if (this.#wakeTimer !== undefined && this.#wakeTimerAt <= at) {
      return undefined;
    }
    clearTimeout(this.#wakeTimer);
    this.#wakeTimerAt = at;
    this.#wakeTimer = setTimeout(
      () => {
        this.#wakeTimer = undefined;
        if (now() < at) this.#wakeAt(at);
        else this.poke();
      },
      Math.min(Math.max(0, Math.ceil(at - now())), MAX_TIMER_DELAY),
    );
    return undefined;
  }

  /** A hand-over to the queued entry turns it into a holding. */
  #applyMail(): void {
    const presence = this.#presence;
    if (presence.kind !== "queued") return;
    const mail = this.#mail.get(presence.ticket);
    if (mail === undefined) return;
    this.#retire(presence.ticket);
    const { wait } = presence;
    this.#presence = {
      kind: "handed",
      wait,
      acquisition: {
        token: mail.token,
        since: Math.max(presence.since, mail.notBefore),
        initial: mail.own ? wait.request.expire : wait.handOverExpire,
      },
    };
  }

  /** Gives a wake-up this driver took and will not use back to the list. */
  #giveBackWakeUp(): void {
    if (this.#wakeUp === "") return;
    this.#context.putBack(this.keys, this.signalExpire, this.#wakeUp);
    this.#wakeUp = "";
  }

  #retire(ticket: string | undefined): void {
    if (ticket === undefined) return;
    this.#mail.delete(ticket);
    this.#context.retire(ticket);
  }

  /**
   * Gives up on the presence without a command (a shutdown nobody
   * answered, or failures that would only repeat): its ticket is retired,
   * so that the waiter routes nothing more to it and its `BLPOP` can end.
   */
  #drop(): void {
    const presence = this.#presence;
    if (
      presence.kind === "queued" || presence.kind === "unsure" ||
      presence.kind === "lent"
    ) {
      this.#retire(presence.ticket);
    }
    this.#presence = NONE;
  }

  /** Runs one command; a failure leaves the presence `unsure`. */
  async #run(step: () => Promise<void>): Promise<void> {
    try {
      await step();
      this.#failures = 0;
      this.#permanentFailures = 0;
    } catch (error) {
      this.#failures++;
      if (classify(error) === "permanent") {
        this.#permanentFailures++;
        const failure = error instanceof TypeError ? error : new LockError(
          `Cannot wait for lock '${this.name}': Redis failed`,
          { cause: error },
        );
        for (const wait of this.waits) wait.fail(failure);
        // One more look cleans up after the failure; a second failure in a
        // row gives up: retrying would fail the same way.
        if (this.#permanentFailures > 1) this.#drop();
      }
      const backoff = Math.min(
        RETRY_MAX,
        RETRY_MIN * 2 ** Math.min(this.#failures - 1, 10),
      );
      this.#retryAt = now() + backoff * (0.8 + Math.random() * 0.4);
    }
  }

  #entry(ticket: string, wait: Wait): string {
    const { id, expire } = wait.request;
    return `${this.#context.process}|${ticket}|${expire ?? ""}|${id}`;
  }

  /** Tries the lock for `head`, queueing in the same script when busy. */
  async #try(head: Wait): Promise<void> {
    this.#checkDue = false;
    const { id, expire } = head.request;
    const context = this.#context;
    const ticket = context.ticket();
    const entry = this.#entry(ticket, head);
    context.register(ticket, this);
    this.#presence = {
      kind: "unsure",
      ticket,
      candidates: [{ wait: head, entry }],
    };
    const sentAt = now();
    const reply = await acquireScript.call(context.control, this.keys, [
      id,
      expire === undefined ? "" : String(expire),
      `${context.process}|${ticket}`,
      context.view.known,
    ]);
    if (typeof reply === "number") {
      this.#retire(ticket);
      this.#took(head, reply, sentAt);
      return;
    }
    const [status, value, epoch] = reply as [number, number, string];
    switch (status) {
      case 1:
        context.view.learn(String(epoch));
        this.#retire(ticket);
        this.#took(head, value, sentAt);
        return;
      case 2:
        this.#retire(ticket);
        this.#presence = NONE;
        head.fail(alreadyHeld(head));
        return;
      case 3:
        // The lock data was lost since this process last saw it: holders it
        // cannot see may think they still hold. Wait out their expiry.
        this.#retire(ticket);
        this.#presence = NONE;
        context.view.restarted(String(value), Number(epoch));
        return;
    }
    if (epoch !== undefined) context.view.learn(String(epoch));
    this.#presence = {
      kind: "queued",
      ticket,
      entry,
      wait: head,
      since: sentAt,
    };
    this.#armExpiry(value);
    context.pump();
  }

  /** The lock was set for `wait` by its own try. */
  #took(wait: Wait, token: number, since: number): void {
    this.#presence = {
      kind: "handed",
      wait,
      acquisition: { token, since, initial: wait.request.expire },
    };
  }

  /**
   * Reads what Redis holds of the presence: its entry (or the candidates'),
   * or a lock handed to it. Lets a free lock go on the way.
   */
  async #inspect(): Promise<void> {
    this.#checkDue = false;
    const presence = this.#presence;
    let ticket: string | undefined;
    let candidates: readonly Candidate[];
    if (presence.kind === "queued") {
      ticket = presence.ticket;
      candidates = [{ wait: presence.wait, entry: presence.entry }];
    } else if (presence.kind === "unsure") {
      ticket = presence.ticket;
      candidates = presence.candidates;
    } else {
      return;
    }
    const entries = candidates.map(({ entry }) => entry ?? "");
    const took = this.#wakeUp;
    this.#wakeUp = "";
    const sentAt = now();
    const [state, pttl, queued, owner] = await inspectScript.handOver(
      this.#context.control,
      this.keys,
      this.signalExpire,
      [this.#context.process, entries[0] ?? "", entries[1] ?? "", took],
    ) as [number, number, number, string | null];
    if (queued > 0 && ticket !== undefined) {
      const { wait, entry } = candidates[queued - 1];
      this.#presence = {
        kind: "queued",
        ticket,
        entry: entry!,
        wait,
        since: sentAt,
      };
      // In a racers' turn the signal list is theirs until it ends. Handed
      // to another just now: if it died, its hold ends by then.
      if (state === 3) this.#quietUntil = now() + pttl;
      this.#armExpiry(state === 1 ? HAND_OVER_EXPIRE : pttl);
      this.#context.pump();
      return;
    }
    const holder = candidates.find(({ wait }) => wait.request.id === owner);
    if (holder === undefined) {
      // Nothing of ours is left: dropped as dead, expired, or never made.
      this.#retire(ticket);
      this.#presence = NONE;
      return;
    }
    const mail = ticket === undefined ? undefined : this.#mail.get(ticket);
    this.#retire(ticket);
    const { wait } = holder;
    this.#presence = mail === undefined ? { kind: "owned", wait } : {
      kind: "handed",
      wait,
      acquisition: {
        token: mail.token,
        since: mail.notBefore,
        initial: mail.own ? wait.request.expire : wait.handOverExpire,
      },
    };
  }

  /**
   * Takes a wait that gave up out of the queue, leaving its place (the same
   * ticket) to the next local wait; a lock already handed to it goes to
   * that wait, or is let go.
   */
  async #cancel(
    presence: Extract<Presence, { kind: "queued" }>,
  ): Promise<void> {
    const { ticket, entry, wait } = presence;
    const next = this.waits.find((other) => other !== wait && other.wants);
    const nextEntry = next === undefined ? "" : this.#entry(ticket, next);
    this.#presence = {
      kind: "unsure",
      ticket,
      candidates: next === undefined
        ? [{ wait, entry }]
        : [{ wait, entry }, { wait: next, entry: nextEntry }],
    };
    const sentAt = now();
    const [status, token] = await cancelScript.handOver(
      this.#context.control,
      this.keys,
      this.signalExpire,
      [entry, nextEntry, wait.request.id],
    ) as [number, number];
    if (status === 0 && next !== undefined) {
      this.#presence = {
        kind: "queued",
        ticket,
        entry: nextEntry,
        wait: next,
        since: sentAt,
      };
      return;
    }
    this.#retire(ticket);
    this.#passedTo(status === 3 ? next : undefined, token, sentAt);
  }

  /**
   * After a CANCEL that may have passed the lock on: held by `next` (with
   * `token`, from `since`), or nothing of the process left.
   */
  #passedTo(next: Wait | undefined, token: number, since: number): void {
    this.#presence = next === undefined ? NONE : {
      kind: "handed",
      wait: next,
      acquisition: { token, since, initial: next.handOverExpire },
    };
  }

  /**
   * A lock held for a wait that gave up goes to the next local wait, or is
   * let go.
   */
  async #passOn(wait: Wait): Promise<void> {
    const next = this.waits.find((other) => other !== wait && other.wants);
    const nextEntry = next === undefined
      ? ""
      : this.#entry(this.#context.ticket(), next);
    this.#presence = {
      kind: "unsure",
      candidates: next === undefined ? [{ wait }] : [{ wait }, { wait: next }],
    };
    const sentAt = now();
    const [status, token] = await cancelScript.handOver(
      this.#context.control,
      this.keys,
      this.signalExpire,
      ["", nextEntry, wait.request.id],
    ) as [number, number];
    this.#passedTo(status === 3 ? next : undefined, token, sentAt);
  }

  /** Takes a lock found handed to `wait` without its wake-up. */
  async #claim(wait: Wait): Promise<void> {
    const { id, expire } = wait.request;
    this.#presence = { kind: "unsure", candidates: [{ wait }] };
    const sentAt = now();
    const [status, token] = await claimScript.call(
      this.#context.control,
      this.keys,
      [id, expire === undefined ? "" : String(expire)],
    ) as [number, number];
    if (status === 0) this.#took(wait, token, sentAt);
    else this.#presence = NONE;
  }

  /** Looks again when the holder's expiry passes. */
  #armExpiry(pttl: number): void {
    clearTimeout(this.#expiryTimer);
    this.#expiryTimer = undefined;
    if (pttl < 0) return;
    const at = now() + pttl + 1;
    const arm = () => {
      const left = at - now();
      this.#expiryTimer = left > 0
        ? setTimeout(arm, Math.min(Math.ceil(left), MAX_TIMER_DELAY))
        : undefined;
      if (left <= 0) this.check();
    };
    arm();
  }
}
