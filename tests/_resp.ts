/**
 * A minimal RESP2 client over `Deno.connect`, for the tests: raw commands
 * for a test's own checks, the plain `{ send(command, args) }` client the
 * library accepts, and a stand-in with the shape of `@db/redis` (which JSR
 * serves and this machine cannot reach). Each is a real connection to a real
 * server; nothing here imitates Redis.
 *
 * @module
 */

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** An error reply from the server. */
export class RespError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RespError";
  }
}

type Reply = string | number | null | RespError | Reply[];

class Incomplete extends Error {}

function parse(
  buffer: Uint8Array,
  start: number,
): [reply: Reply, end: number] {
  const lineEnd = buffer.indexOf(13, start);
  if (lineEnd < 0 || lineEnd + 1 >= buffer.length) throw new Incomplete();
  const type = buffer[start];
  const line = decoder.decode(buffer.subarray(start + 1, lineEnd));
  const next = lineEnd + 2;
  switch (type) {
    case 43: // +
      return [line, next];
    case 45: // -
      return [new RespError(line), next];
    case 58: // :
      return [Number(line), next];
    case 36: { // $
      const length = Number(line);
      if (length < 0) return [null, next];
      if (next + length + 2 > buffer.length) throw new Incomplete();
      return [
        decoder.decode(buffer.subarray(next, next + length)),
        next + length + 2,
      ];
    }
    case 42: { // *
      const length = Number(line);
      if (length < 0) return [null, next];
      const items: Reply[] = [];
      let position = next;
      for (let i = 0; i < length; i++) {
        const [item, end] = parse(buffer, position);
        items.push(item);
        position = end;
      }
      return [items, position];
    }
    default:
      throw new Error(`Unexpected RESP type byte ${type}`);
  }
}

/**
 * Reads replies from `conn` until it closes, handing each to `onReply`;
 * rejects when the connection fails.
 */
async function readReplies(
  conn: Deno.TcpConn,
  onReply: (reply: Reply) => void,
): Promise<void> {
  let buffer: Uint8Array = new Uint8Array(0);
  const chunk = new Uint8Array(64 * 1024);
  for (;;) {
    const n = await conn.read(chunk);
    if (n === null) return;
    const joined = new Uint8Array(buffer.length + n);
    joined.set(buffer);
    joined.set(chunk.subarray(0, n), buffer.length);
    buffer = joined;
    let position = 0;
    for (;;) {
      let parsed: [Reply, number];
      try {
        parsed = parse(buffer, position);
      } catch (error) {
        if (error instanceof Incomplete) break;
        throw error;
      }
      position = parsed[1];
      onReply(parsed[0]);
    }
    buffer = buffer.subarray(position);
  }
}

function firstError(reply: Reply): RespError | undefined {
  return reply instanceof RespError ? reply : undefined;
}

