/**
 * The Lua scripts, in one place. RELEASE, EXTEND and RESET do to the keys
 * what python-redis-lock 4.x does (its UNLOCK, EXTEND and RESET scripts, in
 * milliseconds), so that Python and TypeScript holders can share a lock.
 *
 * @module
 */

import type { Connection, Reply } from "./clients.ts";

/**
 * KEYS: lock, fence. ARGV: id, expire in ms ("" for none).
 * Sets the lock when it is free and draws a fencing token.
 * Returns `{1, token}` when acquired, `{2}` when this id already holds it,
 * `{0, pttl}` when another id holds it (pttl -1: it never expires).
 */
export const ACQUIRE = `
local set
if ARGV[2] == '' then
  set = redis.call('set', KEYS[1], ARGV[1], 'NX')
else
  set = redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
end
if set then
  return {1, redis.call('incr', KEYS[2])}
end
if redis.call('get', KEYS[1]) == ARGV[1] then
  return {2}
end
return {0, redis.call('pttl', KEYS[1])}
`;

/**
 * KEYS: lock, signal. ARGV: id, signal expire in ms.
 * Deletes the lock if this id holds it and leaves one wake-up in the signal
 * list. Returns 0 when released, 1 when this id does not hold the lock.
 */
export const RELEASE = `
if redis.call('get', KEYS[1]) ~= ARGV[1] then
  return 1
end
redis.call('del', KEYS[2])
redis.call('lpush', KEYS[2], 1)
redis.call('pexpire', KEYS[2], ARGV[2])
redis.call('del', KEYS[1])
return 0
`;

/**
 * KEYS: lock. ARGV: id, expire in ms.
 * Returns 0 when extended, 1 when this id does not hold the lock, 2 when the
 * lock has no expiry to extend.
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
 * KEYS: lock, signal. ARGV: signal expire in ms.
 * Deletes the lock whoever holds it and leaves one wake-up in the signal
 * list. Returns 1 when there was a lock, 0 when there was none.
 */
export const RESET = `
redis.call('del', KEYS[2])
redis.call('lpush', KEYS[2], 1)
redis.call('pexpire', KEYS[2], ARGV[1])
return redis.call('del', KEYS[1])
`;

/**
 * KEYS: signal. ARGV: signal expire in ms.
 * Puts back a wake-up that a waiter took but did not use. Returns the length
 * of the signal list.
 */
export const PASS_ON = `
local n = redis.call('lpush', KEYS[1], 1)
redis.call('pexpire', KEYS[1], ARGV[1])
return n
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
