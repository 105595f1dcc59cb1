/**
 * Every wait of the inbound pipeline is bounded, per stage, HTTP/1 and HTTP/2 alike: each bound is
 * configured small here, the test asserts the hostile connection is closed (or its request answered),
 * and a legitimate client is still served. Time limits below are generous test bounds, not assertions
 * about speed, except where a bound of a few seconds is told apart from the 10 s one a test would
 * otherwise hit.
 */
import http2 from "node:http2";
import type { Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import { Server as GrpcServer } from "@grpc/grpc-js";
import type { ControlPlane } from "@inmesh/control-plane";
import type { IdentityProvider } from "@inmesh/identity";
import { type CompiledServerPolicy, defaultServerPolicy, NOT_LOADED_POLICY } from "@inmesh/policy";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createMeshConnectionInjector, type MeshConnectionInjectorOptions } from "../../../grpc/src/index.js";
import { createMeshServer, type MeshServer, type MeshServerOptions } from "../../src/index.js";
import {
  continuation,
  data,
  Flag,
  FrameType,
  frame,
  get,
  headers,
  PREFACE,
  parseFrames,
  post,
  rstStream,
  settings,
} from "./frames.js";
import {
  h2Request,
  h2Session,
  identityOf,
  meshTlsSocket,
  plainSocket,
  podIdentity,
  podYaml,
  rawHttp1,
  startTestControlPlane,
} from "./support.js";

const FOO = identityOf("foo");

interface Closed {
  readonly elapsedMs: number;
  readonly bytes: Buffer;
}

/** Writes `bytes` (if any) once connected, then resolves when the server closes the connection. */
function untilClosed(
  socket: Socket | TLSSocket,
  bytes?: Buffer,
  tls = false,
  limitMs = 8000,
): Promise<Closed> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`the server kept the connection open for ${limitMs} ms`));
    }, limitMs);
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("error", () => undefined);
    socket.on("close", () => {
      clearTimeout(timer);
      resolve({ elapsedMs: Date.now() - started, bytes: Buffer.concat(chunks) });
    });
    if (bytes !== undefined) socket.once(tls ? "secureConnect" : "connect", () => socket.write(bytes));
  });
}

function goawaySent(bytes: Buffer): boolean {
  return parseFrames(bytes).some((frame) => frame.type === FrameType.GOAWAY);
}

