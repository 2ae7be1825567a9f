/**
 * What a failed command means for the connection it ran on and for the
 * waits that sent it: the one place that reads the errors of every client.
 *
 * @module
 */

/**
 * - `"connection"`: the connection failed (closed, reset, refused, timed
 *   out): the reply is lost and the command may or may not have run. The
 *   connection is dropped and opened again.
 * - `"transient"`: Redis answered with an error that passes (loading,
 *   busy, a failover in progress): the connection is fine; try again later.
 * - `"permanent"`: Redis refused the command for good (wrong type, no
 *   permission, script error), or the client cannot do what is asked:
 *   retrying would fail the same way.
 */
export type FailureKind = "connection" | "transient" | "permanent";

/** Error replies that pass with time. */
const TRANSIENT = new Set([
  "LOADING",
  "BUSY",
  "MASTERDOWN",
  "TRYAGAIN",
  "CLUSTERDOWN",
  "READONLY",
  "NOREPLICAS",
  "MISCONF",
  // A blocked command ended by a failover (the master became a replica).
  "UNBLOCKED",
]);

/**
 * The code of an error reply (`WRONGTYPE`, `ERR`, …), or `undefined` when
 * the error is not a reply from Redis. Clients keep the server's message,
 * some with the leading `-` of the protocol.
 */
export function replyCode(error: unknown): string | undefined {
  if (!(error instanceof Error)) return undefined;
  return /^-?([A-Z][A-Z_]*)(?:\s|$)/.exec(error.message)?.[1];
}

/** Classifies a failure: see {@linkcode FailureKind}. */
export function classify(error: unknown): FailureKind {
  if (error instanceof TypeError || error instanceof RangeError) {
    return "permanent";
  }
  const code = replyCode(error);
  if (code === undefined) return "connection";
  if (TRANSIENT.has(code)) return "transient";
  if (code === "ERR" && /max number of clients/i.test(String(error))) {
    return "transient";
  }
  return "permanent";
}
