/**
 * Runs one of this project's scripts in a new Deno process, with the
 * project's deno.json (its npm imports), for tests, the demo and benchmarks
 * that need several processes.
 *
 * @module
 */

const CONFIG = new URL("../deno.json", import.meta.url).pathname;

/** A `deno run -A` of `script` with `args`, not yet spawned. */
export function denoScript(
  script: URL,
  args: string[],
  options: Omit<Deno.CommandOptions, "args"> = {},
): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    ...options,
    args: ["run", "-A", "--config", CONFIG, script.pathname, ...args],
  });
}
