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
 * Every script takes the same keys and first arguments:
 * KEYS: lock, signal, queue, fence.
 * ARGV: wake-list prefix, hand-over expiry (ms), signal expiry (ms), then
 * the script's own.
 *
 * A queue entry is `<process>|<ticket>|<expire ms or empty>|<id>`.
 *
 * @module
 */

import type { Connection, Reply } from "./clients.ts";
import { HAND_OVER_EXPIRE, type LockKeys } from "./keys.ts";

const PRELUDE = `
local function hand_over_to(entry)
  local process, ticket, px, id = string.match(entry, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
  local ttl = tonumber(ARGV[2])
  if px ~= '' and tonumber(px) < ttl then ttl = tonumber(px) end
  redis.call('set', KEYS[1], id, 'PX', ttl)
  return redis.call('incr', KEYS[4]), process, ticket
end

local function hand_over()
  local entry = redis.call('lpop', KEYS[3])
  if not entry then return false end
  local token, process, ticket = hand_over_to(entry)
  local wake = ARGV[1] .. process
  redis.call('lpush', wake, ticket .. ':' .. token)
  redis.call('pexpire', wake, ARGV[2])
  return true
end

local function signal_release()
  redis.call('del', KEYS[2])
  redis.call('lpush', KEYS[2], 1)
  redis.call('pexpire', KEYS[2], ARGV[3])
end

local function set_nx_get(id, px)
  local ok, owner
  if px == '' then
    ok, owner = pcall(redis.call, 'set', KEYS[1], id, 'NX', 'GET')
  else
    ok, owner = pcall(redis.call, 'set', KEYS[1], id, 'NX', 'GET', 'PX', px)
  end
  if ok then return owner end
  -- Redis before 7.0 refuses NX with GET.
  local set
  if px == '' then
    set = redis.call('set', KEYS[1], id, 'NX')
  else
    set = redis.call('set', KEYS[1], id, 'NX', 'PX', px)
  end
  if set then return false end
  return redis.call('get', KEYS[1])
end
`;

/**
 * ARGV: …, id, expire ms ("" for none), queue entry ("" not to queue).
 * Sets the lock when it is free and draws a fencing token; when another id
 * holds it and an entry is given, queues the entry.
 * Returns `{1, token}` when acquired, `{2}` when this id already holds it,
 * `{0, pttl}` when another id holds it (pttl -1: it never expires).
 */
export const ACQUIRE = PRELUDE + `
local owner = set_nx_get(ARGV[4], ARGV[5])
if not owner then
  return {1, redis.call('incr', KEYS[4])}
end
if owner == ARGV[4] then
  return {2}
end
if ARGV[6] ~= '' then
  redis.call('rpush', KEYS[3], ARGV[6])
end
return {0, redis.call('pttl', KEYS[1])}
`;

/**
 * ARGV: …, id.
 * If this id holds the lock, hands it to the first queued waiter, or else
 * deletes it and leaves one wake-up in the signal list (python-redis-lock's
 * UNLOCK). Returns 0 when released, 1 when this id does not hold the lock.
 */
export const RELEASE = PRELUDE + `
if redis.call('get', KEYS[1]) ~= ARGV[4] then
  return 1
end
if not hand_over() then
  signal_release()
  redis.call('del', KEYS[1])
end
return 0
`;

/**
 * ARGV: …, id, expire ms.
 * Returns 0 when extended, 1 when this id does not hold the lock, 2 when the
 * lock has no expiry to extend (python-redis-lock's EXTEND).
 */
export const EXTEND = `
if redis.call('get', KEYS[1]) ~= ARGV[4] then
  return 1
end
if redis.call('pttl', KEYS[1]) < 0 then
  return 2
end
redis.call('pexpire', KEYS[1], ARGV[5])
return 0
`;

/**
 * ARGV: …, id, expire ms ("" for none).
 * Sets the expiry of a lock this id holds: how a holder that was handed the
 * lock takes its own expiry, and how auto-renewal renews. Returns 0 when
 * set, 1 when this id does not hold the lock.
 */
export const KEEP = `
if redis.call('get', KEYS[1]) ~= ARGV[4] then
  return 1
end
if ARGV[5] == '' then
  redis.call('persist', KEYS[1])
else
  redis.call('pexpire', KEYS[1], ARGV[5])
end
return 0
`;