/** One connection; replies come back in the order commands were sent. */
export class RespClient {
  readonly port: number;
  readonly hostname: string;
  readonly #conn: Deno.TcpConn;
  readonly #pending: {
    resolve: (reply: unknown) => void;
    reject: (error: unknown) => void;
  }[] = [];
  readonly #reading: Promise<void>;
  #closed = false;
  /** The last write queued. */
  #writing: Promise<void> = Promise.resolve();
  /** Whether close() has closed the socket (the peer closing it does not). */
  #released = false;

  private constructor(conn: Deno.TcpConn, hostname: string, port: number) {
    this.#conn = conn;
    this.hostname = hostname;
    this.port = port;
    this.#reading = this.#read();
  }

  /** Connects to `hostname:port`. */
  static async connect(
    port: number,
    hostname = "127.0.0.1",
  ): Promise<RespClient> {
    const conn = await Deno.connect({ hostname, port });
    conn.setNoDelay(true);
    return new RespClient(conn, hostname, port);
  }

  async #read(): Promise<void> {
    let failure: unknown = new Error("Connection closed");
    try {
      await readReplies(this.#conn, (reply) => {
        const waiter = this.#pending.shift();
        const error = firstError(reply);
        if (error) waiter?.reject(error);
        else waiter?.resolve(reply);
      });
    } catch (error) {
      if (!this.#closed) failure = error;
    }
    this.#closed = true;
    for (const waiter of this.#pending.splice(0)) waiter.reject(failure);
  }

  /** Sends a command; rejects with a {@linkcode RespError} on an error reply. */
  send(command: string, args: readonly string[] = []): Promise<unknown> {
    if (this.#closed) return Promise.reject(new Error("Connection closed"));
    const parts = [command, ...args];
    let text = `*${parts.length}\r\n`;
    for (const part of parts) {
      text += `$${encoder.encode(part).length}\r\n${part}\r\n`;
    }
    const promise = new Promise<unknown>((resolve, reject) =>
      this.#pending.push({ resolve, reject })
    );
    const bytes = encoder.encode(text);
    // Writes go out one after another, in the order of the replies awaited.
    this.#writing = this.#writing.then(async () => {
      let written = 0;
      while (written < bytes.length) {
        written += await this.#conn.write(bytes.subarray(written));
      }
    }).catch(() => {});
    return promise;
  }

  /** Shorthand: `command("SET", "k", "v")`. */
  command(command: string, ...args: (string | number)[]): Promise<unknown> {
    return this.send(command, args.map(String));
  }

  /** Opens another connection to the same server. */
  duplicate(): Promise<RespClient> {
    return RespClient.connect(this.port, this.hostname);
  }

  /** Closes the connection and waits until its reader has stopped. */
  async close(): Promise<void> {
    this.#closed = true;
    if (!this.#released) {
      this.#released = true;
      try {
        this.#conn.close();
      } catch {
        // already closed by the peer
      }
    }
    await this.#reading;
  }
}

/**
 * One connection in subscriber mode: `SUBSCRIBE`s, and hands each message
 * of its channels to their listener. Ends when closed or when the server
 * drops it.
 */
export class RespSubscriber {
  readonly #conn: Deno.TcpConn;
  readonly #listeners = new Map<string, (message: string) => void>();
  readonly #reading: Promise<void>;
  #closed = false;

  private constructor(conn: Deno.TcpConn) {
    this.#conn = conn;
    this.#reading = this.#read();
  }

  static async connect(port: number, hostname = "127.0.0.1") {
    return new RespSubscriber(await Deno.connect({ hostname, port }));
  }

  async #read(): Promise<void> {
    try {
      await readReplies(this.#conn, (reply) => {
        const [kind, channel, message] = reply as string[];
        if (kind === "message") this.#listeners.get(channel)?.(message);
      });
    } catch {
      // closed
    }
  }

  /** Subscribes to `channel`. */
  async subscribe(
    channel: string,
    listener: (message: string) => void,
  ): Promise<void> {
    this.#listeners.set(channel, listener);
    const text = `*2\r\n$9\r\nSUBSCRIBE\r\n$${
      encoder.encode(channel).length
    }\r\n${channel}\r\n`;
    await this.#conn.write(encoder.encode(text));
  }

  /** Closes the connection and waits until its reader has stopped. */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      try {
        this.#conn.close();
      } catch {
        // already closed by the peer
      }
    }
    await this.#reading;
  }
}

/** An error with `@db/redis`'s shape: its message keeps the leading `-`. */
export class ErrorReplyError extends Error {}

/**
 * A client with the shape of `@db/redis`'s `Redis`: `sendCommand(command,
 * args)`, `close()`, and no `duplicate()`.
 */
export class DbRedisShape {
  readonly #client: RespClient;

  private constructor(client: RespClient) {
    this.#client = client;
  }

  /** Connects, like `@db/redis`'s `connect({ hostname, port })`. */
  static async connect(
    options: { hostname: string; port: number },
  ): Promise<DbRedisShape> {
    return new DbRedisShape(
      await RespClient.connect(options.port, options.hostname),
    );
  }

  async sendCommand(
    command: string,
    args?: (string | number | Uint8Array)[],
  ): Promise<unknown> {
    try {
      return await this.#client.send(command, (args ?? []).map(String));
    } catch (error) {
      if (error instanceof RespError) {
        throw new ErrorReplyError(`-${error.message}`);
      }
      throw error;
    }
  }

  close(): Promise<void> {
    return this.#client.close();
  }
}
