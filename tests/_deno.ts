/**
 * Runs one of this project's scripts in a new Deno process, with the
 * project's deno.json (its npm imports), for tests, the demo and benchmarks
 * that need several processes.
 *
 * @module
 */

const CONFIG = new URL("../deno.json", import.meta.url).pathname;

/**
 * Reads a child's stdout as JSON lines, pushing each parsed line to
 * `events`, until the child closes it.
 */
export async function readJsonLines(
  stdout: ReadableStream<Uint8Array>,
  events: unknown[],
): Promise<void> {
  let rest = "";
  for await (const chunk of stdout.pipeThrough(new TextDecoderStream())) {
    const lines = (rest + chunk).split("\n");
    rest = lines.pop()!;
    for (const line of lines) {
      if (line.trim() !== "") events.push(JSON.parse(line));
    }
  }
}

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
