import http2, { type Http2Server, type ServerHttp2Session } from "node:http2";
import net, { type AddressInfo, type Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { closeOnlyAfterGoaway } from "../src/http2-abuse.js";

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
const HEADERS = 0x1;
const SETTINGS = 0x4;
const GOAWAY = 0x7;
const WINDOW_UPDATE = 0x8;
const END_STREAM_AND_HEADERS = 0x5;
const HIGHEST_STREAM_ID = 2 ** 31 - 1;

function frame(type: number, flags: number, streamId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head.writeUInt8(type, 3);
  head.writeUInt8(flags, 4);
  head.writeUInt32BE(streamId, 5);
  return Buffer.concat([head, payload]);
}

function clientGoaway(): Buffer {
  return frame(GOAWAY, 0, 0, Buffer.alloc(8));
}

/** GET / for localhost from HPACK's static table, with END_STREAM. */
function get(streamId: number): Buffer {
  const block = Buffer.concat([Buffer.from([0x82, 0x86, 0x84, 0x41, 9]), Buffer.from("localhost")]);
  return frame(HEADERS, END_STREAM_AND_HEADERS, streamId, block);
}

interface Frame {
  readonly type: number;
  readonly streamId: number;
  readonly payload: Buffer;
}

function parse(bytes: Buffer): Frame[] {
  const frames: Frame[] = [];
  for (let offset = 0; offset + 9 <= bytes.length; ) {
    const length = bytes.readUIntBE(offset, 3);
    if (offset + 9 + length > bytes.length) break;
    frames.push({
      type: bytes.readUInt8(offset + 3),
      streamId: bytes.readUInt32BE(offset + 5) & 0x7fffffff,
      payload: bytes.subarray(offset + 9, offset + 9 + length),
    });
    offset += 9 + length;
  }
  return frames;
}

const goawayLastIds = (frames: Frame[]) =>
  frames.filter((one) => one.type === GOAWAY).map((one) => one.payload.readUInt32BE(0));

let server: Http2Server | undefined;
const sockets: Socket[] = [];

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.destroy();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = undefined;
});

/** A node:http2 server with the guard on every session, answering each request with `body`. */
async function listen(
  graceMs: number,
  body: Buffer | string = "ok",
): Promise<{ port: number; sessions: ServerHttp2Session[] }> {
  const sessions: ServerHttp2Session[] = [];
  const created = http2.createServer({ settings: { initialWindowSize: HIGHEST_STREAM_ID } });
  server = created;
  // The accepted socket: node's session.socket is a proxy that refuses destroy().
  let accepted: Socket | undefined;
  created.prependListener("connection", (socket: Socket) => {
    accepted = socket;
  });
  created.on("session", (session: ServerHttp2Session) => {
    closeOnlyAfterGoaway(session, graceMs, accepted);
    sessions.push(session);
  });
  created.on("stream", (stream) => {
    stream.on("error", () => undefined);
    stream.respond({ ":status": 200 });
    stream.end(body);
  });
  await new Promise<void>((resolve) => created.listen(0, "127.0.0.1", resolve));
  return { port: (created.address() as AddressInfo).port, sessions };
}

/** Writes `bytes` at once and collects what the server sends until it closes the connection. */
function exchange(port: number, bytes: Buffer): Promise<Frame[]> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = net.connect(port, "127.0.0.1", () => socket.write(bytes));
    sockets.push(socket);
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("error", reject);
    socket.on("close", () => resolve(parse(Buffer.concat(chunks))));
  });
}

