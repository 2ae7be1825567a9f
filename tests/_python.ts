/**
 * What the tests play of python-redis-lock 4.x.
 *
 * @module
 */

/**
 * python-redis-lock 4.x's UNLOCK script, as its release runs it. KEYS:
 * lock, signal. ARGV: id, signal expiry (ms).
 */
export const PYTHON_UNLOCK = `
if redis.call("get", KEYS[1]) ~= ARGV[1] then
  return 1
else
  redis.call("del", KEYS[2])
  redis.call("lpush", KEYS[2], 1)
  redis.call("pexpire", KEYS[2], ARGV[2])
  redis.call("del", KEYS[1])
  return 0
end`;
