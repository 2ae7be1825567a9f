/**
 * A distributed lock for Redis, native to Deno and Bun, compatible on the
 * wire with python-redis-lock 4.x.
 *
 * - One name, one holder: `lock:<name>` holds the owner's id, set with
 *   `SET … NX PX`; release and extend check the id atomically in Lua.
 * - Waiters never poll: they sleep in `BLPOP` until a release, the holder's
 *   expiry, their timeout or their `AbortSignal`.
 * - `await using` releases at the end of the scope; `lock.signal` aborts if
 *   the lock is lost; `lock.token` is a fencing token.
 * - Takes the client the application already has: ioredis, redis
 *   (node-redis), Bun's `RedisClient`, `@db/redis`, or any
 *   `{ send(command, args) }`.
 *
 * @example
 * ```ts ignore
 * import Redis from "ioredis";
 * import { acquire } from "@x/redis-lock";
 *
 * const redis = new Redis();
 * {
 *   await using lock = await acquire(redis, "nightly-report", {
 *     expire: 30_000,
 *     autoRenewal: true,
 *     timeout: 5_000,
 *   });
 *   await buildReport({ signal: lock.signal, fence: lock.token });
 * } // released here
 * ```
 *
 * @module
 */

export { acquire, Lock } from "./src/lock.ts";
export { resetAll } from "./src/reset_all.ts";
export { Redlock, RedlockLock } from "./src/redlock.ts";
export type { RedlockLockOptions, RedlockOptions } from "./src/redlock.ts";
export { shutdown } from "./src/waiter.ts";
export type { ResetAllOptions } from "./src/reset_all.ts";
export { ConnectableClient, withConnect } from "./src/clients.ts";
export type {
  DbRedisClient,
  IoRedisClient,
  IoRedisClusterClient,
  NodeRedisClient,
  NodeRedisClusterClient,
  RedisClient,
  SendClient,
} from "./src/clients.ts";
export {
  AcquireTimeoutError,
  AlreadyAcquiredError,
  LockError,
  LockLostError,
  NotAcquiredError,
  NotExpirableError,
} from "./src/errors.ts";
export type {
  AcquireLockOptions,
  AcquireOptions,
  LockOptions,
  Transport,
} from "./src/options.ts";
