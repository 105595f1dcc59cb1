import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import net, { type AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import {
  COALESCED_WRITE_LIMIT,
  MeshIncomingMessage,
  sendHeadWithFirstChunk,
} from "../../src/inbound/message.js";

const servers: Server[] = [];

afterEach(async () => {
  for (const created of servers.splice(0)) {
    created.closeAllConnections();
    await new Promise<void>((resolve) => created.close(() => resolve()));
  }
});

interface Seen {
  readonly path: string | undefined;
  readonly events: string[];
}

/** node:http with the mesh server's request class; `read` says whether the app reads each request. */
async function listen(read: (req: IncomingMessage) => boolean): Promise<{ port: number; seen: Seen[] }> {
  const seen: Seen[] = [];
  const created = createServer({ IncomingMessage: MeshIncomingMessage }, (req, res) => {
    const entry: Seen = { path: req.url, events: [] };
    seen.push(entry);
    for (const event of ["end", "close", "resume"]) req.on(event, () => entry.events.push(event));
    if (read(req)) req.on("data", () => undefined);
    res.end(`served ${req.url}`);
  });
  servers.push(created);
  await new Promise<void>((resolve) => created.listen(0, "127.0.0.1", resolve));
  return { port: (created.address() as AddressInfo).port, seen };
}

/** Sends `requests` on one keep-alive connection at once, resolves with every response body. */
function pipeline(port: number, requests: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    let text = "";
    const socket = net.connect(port, "127.0.0.1", () => socket.write(requests));
    socket.setEncoding("latin1");
    socket.on("error", reject);
    socket.on("data", (chunk: string) => {
      text += chunk;
      const bodies = [...text.matchAll(/served (\/[a-z])/g)].map((match) => match[1] as string);
      if (bodies.length === requests.split("HTTP/1.1\r\n").length - 1) {
        socket.destroy();
        resolve(bodies);
      }
    });
  });
}

const settle = () => new Promise((resolve) => setImmediate(resolve));

