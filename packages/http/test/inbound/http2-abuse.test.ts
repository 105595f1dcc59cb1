/**
 * The rapid-reset bounds of the HTTP/2 stage, on a real node:http2 server: a stream the client resets
 * in the same read never reaches the handler, and reset budgets are shared by every session of one
 * client address, bounded in how many addresses they remember.
 */
import http2, { type ServerHttp2Stream } from "node:http2";
import net from "node:net";
import { createResetBudgets, createStreamAdmission } from "@inmesh/core/http2-abuse";
import { afterEach, describe, expect, it } from "vitest";
import { FrameType, get, headers, PREFACE, parseFrames, rstStream, settings } from "./frames.js";

const closers: (() => void)[] = [];
afterEach(() => {
  for (const close of closers.splice(0)) close();
});

async function admittingServer(): Promise<{ port: number; handled: number[] }> {
  const handled: number[] = [];
  const admission = createStreamAdmission();
  const server = http2.createServer();
  server.on("stream", (stream: ServerHttp2Stream) => {
    stream.on("error", () => undefined);
    admission.admit(stream, () => {
      handled.push(stream.id ?? 0);
      stream.respond({ ":status": 200 }, { endStream: true });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  closers.push(() => server.close());
  return { port: (server.address() as net.AddressInfo).port, handled };
}

/** Writes `bytes` and collects what the server sends until `untilFrames` says enough (or 3 s pass). */
function exchange(port: number, bytes: Buffer, enough: (bytes: Buffer) => boolean): Promise<Buffer> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: "127.0.0.1", port });
    closers.push(() => socket.destroy());
    const chunks: Buffer[] = [];
    const done = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(Buffer.concat(chunks));
    };
    const timer = setTimeout(done, 3000);
    socket.on("error", () => undefined);
    socket.on("data", (chunk: Buffer) => {
      chunks.push(chunk);
      if (enough(Buffer.concat(chunks))) done();
    });
    socket.on("close", done);
    socket.once("connect", () => socket.write(bytes));
  });
}

const answered = (streamId: number) => (bytes: Buffer) =>
  parseFrames(bytes).some((frame) => frame.type === FrameType.HEADERS && frame.streamId === streamId);

describe("stream admission", () => {
  it("never runs the handler of a stream reset in the same read, and serves the stream after it", async () => {
    const { port, handled } = await admittingServer();
    const pairs = Array.from({ length: 100 }, (_, index) =>
      Buffer.concat([headers(2 * index + 1, get("/"), { endStream: true }), rstStream(2 * index + 1)]),
    );
    const bytes = await exchange(
      port,
      Buffer.concat([PREFACE, settings(), ...pairs, headers(201, get("/"), { endStream: true })]),
      answered(201),
    );
    expect(answered(201)(bytes)).toBe(true);
    expect(handled).toEqual([201]);
  });

  it("runs the handler of every stream that is still open", async () => {
    const { port, handled } = await admittingServer();
    const requests = Array.from({ length: 20 }, (_, index) =>
      headers(2 * index + 1, get("/"), { endStream: true }),
    );
    await exchange(port, Buffer.concat([PREFACE, settings(), ...requests]), answered(39));
    expect(handled).toEqual(Array.from({ length: 20 }, (_, index) => 2 * index + 1));
  });
});

describe("reset budgets", () => {
  const options = {
    sessionBurst: 5,
    sessionRefillPerSecond: 1,
    addressBurst: 8,
    addressRefillPerSecond: 1,
    maxAddresses: 3,
  };

  it("refuses a session past its own burst", () => {
    const session = createResetBudgets(options).forSession("10.0.0.1");
    const allowed = Array.from({ length: 7 }, () => session.reset());
    expect(allowed).toEqual([true, true, true, true, true, false, false]);
  });

  it("shares one budget between the sessions of an address: reconnecting gets no fresh burst", () => {
    const budgets = createResetBudgets(options);
    const first = budgets.forSession("10.0.0.1");
    for (let index = 0; index < 5; index += 1) expect(first.reset()).toBe(true);
    const second = budgets.forSession("10.0.0.1");
    expect([second.reset(), second.reset(), second.reset(), second.reset()]).toEqual([
      true,
      true,
      true,
      false,
    ]);
    // Another address has its own.
    expect(budgets.forSession("10.0.0.2").reset()).toBe(true);
  });

  it("remembers at most maxAddresses, forgetting the one idle longest", () => {
    const budgets = createResetBudgets(options);
    for (const address of ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]) {
      budgets.forSession(address).reset();
    }
    expect(budgets.addresses).toBe(3);
  });
});
