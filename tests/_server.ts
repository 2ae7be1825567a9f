/**
 * The test bed: a `redis-server` of the test's own, on a free loopback port
 * the OS picks, with no persistence. Tests never touch a server they did not
 * start.
 *
 * @module
 */

const HOSTNAME = "127.0.0.1";
const READY_TIMEOUT = 10_000;

/** Options of {@linkcode RedisServer.start}. */
export interface RedisServerOptions {
  /** Further `redis-server` arguments, e.g. `["--hz", "100"]`. */
  args?: string[];
}

function freePort(): number {
  const listener = Deno.listen({ hostname: HOSTNAME, port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The pid of the server answering on `port`, or `undefined` if none answers.
 * Two servers started at once may be given the same free port: the one that
 * fails to bind exits, and only the pid tells which one answers.
 */
async function serverPid(port: number): Promise<number | undefined> {
  let conn: Deno.TcpConn | undefined;
  try {
    conn = await Deno.connect({ hostname: HOSTNAME, port });
    await conn.write(new TextEncoder().encode("INFO server\r\n"));
    const buffer = new Uint8Array(16_384);
    let length = 0;
    while (length < buffer.length) {
      const n = await conn.read(buffer.subarray(length));
      if (n === null) return undefined;
      length += n;
      const text = new TextDecoder().decode(buffer.subarray(0, length));
      const match = /\r\nprocess_id:(\d+)\r\n/.exec(text);
      if (match) return Number(match[1]);
    }
    return undefined;
  } catch {
    return undefined;
  } finally {
    conn?.close();
  }
}

/** A `redis-server` process that a test started, and can stop, kill and restart. */
export class RedisServer implements AsyncDisposable {
  readonly hostname: string = HOSTNAME;
  readonly port: number;
  readonly #dir: string;
  readonly #args: string[];
  #process: Deno.ChildProcess | undefined;

  private constructor(port: number, dir: string, args: string[]) {
    this.port = port;
    this.#dir = dir;
    this.#args = args;
  }

  /**
   * Starts a server on a free port and resolves once it answers `PING`.
   *
   * @example
   * ```ts ignore
   * await using server = await RedisServer.start();
   * ```
   */
  static async start(options: RedisServerOptions = {}): Promise<RedisServer> {
    const dir = await Deno.makeTempDir({ prefix: "redis-lock-test-" });
    let lastError: unknown;
    for (let attempt = 0; attempt < 5; attempt++) {
      const server = new RedisServer(freePort(), dir, options.args ?? []);
      try {
        await server.#spawn();
        return server;
      } catch (error) {
        lastError = error;
      }
    }
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw lastError;
  }

  /** `redis://127.0.0.1:<port>` */
  get url(): string {
    return `redis://${this.hostname}:${this.port}`;
  }

  /** Whether the process is running. */
  get running(): boolean {
    return this.#process !== undefined;
  }

  async #spawn(): Promise<void> {
    const child = new Deno.Command("redis-server", {
      args: [
        "--port",
        String(this.port),
        "--bind",
        this.hostname,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        this.#dir,
        "--logfile",
        "redis.log",
        ...this.#args,
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    this.#process = child;
    let exited = false;
    const status = child.status.then((s) => (exited = true, s));
    const deadline = Date.now() + READY_TIMEOUT;
    while (!exited && Date.now() < deadline) {
      if (await serverPid(this.port) === child.pid) return;
      await delay(10);
    }
    if (!exited) child.kill("SIGKILL");
    await status;
    this.#process = undefined;
    const log = await Deno.readTextFile(`${this.#dir}/redis.log`).catch(
      () => "",
    );
    throw new Error(
      `redis-server did not start on port ${this.port}:\n${
        log.split("\n").slice(-10).join("\n")
      }`,
    );
  }

  async #signal(signal: Deno.Signal): Promise<void> {
    const child = this.#process;
    if (child === undefined) return;
    this.#process = undefined;
    child.kill(signal);
    await child.status;
  }

  /** Stops the server gracefully (SIGTERM) and waits for it to exit. */
  stop(): Promise<void> {
    return this.#signal("SIGTERM");
  }

  /** Kills the server (SIGKILL), as a crash would. */
  kill(): Promise<void> {
    return this.#signal("SIGKILL");
  }

  /** Pauses the server (SIGSTOP): it holds its connections but answers nothing. */
  pause(): void {
    this.#process?.kill("SIGSTOP");
  }

  /** Resumes a paused server (SIGCONT). */
  resume(): void {
    this.#process?.kill("SIGCONT");
  }

  /** Starts the server again on the same port, empty. */
  async restart(): Promise<void> {
    await this.stop();
    await this.#spawn();
  }

  /**
   * Stops the server without waiting, and removes its directory: for an
   * `unload` listener, where nothing can be awaited.
   */
  disposeSync(): void {
    this.#process?.kill("SIGTERM");
    this.#process = undefined;
    try {
      Deno.removeSync(this.#dir, { recursive: true });
    } catch {
      // already gone
    }
  }

  /** Stops the server and removes its directory. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }
}
