/**
 * The Lua scripts, in one place. With no waiter of this library queued,
 * RELEASE, EXTEND and RESET do to the keys what python-redis-lock 4.x does
 * (its UNLOCK, EXTEND and RESET scripts, in milliseconds), so that Python
 * and TypeScript holders share a lock.
 *
 * Waiters of this library queue in `lock-queue:<name>`; a release hands the
 * lock straight to the first of them: it sets the lock to that waiter's id,
 * draws its fencing token and pushes `<ticket>:<token>` to the waiting
 * process's wake list. The hand-over sets an expiry of at most
 * `HAND_OVER_EXPIRE`, which the new holder lengthens to its own once it is
 * running, so that a process that died while queued holds the lock briefly.
 *
 * Every script but ACQUIRE takes the keys lock, signal, queue, fence. The
 * scripts that may hand over (RELEASE, RESET, INSPECT, CANCEL) take the
 * signal expiry (ms) as their first argument.
 *
 * A queue entry is `<process>|<ticket>|<expire ms or empty>|<id>`; the wake
 * list of its process is `lock-wake:<process>`.
 *
 * Shared steps are spliced into each script as statements, not defined as
 * Lua functions: defining a function costs the server time at every run.
 *
 * @module
 */

import type { Connection, Reply } from "./clients.ts";
import { HAND_OVER_EXPIRE, type LockKeys, WAKE_PREFIX } from "./keys.ts";

/**
 * Statements that set the lock for the queue entry in `entry` and draw its
 * token: they leave `token`, `process` and `ticket` in locals.
 */
const SET_FOR_ENTRY = `
local process, ticket, px, id = string.match(entry, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
local ttl = ${HAND_OVER_EXPIRE}
if px ~= '' and tonumber(px) < ttl then ttl = tonumber(px) end
redis.call('set', KEYS[1], id, 'PX', ttl)
local token = redis.call('incr', KEYS[4])
`;

/**
 * Statements that hand the lock to the first queued entry, if any: they
 * leave `entry` false when none is queued.
 */
const HAND_OVER = `
local entry = redis.call('lpop', KEYS[3])
if entry then
  ${SET_FOR_ENTRY}
  local wake = '${WAKE_PREFIX}' .. process
  redis.call('lpush', wake, ticket .. ':' .. token)
  redis.call('pexpire', wake, ${HAND_OVER_EXPIRE})
end
`;

/** Statements that push one wake-up to the signal list (python's way). */
const SIGNAL = `
redis.call('del', KEYS[2])
redis.call('lpush', KEYS[2], 1)
redis.call('pexpire', KEYS[2], ARGV[1])
`;

/**
 * Statements that let the lock go: to the first queued waiter, or else
 * deleted with a wake-up in the signal list (python-redis-lock's UNLOCK).
 */
const LET_GO = `
${HAND_OVER}
if not entry then
  ${SIGNAL}
  redis.call('del', KEYS[1])
end
`;

/**
 * KEYS: lock, queue, fence (not the signal list: this script never touches
 * it, and every argument costs the client time).
 * ARGV: id, expire ms ("" for none), `<process>|<ticket>` ("" not to queue).
 * Sets the lock when it is free and draws a fencing token; when another id
 * holds it and a process is given, queues the entry
 * `<process>|<ticket>|<expire>|<id>`. Returns the token (an integer, the
 * common case made cheap) when acquired, `{2}` when this id already holds
 * it, `{0, pttl}` when another id holds it (pttl -1: it never expires).
 */
export const ACQUIRE = `
local owner
if redis.REDIS_VERSION_NUM then
  -- Redis 7 sets or reads the holder in one command.
  if ARGV[2] == '' then
    owner = redis.call('set', KEYS[1], ARGV[1], 'NX', 'GET')
  else
    owner = redis.call('set', KEYS[1], ARGV[1], 'NX', 'GET', 'PX', ARGV[2])
  end
else
  local set
  if ARGV[2] == '' then
    set = redis.call('set', KEYS[1], ARGV[1], 'NX')
  else
    set = redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
  end
  owner = not set and redis.call('get', KEYS[1])
end
if not owner then
  return redis.call('incr', KEYS[3])
end
if owner == ARGV[1] then
  return {2}
end
if ARGV[3] ~= '' then
  redis.call('rpush', KEYS[2], ARGV[3] .. '|' .. ARGV[2] .. '|' .. ARGV[1])
end
return {0, redis.call('pttl', KEYS[1])}
`;

/**
 * ARGV: signal expiry, id.
 * If this id holds the lock, hands it to the first queued waiter, or else
 * deletes it and leaves one wake-up in the signal list (python-redis-lock's
 * UNLOCK). Returns 0 when released, 1 when this id does not hold the lock.
 */
export const RELEASE = `
if redis.call('get', KEYS[1]) ~= ARGV[2] then
  return 1
end
${LET_GO}
return 0
`;

/**
 * ARGV: id, expire ms.
 * Returns 0 when extended, 1 when this id does not hold the lock, 2 when the
 * lock has no expiry to extend (python-redis-lock's EXTEND).
 */
export const EXTEND = `
if redis.call('get', KEYS[1]) ~= ARGV[1] then
  return 1
end
if redis.call('pttl', KEYS[1]) < 0 then
  return 2
end
redis.call('pexpire', KEYS[1], ARGV[2])
return 0
`;