describe("MeshIncomingMessage: a request the application does not read", () => {
  it("ends and closes like any other, and the connection serves the next request", async () => {
    const { port, seen } = await listen(() => false);
    const bodies = await pipeline(
      port,
      "GET /a HTTP/1.1\r\nHost: x\r\n\r\n" +
        // A body nobody reads is still taken off the wire, or the next request would start inside it.
        "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world" +
        "GET /c HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    expect(bodies).toEqual(["/a", "/b", "/c"]);
    await settle();
    for (const entry of seen) {
      expect(
        entry.events.filter((event) => event !== "resume"),
        entry.path,
      ).toEqual(["end", "close"]);
    }
  });

  it("is dumped as node:http does when the application listens for data", async () => {
    const { port, seen } = await listen(() => true);
    const bodies = await pipeline(
      port,
      "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" + "GET /b HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    expect(bodies).toEqual(["/a", "/b"]);
    await settle();
    expect(seen.map((entry) => entry.events.filter((event) => event !== "resume"))).toEqual([
      ["end", "close"],
      ["end", "close"],
    ]);
  });
});

describe("sendHeadWithFirstChunk: a response's head and first buffer in one write", () => {
  const large = Buffer.alloc(COALESCED_WRITE_LIMIT + 1, 0x61);
  const nearLimit = Buffer.alloc(COALESCED_WRITE_LIMIT - 400, 0x62);
  // Every way a handler commonly starts a response's body, by path.
  const shapes: Record<string, (res: ServerResponse) => void> = {
    "/buffer": (res) => {
      res.setHeader("content-type", "application/json");
      res.end(Buffer.from('{"ok":true}'));
    },
    "/uint8": (res) => res.end(new Uint8Array([104, 105])),
    "/near-limit": (res) => res.end(nearLimit),
    "/over-limit": (res) => res.end(large),
    "/chunked": (res) => {
      res.write(Buffer.from("first "));
      res.end(Buffer.from("second"));
    },
    "/write-callback": (res) => {
      res.setHeader("content-length", "10");
      res.write(Buffer.from("12345"), () => res.end(Buffer.from("67890")));
    },
    "/string": (res) => res.end("a string body"),
    // A lone surrogate: both paths write U+FFFD.
    "/utf8-string": (res) => res.end("caf\u00e9 \u2713 \u{1f600} \ud800"),
    "/latin1-string": (res) => res.end("caf\u00e9", "latin1"),
    // Encodings node:http writes apart from the head.
    "/hex-string": (res) => res.end("6869", "hex"),
    "/over-limit-string": (res) => res.end("s".repeat(COALESCED_WRITE_LIMIT)),
    // Fastify's shape: the head, the payload as a string, and end() without a chunk.
    "/write-then-end": (res) => {
      res.writeHead(200, { "content-type": "application/json", "content-length": "8" });
      res.write('{"a":1}\n');
      res.end();
    },
    "/empty": (res) => {
      res.statusCode = 204;
      res.end();
    },
    // A latin1 (not ASCII) header value: the head must be copied as latin1 bytes, as node:http sends it.
    "/latin1-header": (res) => {
      res.setHeader("x-name", "caf\u00e9");
      res.end(Buffer.from("body"));
    },
    "/write-head": (res) => {
      res.writeHead(201, { "x-a": "1", "content-length": "3" });
      res.end(Buffer.from("abc"));
    },
  };

  /** Each write the socket was asked for: its chunks, as `buffer:<bytes>` or `<encoding>:<chars>`. */
  type Writes = string[][];
  interface QueuedChunk {
    chunk: string | Uint8Array;
    encoding: string;
  }
  const describeChunk = ({ chunk, encoding }: QueuedChunk) =>
    typeof chunk === "string" ? `${encoding}:${chunk.length}` : `buffer:${chunk.byteLength}`;

  /** node:http, with the mesh server's `_send` or without; records the socket's writes. */
  async function listenShapes(coalesce: boolean): Promise<{ port: number; writes: Writes }> {
    const writes: Writes = [];
    const created = createServer((req, res) => {
      if (coalesce) (res as unknown as { _send: unknown })._send = sendHeadWithFirstChunk;
      // The date would differ between the two servers.
      res.sendDate = false;
      const shape = shapes[req.url ?? ""];
      if (shape === undefined) res.writeHead(404).end();
      else shape(res);
    });
    created.on("connection", (socket: net.Socket) => {
      const recorded = socket as net.Socket & {
        _write: (chunk: string | Uint8Array, encoding: string, callback: unknown) => void;
        _writev: (chunks: QueuedChunk[], callback: unknown) => void;
      };
      const write = recorded._write;
      const writev = recorded._writev;
      recorded._write = function (chunk, encoding, callback) {
        writes.push([describeChunk({ chunk, encoding })]);
        return write.call(this, chunk, encoding, callback);
      };
      recorded._writev = function (chunks, callback) {
        writes.push(chunks.map(describeChunk));
        return writev.call(this, chunks, callback);
      };
    });
    servers.push(created);
    await new Promise<void>((resolve) => created.listen(0, "127.0.0.1", resolve));
    return { port: (created.address() as AddressInfo).port, writes };
  }

  /** Writes `requests` on one connection and reads until the server closes it (the last asks it to). */
  function exchange(port: number, requests: string): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      const socket = net.connect(port, "127.0.0.1", () => socket.write(requests));
      socket.on("error", reject);
      socket.on("data", (chunk: Buffer) => chunks.push(chunk));
      socket.on("end", () => resolve(Buffer.concat(chunks)));
    });
  }

  const request = (path: string, method = "GET", last = false) =>
    `${method} ${path} HTTP/1.1\r\nHost: x\r\n${last ? "Connection: close\r\n" : ""}\r\n`;

  it("sends byte for byte what node:http sends, one request at a time and pipelined", async () => {
    const paths = Object.keys(shapes);
    const all =
      paths.map((path) => request(path)).join("") +
      request("/buffer", "HEAD") +
      request("/over-limit", "GET", true);
    const plain = await listenShapes(false);
    const mesh = await listenShapes(true);
    // Pipelined: every response after the first is written while the one before it is in flight, so it
    // waits in node:http's output queue.
    const [expected, got] = await Promise.all([exchange(plain.port, all), exchange(mesh.port, all)]);
    expect(got.toString("latin1")).toBe(expected.toString("latin1"));
    expect(got.includes(Buffer.from("x-name: caf\u00e9", "latin1"))).toBe(true);
    for (const path of paths) {
      const one = request(path, "GET", true);
      const [alone, aloneMesh] = await Promise.all([exchange(plain.port, one), exchange(mesh.port, one)]);
      expect(aloneMesh.toString("latin1"), path).toBe(alone.toString("latin1"));
    }
  });

  it("hands the socket one buffer for the head and first chunk, and end()'s empty write as a buffer", async () => {
    const plain = await listenShapes(false);
    const mesh = await listenShapes(true);
    const sizes: Record<string, number> = {};
    for (const path of ["/buffer", "/string", "/write-then-end", "/empty", "/over-limit", "/hex-string"]) {
      sizes[path] = (await exchange(mesh.port, request(path, "GET", true))).byteLength;
      await exchange(plain.port, request(path, "GET", true));
    }
    // node:http: strings for the socket's C++ side to encode (the head, or a string body joined to it),
    // and, on Node 20, end()'s empty string after a chunk.
    for (const write of plain.writes) expect(write[0]).toMatch(/^(latin1|utf8):/);
    const emptyAsBuffer = (write: string[]) =>
      write.map((chunk) => (chunk === "latin1:0" ? "buffer:0" : chunk));
    // The mesh server: the whole response as one buffer, and end()'s empty write (where node:http makes
    // one) as an empty buffer; past one TLS record's payload, and for the encodings node:http writes
    // apart, node:http's own writes.
    const coalesced = ["/buffer", "/string", "/write-then-end", "/empty"];
    expect(mesh.writes).toEqual(
      plain.writes.map((write, index) => {
        const path = Object.keys(sizes)[index] as string;
        if (!coalesced.includes(path)) return emptyAsBuffer(write);
        return [
          `buffer:${sizes[path]}`,
          ...(write.length > 1 && write.at(-1) === "latin1:0" ? ["buffer:0"] : []),
        ];
      }),
    );
    expect(mesh.writes.flat().filter((chunk) => !chunk.startsWith("buffer:"))).toEqual([
      `latin1:${(sizes["/over-limit"] as number) - large.byteLength}`,
      `latin1:${(sizes["/hex-string"] as number) - 2}`,
      "hex:4",
    ]);
  });
});
