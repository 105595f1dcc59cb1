/**
 * Hostile HTTP/2 frame sequences, hand-built and written with the preface in one segment (so they reach
 * nghttp2 together with the bytes read during detection), on every way the mesh server serves HTTP/2:
 * the HTTP/1 handler through the downgrade bridge, `onStream`, `http2Compat`, and the `onHttp2Connection`
 * hand-off to grpc-js. None may reach an unhandled error; a legitimate client is served afterwards.
 */
import type { Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import { Server as GrpcServer } from "@grpc/grpc-js";
import type { ControlPlane } from "@inmesh/control-plane";
import type { IdentityProvider } from "@inmesh/identity";
import { defaultServerPolicy } from "@inmesh/policy";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createMeshConnectionInjector } from "../../../grpc/src/index.js";
import { createMeshServer, type MeshServer, type MeshServerOptions } from "../../src/index.js";
import {
  continuation,
  data,
  FrameType,
  get,
  headers,
  PREFACE,
  parseFrames,
  ping,
  post,
  rstStream,
  settings,
  windowUpdate,
} from "./frames.js";
import {
  h2Request,
  h2Session,
  identityOf,
  meshTlsSocket,
  plainSocket,
  podIdentity,
  podYaml,
  startTestControlPlane,
} from "./support.js";

const FOO = identityOf("foo");
const GRPC_PATH = "/test.Echo/Call";
const GRPC = [
  ["content-type", "application/grpc"],
  ["te", "trailers"],
] as const;

/** Each sequence follows the preface and an empty SETTINGS frame in the same write. */
const SEQUENCES: Record<string, (grpc: boolean) => Buffer[]> = {
  "DATA longer than content-length": (grpc) => [
    headers(1, post(grpc ? GRPC_PATH : "/", [...(grpc ? GRPC : []), ["content-length", "1"]])),
    data(1, "hello", true),
  ],
  "DATA shorter than content-length": (grpc) => [
    headers(1, post(grpc ? GRPC_PATH : "/", [...(grpc ? GRPC : []), ["content-length", "10"]])),
    data(1, "ab", true),
  ],
  "content-length on an unknown path and content-type, exceeded": () => [
    headers(1, post("/nope", [["content-length", "1"]])),
    data(1, "hello", true),
  ],
  "DATA after END_STREAM": (grpc) => [
    headers(1, get(grpc ? GRPC_PATH : "/", grpc ? [...GRPC] : []), { endStream: true }),
    data(1, "x", true),
  ],
  "DATA on a stream never opened": () => [data(3, "x", true)],
  "HEADERS, RST_STREAM, then DATA": (grpc) => [
    headers(1, post(grpc ? GRPC_PATH : "/", grpc ? [...GRPC] : [])),
    rstStream(1),
    data(1, "x", true),
  ],
  "non-numeric content-length": (grpc) => [
    headers(1, post(grpc ? GRPC_PATH : "/", [...(grpc ? GRPC : []), ["content-length", "abc"]])),
    data(1, "x", true),
  ],
  "stream window overflow": (grpc) => [
    headers(1, post(grpc ? GRPC_PATH : "/", grpc ? [...GRPC] : [])),
    windowUpdate(1, 0x7fffffff),
    windowUpdate(1, 0x7fffffff),
  ],
  "CONTINUATION on another stream": () => [
    headers(1, post("/"), { endHeaders: false }),
    continuation(3, [["x", "y"]], true),
  ],
  "even stream id": () => [headers(2, get("/"), { endStream: true })],
  "upper-case header name": () => [headers(1, get("/", [["X-Upper", "1"]]), { endStream: true })],
  "many resets then excess DATA": (grpc) =>
    Array.from({ length: 20 }, (_, index) => {
      const id = 2 * index + 1;
      return Buffer.concat([
        headers(id, post(grpc ? GRPC_PATH : "/", [...(grpc ? GRPC : []), ["content-length", "1"]])),
        data(id, "xyz", true),
      ]);
    }),
};

type Mode = "handler" | "onStream" | "http2Compat" | "onHttp2Connection";

interface Outcome {
  readonly closed: boolean;
  readonly resets: number;
  readonly goaway: boolean;
  /** The server answered the PING that ends every sequence: it processed everything before it. */
  readonly pingAck: boolean;
}

/** Writes the bytes once the connection is up; resolves once the server answered the final PING, sent GOAWAY or closed. */
function attack(socket: Socket | TLSSocket, bytes: Buffer, tls: boolean): Promise<Outcome> {
  return new Promise((resolve) => {
    let received = Buffer.alloc(0);
    let settled = false;
    const finish = (closed: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      const frames = parseFrames(received);
      socket.destroy();
      resolve({
        closed,
        resets: frames.filter((f) => f.type === FrameType.RST_STREAM).length,
        goaway: frames.some((f) => f.type === FrameType.GOAWAY),
        pingAck: frames.some((f) => f.type === FrameType.PING && (f.flags & 1) === 1),
      });
    };
    // A bound for the test, not an assertion: the outcome below says whether the server reacted.
    const timer = setTimeout(() => finish(false), 5000);
    socket.on("data", (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      const frames = parseFrames(received);
      if (
        frames.some((f) => f.type === FrameType.GOAWAY || (f.type === FrameType.PING && (f.flags & 1) === 1))
      ) {
        // Let the rest of the server's reaction (other resets, a GOAWAY) arrive and be processed too.
        setTimeout(() => finish(false), 50);
      }
    });
    socket.on("error", () => undefined);
    socket.on("close", () => finish(true));
    socket.once(tls ? "secureConnect" : "connect", () => socket.write(bytes));
  });
}