describe("inbound bounds (small configured timeouts)", () => {
  let cp: ControlPlane;
  let identity: IdentityProvider;
  const servers: MeshServer[] = [];
  const sockets: Socket[] = [];

  beforeAll(async () => {
    cp = await startTestControlPlane([
      { path: "pods.yaml", text: podYaml({ name: "foo", sa: "foo", ip: "10.1.0.1" }) },
    ]);
    identity = await podIdentity(cp, "foo", "foo");
  });
  afterEach(async () => {
    for (const socket of sockets.splice(0)) socket.destroy();
    await Promise.all(servers.splice(0).map((server) => server.close()));
  });
  afterAll(async () => {
    await identity?.close();
    await cp?.close();
  });

  async function serve(options: Partial<MeshServerOptions>): Promise<{ server: MeshServer; port: number }> {
    const server = createMeshServer({
      identity,
      policy: defaultServerPolicy("all-unauthenticated"),
      port: 8080,
      drainTimeoutMs: 500,
      handler: (req, res) => {
        req.resume();
        req.on("end", () => res.end("ok"));
      },
      ...options,
    });
    servers.push(server);
    return { server, port: (await server.listen(0, "127.0.0.1")).port };
  }

  /** `grpcServer` behind a mesh server that hands it every HTTP/2 connection; resolves to the port. */
  async function serveGrpc(
    grpcServer: GrpcServer,
    bounds: Pick<
      MeshConnectionInjectorOptions,
      "headersTimeoutMs" | "idleTimeoutMs" | "keepAliveIntervalMs" | "keepAliveTimeoutMs"
    >,
  ): Promise<number> {
    const policy = defaultServerPolicy("all-unauthenticated");
    const injector = createMeshConnectionInjector(grpcServer, { identity, policy, port: 8080, ...bounds });
    return (await serve({ policy, onHttp2Connection: injector.injectConnection })).port;
  }

  async function legitimateHttp1(port: number): Promise<void> {
    const response = await rawHttp1(
      plainSocket({ port }),
      "GET / HTTP/1.1\r\nHost: foo\r\nConnection: close\r\n\r\n",
    );
    expect(response.status).toBe(200);
  }

  async function legitimateHttp2(port: number, tls = false): Promise<void> {
    const socket = tls ? meshTlsSocket({ port }, FOO, cp.trustAnchorsPem) : plainSocket({ port });
    const session = h2Session(socket, `${tls ? "https" : "http"}://foo.test:${port}`);
    try {
      const response = await h2Request(session, { ":method": "POST", ":path": "/" }, "body");
      expect(response.status).toBe(200);
    } finally {
      session.close();
    }
  }

  /** A socket the test closes in afterEach if the server does not. */
  function track<T extends Socket>(socket: T): T {
    sockets.push(socket);
    return socket;
  }

  it("closes a TLS client that completes the handshake and then sends nothing within one detect timeout", async () => {
    // The Server's own detect timeout is 10 s; the connection's bound (600 ms from accept) covers the
    // handshake and the detection after it together.
    const { port } = await serve({ detectTimeoutMs: 600 });
    const socket = track(meshTlsSocket({ port }, FOO, cp.trustAnchorsPem));
    const closed = await untilClosed(socket, undefined, true, 8000);
    expect(closed.bytes.byteLength).toBe(0);
    expect(closed.elapsedMs).toBeLessThan(6000);
    await legitimateHttp2(port, true);
  });

  it("closes a plaintext client that sends nothing at the detect timeout", async () => {
    const { port } = await serve({ detectTimeoutMs: 300 });
    const closed = await untilClosed(track(plainSocket({ port })));
    expect(closed.bytes.byteLength).toBe(0);
    await legitimateHttp1(port);
  });

  it("holds a new connection for the first policy once: its request does not wait again", async () => {
    const waits: number[] = [];
    const source = {
      policyFor: (): CompiledServerPolicy => NOT_LOADED_POLICY,
      waitForPolicy: (_port: number, options?: { timeoutMs?: number }) => {
        waits.push(options?.timeoutMs ?? Number.POSITIVE_INFINITY);
        return new Promise<CompiledServerPolicy>((resolve) =>
          setTimeout(() => resolve(NOT_LOADED_POLICY), options?.timeoutMs ?? 0),
        );
      },
    };
    const { port } = await serve({ policy: source, initialPolicyWaitMs: 400 });
    const response = await rawHttp1(
      plainSocket({ port }),
      "GET / HTTP/1.1\r\nHost: foo\r\nConnection: close\r\n\r\n",
    );
    expect(response.status).toBe(403);
    // The connection waited; whatever its request waited comes out of the same 400 ms.
    expect(waits.length).toBeGreaterThanOrEqual(1);
    expect(waits.reduce((sum, ms) => sum + ms, 0)).toBeLessThanOrEqual(400);
  });

  describe("HTTP/2", () => {
    for (const [name, bytes] of [
      ["nothing after the preface", Buffer.concat([PREFACE])],
      ["the preface and SETTINGS only", Buffer.concat([PREFACE, settings()])],
      [
        "HEADERS without END_HEADERS",
        Buffer.concat([PREFACE, settings(), headers(1, get("/"), { endHeaders: false })]),
      ],
    ] as const) {
      it(`closes a connection with ${name} at the headers timeout (GOAWAY)`, async () => {
        const { port } = await serve({ headersTimeoutMs: 300, http2IdleTimeoutMs: 60_000 });
        const closed = await untilClosed(track(plainSocket({ port })), bytes);
        expect(goawaySent(closed.bytes)).toBe(true);
        await legitimateHttp2(port);
      });
    }

    for (const where of ["with the preface", "after the preface"] as const) {
      it(`closes a rapid-reset connection (HEADERS + RST_STREAM, ${where}) with GOAWAY ENHANCE_YOUR_CALM`, async () => {
        const { port } = await serve({});
        const flood = Buffer.concat(
          Array.from({ length: 400 }, (_, index) =>
            Buffer.concat([headers(2 * index + 1, get("/"), { endStream: true }), rstStream(2 * index + 1)]),
          ),
        );
        const socket = track(plainSocket({ port }));
        let closed: Promise<Closed>;
        if (where === "with the preface") {
          closed = untilClosed(socket, Buffer.concat([PREFACE, settings(), flood]));
        } else {
          closed = untilClosed(socket, Buffer.concat([PREFACE, settings()]));
          await new Promise((resolve) => socket.once("data", resolve));
          socket.write(flood);
        }
        const frames = parseFrames((await closed).bytes);
        const goaway = frames.find((frame) => frame.type === FrameType.GOAWAY);
        expect(goaway?.payload.readUInt32BE(4)).toBe(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
        await legitimateHttp2(port);
      });
    }

    it("answers 408 to a request whose body never ends, and keeps serving the connection", async () => {
      // requestTimeoutMs is never below headersTimeoutMs.
      const { port } = await serve({ headersTimeoutMs: 300, requestTimeoutMs: 400 });
      const session = h2Session(plainSocket({ port }), `http://foo.test:${port}`);
      try {
        const slow = session.request({ ":method": "POST", ":path": "/" });
        slow.write("part of a body that never ends");
        const status = await new Promise<number>((resolve, reject) => {
          slow.on("response", (h) => resolve(Number(h[":status"])));
          slow.on("error", reject);
          slow.on("close", () => reject(new Error(`stream closed with code ${slow.rstCode}`)));
        });
        expect(status).toBe(408);
        const next = await h2Request(session, { ":method": "POST", ":path": "/" }, "body");
        expect(next.status).toBe(200);
      } finally {
        session.close();
      }
    });

    it("resets a stream whose body never ends once the response started", async () => {
      const { port } = await serve({
        headersTimeoutMs: 300,
        requestTimeoutMs: 400,
        onStream: (stream) => stream.respond({ ":status": 200 }),
      });
      const session = h2Session(plainSocket({ port }), `http://foo.test:${port}`);
      try {
        const slow = session.request({ ":method": "POST", ":path": "/" });
        slow.on("error", () => undefined);
        slow.write("x");
        const code = await new Promise<number | undefined>((resolve) =>
          slow.on("close", () => resolve(slow.rstCode)),
        );
        expect(code).toBe(http2.constants.NGHTTP2_CANCEL);
      } finally {
        session.close();
      }
    });

    it("closes an idle session with GOAWAY after the idle timeout", async () => {
      const { port } = await serve({ http2IdleTimeoutMs: 300 });
      const session = h2Session(plainSocket({ port }), `http://foo.test:${port}`);
      const goaway = new Promise<number>((resolve) => session.once("goaway", (code) => resolve(code)));
      const closed = new Promise<void>((resolve) => session.once("close", () => resolve()));
      const response = await h2Request(session, { ":method": "POST", ":path": "/" }, "body");
      expect(response.status).toBe(200);
      expect(await goaway).toBe(http2.constants.NGHTTP2_NO_ERROR);
      await closed;
      await legitimateHttp2(port);
    });

    it("closes a session a protocol error left without a stream, once it has been idle", async () => {
      // DATA on a stream never opened: nghttp2 answers GOAWAY and stops reading, so the client's close
      // would never be seen; the idle bound still frees the connection.
      const { server, port } = await serve({ http2IdleTimeoutMs: 300, headersTimeoutMs: 300 });
      const socket = track(plainSocket({ port }));
      socket.on("error", () => undefined);
      socket.once("connect", () => socket.write(Buffer.concat([PREFACE, settings(), data(3, "x", true)])));
      await new Promise((resolve) => socket.once("data", resolve));
      await new Promise<void>((resolve, reject) => {
        const deadline = Date.now() + 8000;
        const poll = () => {
          if (server.connectionCount === 0) resolve();
          else if (Date.now() > deadline) reject(new Error("the connection was never closed"));
          else setTimeout(poll, 50);
        };
        poll();
      });
      await legitimateHttp2(port);
    });
  });

  it("the grpc-js hand-off closes a connection that sends only the preface, a rapid-reset one, and an idle one", async () => {
    const grpcServer = new GrpcServer();
    const path = "/test.Echo/Call";
    const identityCodec = (value: Buffer) => value;
    grpcServer.addService(
      {
        call: {
          path,
          requestStream: false,
          responseStream: false,
          requestSerialize: identityCodec,
          requestDeserialize: identityCodec,
          responseSerialize: identityCodec,
          responseDeserialize: identityCodec,
        },
      },
      {
        call: (_call: unknown, callback: (error: null, reply: Buffer) => void) =>
          callback(null, Buffer.from("ok")),
      },
    );
    try {
      const port = await serveGrpc(grpcServer, { headersTimeoutMs: 300, idleTimeoutMs: 300 });
      const preface = await untilClosed(track(plainSocket({ port })), Buffer.concat([PREFACE, settings()]));
      expect(goawaySent(preface.bytes)).toBe(true);
      const flood = Buffer.concat(
        Array.from({ length: 400 }, (_, index) =>
          Buffer.concat([
            headers(2 * index + 1, [...post(path), ["content-type", "application/grpc"], ["te", "trailers"]]),
            rstStream(2 * index + 1),
          ]),
        ),
      );
      const reset = await untilClosed(
        track(plainSocket({ port })),
        Buffer.concat([PREFACE, settings(), flood]),
      );
      const goaway = parseFrames(reset.bytes).find((frame) => frame.type === FrameType.GOAWAY);
      expect(goaway?.payload.readUInt32BE(4)).toBe(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
      const session = h2Session(plainSocket({ port }), `http://foo.test:${port}`);
      const closed = new Promise<void>((resolve) => session.once("close", () => resolve()));
      const response = await h2Request(
        session,
        { ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers" },
        "\0\0\0\0\0",
      );
      expect(response.trailers?.["grpc-status"]).toBe("0");
      await closed;
    } finally {
      grpcServer.forceShutdown();
    }
  });

  describe("HTTP/2 keep-alive", () => {
    const KEEP_ALIVE = { http2KeepAliveIntervalMs: 200, http2KeepAliveTimeoutMs: 200 };

    it("closes a session nghttp2 ended on a protocol error while a request was open", async () => {
      // On Node 20 node stops reading such a session's socket: without keep-alive it stayed open, its
      // stream with it, until the process exited (the request timeout cannot even reset the stream).
      const { port } = await serve({ ...KEEP_ALIVE, headersTimeoutMs: 60_000, requestTimeoutMs: 60_000 });
      const bytes = Buffer.concat([
        PREFACE,
        settings(),
        headers(1, post("/"), { endStream: false }),
        continuation(1, [["x-after", "end-headers"]], true),
      ]);
      const closed = await untilClosed(track(plainSocket({ port })), bytes);
      expect(closed.elapsedMs).toBeLessThan(4000);
      await legitimateHttp2(port);
    });

    /** grpc-js behind the injector with `bounds`; resolves once the server closed a connection sent `bytes`. */
    async function grpcClosed(bounds: Parameters<typeof serveGrpc>[1], bytes: Buffer): Promise<Closed> {
      const grpcServer = new GrpcServer();
      try {
        const port = await serveGrpc(grpcServer, bounds);
        return await untilClosed(track(plainSocket({ port })), bytes);
      } finally {
        grpcServer.forceShutdown();
      }
    }

    it("closes a grpc-js session nghttp2 ended on a protocol error while a call was open", async () => {
      const call = [
        ...post("/test.Echo/Call"),
        ["content-type", "application/grpc"],
        ["te", "trailers"],
      ] as const;
      const closed = await grpcClosed(
        {
          headersTimeoutMs: 60_000,
          idleTimeoutMs: 60_000,
          keepAliveIntervalMs: KEEP_ALIVE.http2KeepAliveIntervalMs,
          keepAliveTimeoutMs: KEEP_ALIVE.http2KeepAliveTimeoutMs,
        },
        Buffer.concat([
          PREFACE,
          settings(),
          headers(1, call, { endStream: false }),
          continuation(1, [["x-after", "end-headers"]], true),
        ]),
      );
      expect(closed.elapsedMs).toBeLessThan(4000);
    });

    // Keep-alive off and every timeout at a minute: what closes these within seconds is the sweep noticing
    // that nghttp2 is done with the session (Node 24 closes them itself; Node 20 held them until a timeout).
    const UNBOUNDED = {
      http2KeepAliveIntervalMs: 0,
      headersTimeoutMs: 60_000,
      requestTimeoutMs: 60_000,
      http2IdleTimeoutMs: 60_000,
    };
    const protocolErrors = [
      ["a SETTINGS acknowledgement with a payload", frame(FrameType.SETTINGS, Flag.ACK, 0, Buffer.alloc(6))],
      ["a CONTINUATION with no HEADERS before it", continuation(1, [["x-stray", "continuation"]], true)],
      [
        "a CONTINUATION after a complete header block, with a request open",
        Buffer.concat([
          headers(1, post("/"), { endStream: false }),
          continuation(1, [["x-after", "end-headers"]], true),
        ]),
      ],
    ] as const;
    for (const [what, bad] of protocolErrors) {
      it(`closes a session nghttp2 ended on ${what}, with keep-alive off`, async () => {
        const { port } = await serve(UNBOUNDED);
        const closed = await untilClosed(
          track(plainSocket({ port })),
          Buffer.concat([PREFACE, settings(), bad]),
        );
        expect(goawaySent(closed.bytes)).toBe(true);
        expect(closed.elapsedMs).toBeLessThan(4000);
        await legitimateHttp2(port);
      });
    }

    it("closes a grpc-js session nghttp2 ended on a protocol error, with keep-alive off", async () => {
      const closed = await grpcClosed(
        { headersTimeoutMs: 60_000, idleTimeoutMs: 60_000, keepAliveIntervalMs: 0 },
        Buffer.concat([PREFACE, settings(), frame(FrameType.SETTINGS, Flag.ACK, 0, Buffer.alloc(6))]),
      );
      expect(closed.elapsedMs).toBeLessThan(4000);
    });

    it("closes a connection whose peer does not answer its PING", async () => {
      const { port } = await serve({ ...KEEP_ALIVE, http2IdleTimeoutMs: 60_000 });
      const bytes = Buffer.concat([PREFACE, settings(), headers(1, get("/"), { endStream: true })]);
      const closed = await untilClosed(track(plainSocket({ port })), bytes);
      const frames = parseFrames(closed.bytes);
      expect(frames.some((frame) => frame.type === FrameType.HEADERS)).toBe(true);
      expect(frames.some((frame) => frame.type === FrameType.PING)).toBe(true);
      expect(closed.elapsedMs).toBeLessThan(4000);
    });

    for (const tls of [false, true]) {
      it(`keeps an idle connection whose peer answers, and serves it again${tls ? " (mesh TLS)" : ""}`, async () => {
        const { port } = await serve({ http2KeepAliveIntervalMs: 100, http2KeepAliveTimeoutMs: 100 });
        const socket = track(tls ? meshTlsSocket({ port }, FOO, cp.trustAnchorsPem) : plainSocket({ port }));
        const session = h2Session(socket, `${tls ? "https" : "http"}://foo.test:${port}`);
        let pings = 0;
        session.on("ping", () => {
          pings += 1;
        });
        try {
          expect((await h2Request(session, { ":method": "POST", ":path": "/" }, "one")).status).toBe(200);
          await new Promise((resolve) => setTimeout(resolve, 1000));
          expect(session.closed || session.destroyed).toBe(false);
          expect(pings).toBeGreaterThanOrEqual(2);
          expect((await h2Request(session, { ":method": "POST", ":path": "/" }, "two")).status).toBe(200);
        } finally {
          session.close();
        }
      });
    }

    it("refuses a negative interval and a zero timeout (0 turns keep-alive off)", () => {
      const withKeepAlive = (keepAlive: Partial<MeshServerOptions>) => () =>
        createMeshServer({
          identity,
          policy: defaultServerPolicy("deny"),
          port: 1,
          handler: () => undefined,
          ...keepAlive,
        });
      expect(withKeepAlive({ http2KeepAliveIntervalMs: -1 })).toThrow(/http2KeepAliveIntervalMs/);
      expect(withKeepAlive({ http2KeepAliveTimeoutMs: 0 })).toThrow(/http2KeepAliveTimeoutMs/);
      const injector = (keepAlive: Partial<MeshConnectionInjectorOptions>) => () =>
        createMeshConnectionInjector(new GrpcServer(), {
          identity,
          policy: defaultServerPolicy("deny"),
          port: 1,
          ...keepAlive,
        });
      expect(injector({ keepAliveIntervalMs: -1 })).toThrow(/keepAliveIntervalMs/);
      expect(injector({ keepAliveTimeoutMs: 0 })).toThrow(/keepAliveTimeoutMs/);
      expect(injector({ keepAliveIntervalMs: 0 })).not.toThrow();
    });
  });

  describe("connection cap", () => {
    it("a new connection reaps the oldest one still in detection", async () => {
      const { server, port } = await serve({ maxConnections: 3, detectTimeoutMs: 60_000 });
      const silent = [0, 1, 2].map(() => track(plainSocket({ port })));
      await Promise.all(silent.map((socket) => new Promise((resolve) => socket.once("connect", resolve))));
      const firstClosed = untilClosed(silent[0] as Socket);
      await legitimateHttp1(port);
      await firstClosed;
      expect(server.connectionCount).toBeLessThanOrEqual(3);
    });

    it("a new connection reaps an idle HTTP/2 session before a busy one", async () => {
      const { port } = await serve({ maxConnections: 3, headersTimeoutMs: 60_000, requestTimeoutMs: 60_000 });
      // One connection with a request in progress, then two that sent only the preface and SETTINGS.
      const busy = h2Session(track(plainSocket({ port })), `http://foo.test:${port}`);
      const upload = busy.request({ ":method": "POST", ":path": "/" });
      upload.on("error", () => undefined);
      upload.write("still uploading");
      await new Promise((resolve) => setTimeout(resolve, 100));
      const idle = [0, 1].map(() => track(plainSocket({ port })));
      const idleClosed = idle.map((socket) => untilClosed(socket, Buffer.concat([PREFACE, settings()])));
      await new Promise((resolve) => setTimeout(resolve, 200));
      await legitimateHttp1(port);
      await Promise.race(idleClosed);
      expect(busy.closed || busy.destroyed).toBe(false);
      busy.destroy();
    });

    it("a new connection reaps one that never finished a request before an idle one that did", async () => {
      const { port } = await serve({
        maxConnections: 3,
        headersTimeoutMs: 60_000,
        http2IdleTimeoutMs: 60_000,
      });
      // The oldest connection has served a request and is idle; two newer ones sent only the preface.
      const served = h2Session(track(plainSocket({ port })), `http://foo.test:${port}`);
      expect((await h2Request(served, { ":method": "POST", ":path": "/" }, "one")).status).toBe(200);
      const holders = [0, 1].map(() => track(plainSocket({ port })));
      const holdersClosed = holders.map((socket) =>
        untilClosed(socket, Buffer.concat([PREFACE, settings()])),
      );
      await new Promise((resolve) => setTimeout(resolve, 200));
      await legitimateHttp1(port);
      await Promise.race(holdersClosed);
      expect((await h2Request(served, { ":method": "POST", ":path": "/" }, "two")).status).toBe(200);
      served.close();
    });

    it("a new connection gets in even when every slot holds a request in progress", async () => {
      const { port } = await serve({ maxConnections: 2, requestTimeoutMs: 60_000 });
      const uploads = [0, 1].map(() => {
        const socket = track(plainSocket({ port }));
        socket.on("error", () => undefined);
        socket.once("connect", () =>
          socket.write("POST / HTTP/1.1\r\nHost: foo\r\nContent-Length: 1000000\r\n\r\nstarted"),
        );
        return socket;
      });
      await new Promise((resolve) => setTimeout(resolve, 200));
      await legitimateHttp1(port);
      for (const socket of uploads) socket.destroy();
    });
  });

  describe("HTTP/1 keep-alive", () => {
    const request = Buffer.from("GET / HTTP/1.1\r\nHost: foo\r\n\r\n", "latin1");

    for (const tls of [false, true]) {
      it(`closes a connection idle after its response at the keep-alive timeout, not before${tls ? " (mesh TLS)" : ""}`, async () => {
        const { port } = await serve({ keepAliveTimeoutMs: 1500 });
        const socket = track(tls ? meshTlsSocket({ port }, FOO, cp.trustAnchorsPem) : plainSocket({ port }));
        const closed = await untilClosed(socket, request, tls);
        const response = closed.bytes.toString("latin1");
        expect(response).toMatch(/^HTTP\/1\.1 200/);
        // Still advertised to clients, as node:http does for its own keepAliveTimeout.
        expect(response).toMatch(/\r\nKeep-Alive: timeout=1\r\n/i);
        expect(closed.elapsedMs).toBeGreaterThanOrEqual(1400);
        await legitimateHttp1(port);
      });
    }

    it("does not close a connection whose request takes longer than the keep-alive timeout", async () => {
      const { port } = await serve({
        keepAliveTimeoutMs: 200,
        handler: (_req, res) => {
          setTimeout(() => res.end("late"), 900);
        },
      });
      const response = await rawHttp1(track(plainSocket({ port })), request.toString("latin1"));
      expect(response.status).toBe(200);
    });

    it("closes a connection that starts a next request and stalls, without waiting for the headers timeout", async () => {
      const { port } = await serve({ keepAliveTimeoutMs: 300, headersTimeoutMs: 30_000 });
      const socket = track(plainSocket({ port }));
      const closing = untilClosed(socket, request);
      await new Promise((resolve) => setTimeout(resolve, 150));
      socket.write("GET / HTTP/1.1\r\nHost: f");
      const closed = await closing;
      expect(closed.bytes.toString("latin1")).toMatch(/^HTTP\/1\.1 200/);
      expect(closed.elapsedMs).toBeLessThan(6000);
      await legitimateHttp1(port);
    });
  });

  it("HTTP/1: closes a client that never finishes its headers at the headers timeout", async () => {
    const { port } = await serve({ headersTimeoutMs: 300 });
    const closed = await untilClosed(
      track(plainSocket({ port })),
      Buffer.from("GET / HTTP/1.1\r\nHost: foo\r\n"),
    );
    expect(closed.bytes.toString("latin1")).toMatch(/^HTTP\/1\.1 408/);
    await legitimateHttp1(port);
  });
});
