/**
 * Resetting every lock of a Redis database at once.
 *
 * @module
 */

import { type RedisClient, toConnection } from "./clients.ts";
import { LockError } from "./errors.ts";
import { LOCK_PREFIX, lockKeys } from "./keys.ts";
import { optionsObject, positiveInteger } from "./options.ts";
import { resetLock } from "./lock.ts";

/** Options of {@linkcode resetAll}. */
export interface ResetAllOptions {
  /**
   * Milliseconds each lock's wake-up stays in its signal list.
   *
   * @default {1000}
   */
  signalExpire?: number;
}

/**
 * Deletes every lock (`lock:*`) whoever holds it and wakes a waiter of each,
 * as python-redis-lock's `reset_all()`. Keys are found with `SCAN`, never
 * `KEYS`, so a large database is not blocked. Use with care: meant for
 * recovery after a crash left locks behind.
 *
 * @param client The application's Redis client.
 * @param options `signalExpire`.
 * @returns How many locks were deleted.
 *
 * @example
 * ```ts ignore
 * import { resetAll } from "@x/redis-lock";
 *
 * const count = await resetAll(client);
 * console.log(`reset ${count} locks`);
 * ```
 */
export async function resetAll(
  client: RedisClient,
  options?: ResetAllOptions,
): Promise<number> {
  const { signalExpire: given = 1000 } = optionsObject(
    "reset all",
    options,
    ["signalExpire"],
  );
  const signalExpire = positiveInteger("reset all", "signalExpire", given);
  const connection = toConnection(client);
  let count = 0;
  try {
    // On a Cluster, each master holds the locks of its slots.
    for (const master of await connection.masters()) {
      let cursor = "0";
      do {
        const [next, keys] = await master.send("SCAN", [
          cursor,
          "MATCH",
          `${LOCK_PREFIX}*`,
          "COUNT",
          "1000",
        ]) as [string, string[]];
        cursor = String(next);
        for (const key of keys) {
          const keysOfLock = lockKeys(
            key.slice(LOCK_PREFIX.length),
            connection.cluster,
          );
          if (await resetLock(connection, keysOfLock, signalExpire)) count++;
        }
      } while (cursor !== "0");
    }
  } catch (error) {
    throw new LockError("Cannot reset all locks: Redis failed", {
      cause: error,
    });
  }
  return count;
}