/**
 * Deletes the lock whoever holds it, and hands it to the first queued
 * waiter or leaves one wake-up in the signal list (python-redis-lock's
 * RESET). Returns 1 when there was a lock, 0 when there was none.
 */
export const RESET = PRELUDE + `
local existed = redis.call('exists', KEYS[1])
if not hand_over() then
  signal_release()
  redis.call('del', KEYS[1])
end
return existed
`;

/**
 * ARGV: …, entry of the caller's waiter ("" if none), "1" to pass a taken
 * wake-up on.
 * Looks at the lock for a waiting process: when it is free, hands it to the
 * first queued waiter; with none queued and "1", puts back the wake-up the
 * caller took from the signal list. Returns `{state, pttl, queued, owner}`:
 * state 0 held (pttl of the holder, -1 if none), 1 handed over, 2 free with
 * nobody queued; queued 1 when the caller's entry is still in the queue;
 * owner the holder's id or false.
 */
export const INSPECT = PRELUDE + `
local state, pttl = 0, -2
if redis.call('exists', KEYS[1]) == 1 then
  pttl = redis.call('pttl', KEYS[1])
elseif hand_over() then
  state = 1
else
  state = 2
  if ARGV[5] == '1' then signal_release() end
end
local queued = 0
if ARGV[4] ~= '' and redis.call('lpos', KEYS[3], ARGV[4]) then queued = 1 end
return {state, pttl, queued, redis.call('get', KEYS[1])}
`;

/**
 * ARGV: …, entry of the waiter giving up, entry of the next waiter of the
 * same process ("" if none), id of the waiter giving up.
 * Takes a waiter out of the queue, leaving its place to the next waiter of
 * its process. If the lock was already handed to it, passes the lock on: to
 * that next waiter, or to the first queued, or releases it.
 * Returns `{0}` when taken out of the queue, `{1}` when the lock was passed
 * on, `{2}` when neither (the entry was dropped), `{3, token}` when the lock
 * was handed to the next waiter of the process.
 */
export const CANCEL = PRELUDE + `
local position = redis.call('lpos', KEYS[3], ARGV[4])
if position then
  if ARGV[5] ~= '' then
    redis.call('lset', KEYS[3], position, ARGV[5])
  else
    redis.call('lrem', KEYS[3], 1, ARGV[4])
  end
  return {0}
end
if redis.call('get', KEYS[1]) ~= ARGV[6] then
  return {2}
end
if ARGV[5] ~= '' then
  local token = hand_over_to(ARGV[5])
  return {3, token}
end
if not hand_over() then
  signal_release()
  redis.call('del', KEYS[1])
end
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

const HAND_OVER_STRING = String(HAND_OVER_EXPIRE);

function isNoScript(error: unknown): boolean {
  return error instanceof Error && error.message.includes("NOSCRIPT");
}

/**
 * A script sent as `EVALSHA`, falling back to `EVAL` when the server does not
 * know it yet (a new server, or after `SCRIPT FLUSH`).
 */
export class Script {
  readonly source: string;
  #sha: string | undefined;
  #shaPromise: Promise<string> | undefined;

  constructor(source: string) {
    this.source = source;
  }

  /** The SHA-1 of the source, as `EVALSHA` wants it. */
  sha(): Promise<string> {
    return this.#shaPromise ??= sha1(this.source).then((sha) =>
      this.#sha = sha
    );
  }

  /**
   * Runs the script on a lock: its keys and the common first arguments,
   * then `args`.
   */
  call(
    connection: Connection,
    keys: LockKeys,
    signalExpire: number,
    args: readonly string[],
  ): Promise<Reply> {
    return this.run(connection, keys.all, [
      keys.wakePrefix,
      HAND_OVER_STRING,
      String(signalExpire),
      ...args,
    ]);
  }

  /** Runs the script with its keys and arguments. */
  async run(
    connection: Connection,
    keys: readonly string[],
    args: readonly string[],
  ): Promise<Reply> {
    const sha = this.#sha ?? await this.sha();
    const params = [String(keys.length), ...keys, ...args];
    try {
      return await connection.send("EVALSHA", [sha, ...params]);
    } catch (error) {
      if (!isNoScript(error)) throw error;
      return await connection.send("EVAL", [this.source, ...params]);
    }
  }
}