describe("hostile HTTP/2 frame sequences after the preface reach no unhandled error", () => {
  let cp: ControlPlane;
  let identity: IdentityProvider;
  const servers: MeshServer[] = [];
  const cleanups: (() => void)[] = [];
  const uncaught: unknown[] = [];
  const onUncaught = (error: unknown) => uncaught.push(error);

  beforeAll(async () => {
    process.on("uncaughtException", onUncaught);
    cp = await startTestControlPlane([
      { path: "pods.yaml", text: podYaml({ name: "foo", sa: "foo", ip: "10.1.0.1" }) },
    ]);
    identity = await podIdentity(cp, "foo", "foo");
  });
  afterEach(async () => {
    await Promise.all(servers.splice(0).map((server) => server.close()));
    for (const cleanup of cleanups.splice(0)) cleanup();
  });
  afterAll(async () => {
    process.removeListener("uncaughtException", onUncaught);
    await identity?.close();
    await cp?.close();
  });

  async function serve(mode: Mode): Promise<number> {
    // Connections a protocol error left half-dead are closed by the idle bounds (see bounds.test.ts),
    // not by this test's drain.
    const base = {
      identity,
      policy: defaultServerPolicy("all-unauthenticated"),
      port: 8080,
      drainTimeoutMs: 500,
    };
    let options: MeshServerOptions;
    if (mode === "onHttp2Connection") {
      const grpcServer = new GrpcServer();
      grpcServer.addService(
        {
          call: {
            path: GRPC_PATH,
            requestStream: false,
            responseStream: false,
            requestSerialize: (value: Buffer) => value,
            requestDeserialize: (value: Buffer) => value,
            responseSerialize: (value: Buffer) => value,
            responseDeserialize: (value: Buffer) => value,
          },
        },
        {
          call: (_call: unknown, callback: (error: null, reply: Buffer) => void) =>
            callback(null, Buffer.from("ok")),
        },
      );
      const injector = createMeshConnectionInjector(grpcServer, base);
      cleanups.push(() => grpcServer.forceShutdown());
      options = { ...base, onHttp2Connection: injector.injectConnection };
    } else if (mode === "onStream") {
      options = {
        ...base,
        onStream: (stream) => {
          stream.respond({ ":status": 200 });
          stream.end("ok");
        },
      };
    } else {
      options = {
        ...base,
        http2Compat: mode === "http2Compat",
        handler: (req, res) => {
          req.resume();
          req.on("end", () => res.end("ok"));
        },
      };
    }
    const server = createMeshServer(options);
    servers.push(server);
    return (await server.listen(0, "127.0.0.1")).port;
  }

  async function legitimateRequest(port: number, mode: Mode, tls: boolean): Promise<void> {
    const socket = tls ? meshTlsSocket({ port }, FOO, cp.trustAnchorsPem) : plainSocket({ port });
    const session = h2Session(socket, `${tls ? "https" : "http"}://foo.test:${port}`);
    try {
      if (mode === "onHttp2Connection") {
        const response = await h2Request(
          session,
          { ":method": "POST", ":path": GRPC_PATH, "content-type": "application/grpc", te: "trailers" },
          "\0\0\0\0\0",
        );
        expect(response.trailers?.["grpc-status"] ?? response.headers["grpc-status"]).toBe("0");
      } else {
        const response = await h2Request(session, { ":method": "POST", ":path": "/" }, "body");
        expect(response.status).toBe(200);
        expect(response.body).toBe("ok");
      }
    } finally {
      session.close();
    }
  }

  const modes: Mode[] = ["handler", "onStream", "http2Compat", "onHttp2Connection"];
  for (const tls of [false, true]) {
    for (const mode of modes) {
      it(`${tls ? "mesh TLS without a client certificate" : "plaintext"}, ${mode}`, async () => {
        const port = await serve(mode);
        const grpc = mode === "onHttp2Connection";
        for (const [name, sequence] of Object.entries(SEQUENCES)) {
          const socket = tls ? meshTlsSocket({ port }, FOO, cp.trustAnchorsPem) : plainSocket({ port });
          const outcome = await attack(
            socket,
            Buffer.concat([PREFACE, settings(), ...sequence(grpc), ping()]),
            tls,
          );
          expect(
            outcome.closed || outcome.goaway || outcome.pingAck,
            `${name}: the server answered the PING, sent GOAWAY or closed`,
          ).toBe(true);
          await new Promise((resolve) => setImmediate(resolve));
          expect(uncaught, name).toEqual([]);
        }
        await legitimateRequest(port, mode, tls);
        expect(uncaught).toEqual([]);
      });
    }
  }
});