describe("closeOnlyAfterGoaway", () => {
  it("serves streams whose HEADERS follow a client's GOAWAY in the same read, then closes", async () => {
    const { port, sessions } = await listen(10_000);
    const frames = await exchange(
      port,
      Buffer.concat([PREFACE, frame(SETTINGS, 0, 0), clientGoaway(), get(1), get(3)]),
    );
    const answered = frames.filter((one) => one.type === HEADERS).map((one) => one.streamId);
    expect(answered.sort()).toEqual([1, 3]);
    // The first GOAWAY promises every stream already sent; the second names the last one served.
    expect(goawayLastIds(frames)[0]).toBe(HIGHEST_STREAM_ID);
    expect(goawayLastIds(frames)).toContain(3);
    expect(sessions[0]?.destroyed).toBe(true);
  });

  it("closes a server-closed session in two GOAWAYs, marking it closed once the first has gone", async () => {
    const { port, sessions } = await listen(10_000);
    const socket = net.connect(port, "127.0.0.1");
    sockets.push(socket);
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.write(Buffer.concat([PREFACE, frame(SETTINGS, 0, 0), get(1)]));
    await new Promise<void>((resolve) => {
      socket.on("data", () => {
        if (parse(Buffer.concat(chunks)).some((one) => one.type === HEADERS)) resolve();
      });
    });
    const session = sessions[0] as ServerHttp2Session;
    let closedBy: string | undefined;
    const sessionClosed = new Promise<void>((resolve) => session.once("close", () => resolve()));
    session.close(() => {
      closedBy = "callback";
    });
    session.close(); // A second close while the first GOAWAY is on its way changes nothing.
    expect(session.closed).toBe(false);
    await new Promise<void>((resolve) => socket.on("close", () => resolve()));
    await sessionClosed;
    expect(session.closed).toBe(true);
    expect(closedBy).toBe("callback");
    // node's close() sends the second; its destroy() once the stream is done, a third like it.
    expect(goawayLastIds(parse(Buffer.concat(chunks))).slice(0, 2)).toEqual([HIGHEST_STREAM_ID, 1]);
  });

  it("is installed once: a second call does not wrap close() again", async () => {
    const { port, sessions } = await listen(10_000);
    server?.prependListener("session", (session: ServerHttp2Session) => {
      closeOnlyAfterGoaway(session, 10_000, undefined);
    });
    const frames = await exchange(port, Buffer.concat([PREFACE, frame(SETTINGS, 0, 0), clientGoaway()]));
    const lastIds = goawayLastIds(frames);
    expect(lastIds.filter((id) => id === HIGHEST_STREAM_ID)).toHaveLength(1);
    expect(lastIds.slice(0, 2)).toEqual([HIGHEST_STREAM_ID, 0]);
    expect(sessions).toHaveLength(1);
  });

  it("destroys a session whose first GOAWAY cannot leave within graceMs (its peer stopped reading)", async () => {
    const graceMs = 300;
    const { port, sessions } = await listen(graceMs, Buffer.alloc(32 * 1024 * 1024, 0x61));
    const socket = net.connect(port, "127.0.0.1");
    sockets.push(socket);
    // Windows wide open, so the response fills the socket's buffers; then the client never reads.
    const windowSize = Buffer.alloc(6);
    windowSize.writeUInt16BE(0x4, 0);
    windowSize.writeUInt32BE(HIGHEST_STREAM_ID, 2);
    const increment = Buffer.alloc(4);
    increment.writeUInt32BE(HIGHEST_STREAM_ID - 65_535, 0);
    socket.pause();
    socket.write(
      Buffer.concat([
        PREFACE,
        frame(SETTINGS, 0, 0, windowSize),
        frame(WINDOW_UPDATE, 0, 0, increment),
        get(1),
      ]),
    );
    while (sessions.length === 0 || (sessions[0]?.state.outboundQueueSize ?? 0) > 0) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
    const session = sessions[0] as ServerHttp2Session;
    const closedAt = new Promise<number>((resolve) =>
      session.once("close", () => resolve(performance.now())),
    );
    const closeCalledAt = performance.now();
    session.close();
    expect(session.state.outboundQueueSize).toBeGreaterThan(0);
    const waitedMs = (await closedAt) - closeCalledAt;
    expect(session.destroyed).toBe(true);
    expect(waitedMs).toBeGreaterThanOrEqual(graceMs - 5);
    expect(waitedMs).toBeLessThan(graceMs + 5_000);
  });
});