/**
 * ARGV: id, expire ms ("" for none).
 * Sets the expiry of a lock this id holds: how a holder that was handed the
 * lock takes its own expiry, and how auto-renewal renews. Returns 0 when
 * set, 1 when this id does not hold the lock.
 */
export const KEEP = `
if redis.call('get', KEYS[1]) ~= ARGV[1] then
  return 1
end
if ARGV[2] == '' then
  redis.call('persist', KEYS[1])
else
  redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
`;

/**
 * ARGV: signal expiry.
 * Deletes the lock whoever holds it, and hands it to the first queued
 * waiter or leaves one wake-up in the signal list (python-redis-lock's
 * RESET). Returns 1 when there was a lock, 0 when there was none.
 */
export const RESET = `
local existed = redis.call('exists', KEYS[1])
${LET_GO}
return existed
`;

/**
 * ARGV: signal expiry, entry of the caller's waiter ("" if none), "1" to
 * pass a taken wake-up on.
 * Looks at the lock for a waiting process: when it is free, hands it to the
 * first queued waiter; with none queued and "1", puts back the wake-up the
 * caller took from the signal list. Returns `{state, pttl, queued, owner}`:
 * state 0 held (pttl of the holder, -1 if none), 1 handed over, 2 free with
 * nobody queued; queued 1 when the caller's entry is still in the queue;
 * owner the holder's id or false.
 */
export const INSPECT = `
local state, pttl = 0, -2
if redis.call('exists', KEYS[1]) == 1 then
  pttl = redis.call('pttl', KEYS[1])
else
  ${HAND_OVER}
  if entry then
    state = 1
  else
    state = 2
    if ARGV[3] == '1' then
      ${SIGNAL}
    end
  end
end
local queued = 0
if ARGV[2] ~= '' and redis.call('lpos', KEYS[3], ARGV[2]) then queued = 1 end
return {state, pttl, queued, redis.call('get', KEYS[1])}
`;

/**
 * ARGV: signal expiry, entry of the waiter giving up, entry of the next
 * waiter of the same process ("" if none), id of the waiter giving up.
 * Takes a waiter out of the queue, leaving its place to the next waiter of
 * its process. If the lock was already handed to it, passes the lock on: to
 * that next waiter, or to the first queued, or releases it.
 * Returns `{0}` when taken out of the queue, `{1}` when the lock was passed
 * on, `{2}` when neither (the entry was dropped), `{3, token}` when the lock
 * was handed to the next waiter of the process.
 */
export const CANCEL = `
local position = redis.call('lpos', KEYS[3], ARGV[2])
if position then
  if ARGV[3] ~= '' then
    redis.call('lset', KEYS[3], position, ARGV[3])
  else
    redis.call('lrem', KEYS[3], 1, ARGV[2])
  end
  return {0}
end
if redis.call('get', KEYS[1]) ~= ARGV[4] then
  return {2}
end
if ARGV[3] ~= '' then
  local entry = ARGV[3]
  ${SET_FOR_ENTRY}
  return {3, token}
end
${LET_GO}
return {1}
`;

async function sha1(source: string): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-1",
    new TextEncoder().encode(source),
  );
  return Array.from(
    new Uint8Array(digest),
    (byte) => byte.toString(16).padStart(2, "0"),
  ).join("");
}

function isNoScript(error: unknown): boolean {
  return error instanceof Error && error.message.includes("NOSCRIPT");
}

/**
 * A script sent as `EVALSHA`, falling back to `EVAL` when the server does not
 * know it yet (a new server, or after `SCRIPT FLUSH`).
 */
export class Script {
  readonly source: string;
  readonly #keysOf: (keys: LockKeys) => readonly string[];
  #sha: string | undefined;
  #shaPromise: Promise<string> | undefined;

  /**
   * @param source The Lua source.
   * @param keysOf Which of a lock's keys the script takes, in order.
   */
  constructor(
    source: string,
    keysOf: (keys: LockKeys) => readonly string[] = (keys) => keys.all,
  ) {
    this.source = source;
    this.#keysOf = keysOf;
  }

  /** The SHA-1 of the source, as `EVALSHA` wants it. */
  sha(): Promise<string> {
    return this.#shaPromise ??= sha1(this.source).then((sha) =>
      this.#sha = sha
    );
  }

  /** Runs the script on a lock's keys with the script's own arguments. */
  call(
    connection: Connection,
    keys: LockKeys,
    args: readonly string[],
  ): Promise<Reply> {
    return this.run(connection, this.#keysOf(keys), args);
  }

  /**
   * Runs a script that may hand the lock over: the signal expiry, then
   * `args`.
   */
  handOver(
    connection: Connection,
    keys: LockKeys,
    signalExpire: number,
    args: readonly string[],
  ): Promise<Reply> {
    return this.run(connection, keys.all, [String(signalExpire), ...args]);
  }

  /** Runs the script with its keys and arguments. */
  run(
    connection: Connection,
    keys: readonly string[],
    args: readonly string[],
  ): Promise<Reply> {
    if (this.#sha === undefined) {
      return this.sha().then(() => this.run(connection, keys, args));
    }
    const params = [this.#sha, String(keys.length), ...keys, ...args];
    return connection.send("EVALSHA", params).catch((error) => {
      if (!isNoScript(error)) throw error;
      params[0] = this.source;
      return connection.send("EVAL", params);
    });
  }
}
