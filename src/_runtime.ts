/**
 * The runtime seam: the one place that knows Deno, Bun and Node apart.
 *
 * @module
 */

type TimerHandle = ReturnType<typeof setTimeout>;

interface DenoTimers {
  unrefTimer(id: number): void;
}

/**
 * Lets the process exit while the timer is pending (a lease's renewal must
 * not keep a finished program alive).
 */
export function unrefTimer(handle: TimerHandle): void {
  const deno = (globalThis as { Deno?: DenoTimers }).Deno;
  if (typeof handle === "number") {
    deno?.unrefTimer(handle);
  } else {
    (handle as { unref?: () => void }).unref?.();
  }
}
