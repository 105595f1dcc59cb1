/**
 * The downgrade contract: how the mesh server (default `http2Compat: false`) serves HTTP/2 requests, as
 * Linkerd sidecars send them (prior knowledge, `l5d-orig-proto: HTTP/1.1`), to a plain HTTP/1
 * `handler(req: IncomingMessage, res: ServerResponse)`. End to end, real servers and node:http2 clients
 * on loopback. The gaps an earlier in-memory HTTP/1 bridge had are pinned here too: repeated headers kept
 * apart, request trailers, 100-continue, a cancelled upload seen as aborted, res.setTimeout(), and an
 * unread body that must not hold the connection's flow-control window.
 */
import { randomBytes } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import {
  type ClientHttp2Session,
  type ClientHttp2Stream,
  constants as h2constants,
  type IncomingHttpHeaders,
  type OutgoingHttpHeaders,
} from "node:http2";
import type { Socket } from "node:net";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import type { ControlPlane } from "@inmesh/control-plane";
import type { IdentityProvider } from "@inmesh/identity";
import { defaultServerPolicy } from "@inmesh/policy";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createMeshServer, type MeshServer } from "../../src/index.js";
import { data, headers, PREFACE, post, rstStream, settings } from "./frames.js";
import {
  type ClientCredentials,
  clientCredentials,
  eventually,
  h2Session,
  identityOf,
  meshTlsSocket,
  plainSocket,
  podIdentity,
  podYaml,
  startTestControlPlane,
} from "./support.js";

const FOO = identityOf("foo");
const BAR = identityOf("bar");
/** What a Linkerd client proxy adds to an HTTP/1 request it upgraded to HTTP/2. */
const H11 = { "l5d-orig-proto": "HTTP/1.1" } as const;

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

/** How one HTTP/2 exchange ended, as the client saw it (never rejects on a stream error: records it). */
interface Exchange {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
  readonly trailers: IncomingHttpHeaders | undefined;
  /** The response ended with its HEADERS frame. */
  readonly headersOnly: boolean;
  /** The response body ended (END_STREAM), rather than the stream being reset. */
  readonly ended: boolean;
  readonly error: Error | undefined;
  readonly rstCode: number | undefined;
}

/**
 * Collects a client stream's response until the stream closes (or, with `until: "end"`, until the response
 * body ended, whatever the request side still does). With `hold`, the body is read only once it settles
 * (the stream's flow-control window then fills up and the server has to wait).
 */
function settle(
  stream: ClientHttp2Stream,
  options: { timeoutMs?: number | undefined; hold?: Promise<unknown>; until?: "close" | "end" } = {},
) {
  return new Promise<Exchange>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let status = 0;
    let headers: IncomingHttpHeaders = {};
    let trailers: IncomingHttpHeaders | undefined;
    let headersOnly = false;
    let ended = false;
    let error: Error | undefined;
    const timer = setTimeout(() => {
      stream.close(h2constants.NGHTTP2_CANCEL);
      reject(new Error(`HTTP/2 exchange not finished within ${options.timeoutMs ?? 5000} ms`));
    }, options.timeoutMs ?? 5000);
    stream.on("response", (h, flags) => {
      headers = h;
      status = Number(h[":status"]);
      headersOnly = (flags & h2constants.NGHTTP2_FLAG_END_STREAM) !== 0;
    });
    stream.on("trailers", (t) => {
      trailers = t;
    });
    const read = () => {
      stream.on("data", (chunk: Buffer) => chunks.push(chunk));
      // Before `done` (registered later, also on 'end' with until: "end").
      stream.prependListener("end", () => {
        ended = true;
      });
    };
    if (options.hold === undefined) read();
    else void options.hold.then(read);
    stream.on("error", (e) => {
      error = e;
    });
    const done = () => {
      clearTimeout(timer);
      resolve({
        status,
        headers,
        body: Buffer.concat(chunks),
        trailers,
        headersOnly,
        ended,
        error,
        rstCode: stream.rstCode,
      });
    };
    stream.on(options.until === "end" ? "end" : "close", done);
  });
}

/** One request: GET without a body, POST with one (unless `:method` says otherwise). */
function send(
  session: ClientHttp2Session,
  headers: OutgoingHttpHeaders,
  body?: Buffer | string,
  timeoutMs?: number,
): Promise<Exchange> {
  const stream = session.request(
    { ":method": body === undefined ? "GET" : "POST", ...headers },
    { endStream: body === undefined },
  );
  const exchange = settle(stream, { timeoutMs });
  if (body !== undefined) stream.end(body);
  return exchange;
}

/**
 * Starts a POST, sends 8 KiB of its body, and once the handler got some of it (`receiving`) resets the
 * stream with CANCEL, as a client giving up on an upload does.
 */
async function cancelMidBody(session: ClientHttp2Session, receiving: Promise<void>): Promise<Exchange> {
  const stream = session.request({ ":method": "POST", ":path": "/upload", ...H11 }, { endStream: false });
  const exchange = settle(stream);
  stream.write(pattern(8 * 1024, 1));
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      receiving,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error("the handler got no body")), 5000);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
  stream.close(h2constants.NGHTTP2_CANCEL);
  return exchange;
}

/** Reads a request body (via 'data'), then calls back with it. */
function readBody(req: IncomingMessage, done: (body: Buffer) => void): void {
  const chunks: Buffer[] = [];
  req.on("data", (chunk: Buffer) => chunks.push(chunk));
  req.on("end", () => done(Buffer.concat(chunks)));
}

const echoBody: Handler = (req, res) =>
  readBody(req, (body) => {
    res.setHeader("content-type", "application/octet-stream");
    res.end(body);
  });

/** `[name, value]` pairs of a raw header list whose (lower-cased) name is `name`. */
function rawValues(rawHeaders: readonly string[], name: string): string[] {
  const values: string[] = [];
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    if (rawHeaders[i]?.toLowerCase() === name) values.push(rawHeaders[i + 1] ?? "");
  }
  return values;
}

function rawNames(rawHeaders: readonly string[]): string[] {
  return rawHeaders.filter((_, i) => i % 2 === 0).map((name) => name.toLowerCase());
}

/** Deterministic distinct bytes: `length` bytes seeded by `seed`. */
function pattern(length: number, seed: number): Buffer {
  const bytes = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) bytes[i] = (seed * 131 + i * 7 + (i >> 8)) & 0xff;
  return bytes;
}

/**
 * A handler that answers `/next`, and for any other request records what its req and res report while
 * the client uploads; `receiving` settles on the upload's first bytes.
 */
function watchUpload(): {
  readonly events: {
    aborted: boolean;
    ended: boolean;
    reqClosed: boolean;
    resClosed: boolean;
    complete?: boolean;
  };
  readonly receiving: Promise<void>;
  readonly handler: Handler;
} {
  const events: {
    aborted: boolean;
    ended: boolean;
    reqClosed: boolean;
    resClosed: boolean;
    complete?: boolean;
  } = {
    aborted: false,
    ended: false,
    reqClosed: false,
    resClosed: false,
  };
  let gotData: (() => void) | undefined;
  const receiving = new Promise<void>((resolve) => {
    gotData = resolve;
  });
  const handler: Handler = (req, res) => {
    if (req.url === "/next") {
      res.end("next");
      return;
    }
    req.on("data", () => gotData?.());
    req.on("end", () => {
      events.ended = true;
    });
    req.on("error", () => undefined);
    req.on("aborted", () => {
      events.aborted = true;
      events.complete = req.complete;
    });
    req.on("close", () => {
      events.reqClosed = true;
      events.complete ??= req.complete;
    });
    res.on("close", () => {
      events.resClosed = true;
    });
  };
  return { events, receiving, handler };
}

describe("createMeshServer: HTTP/2 requests served to an HTTP/1 handler (downgrade contract)", () => {
  let cp: ControlPlane;
  let identity: IdentityProvider;
  let bar: ClientCredentials;
  const servers: MeshServer[] = [];
  const sessions: ClientHttp2Session[] = [];

  beforeAll(async () => {
    cp = await startTestControlPlane([
      { path: "pods.yaml", text: podYaml({ name: "foo", sa: "foo", ip: "10.1.0.1" }) },
    ]);
    identity = await podIdentity(cp, "foo", "foo");
    bar = await clientCredentials(cp, "bar");
  });
  afterEach(async () => {
    for (const session of sessions.splice(0)) session.destroy();
    await Promise.all(servers.splice(0).map((server) => server.close()));
  });
  afterAll(async () => {
    await identity?.close();
    await cp?.close();
  });

  async function serve(handler: Handler): Promise<number> {
    const server = createMeshServer({
      identity,
      policy: defaultServerPolicy("all-unauthenticated"),
      port: 8080,
      handler,
      drainTimeoutMs: 2000,
    });
    servers.push(server);
    return (await server.listen(0, "127.0.0.1")).port;
  }

  /** Prior-knowledge HTTP/2 over mesh TLS, with bar's client certificate (from 127.0.0.2). */
  function mtls(port: number): { session: ClientHttp2Session; socket: Socket } {
    const socket = meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, bar);
    const session = h2Session(socket, `https://${FOO}:${port}`);
    sessions.push(session);
    return { session, socket };
  }

  /** Prior-knowledge HTTP/2 in plaintext (h2c, from 127.0.0.2). */
  function h2c(port: number): { session: ClientHttp2Session; socket: Socket } {
    const socket = plainSocket({ port });
    const session = h2Session(socket, `http://127.0.0.1:${port}`);
    sessions.push(session);
    return { session, socket };
  }

  // ---------- 1. what the handler sees ----------

  it("hands the handler an HTTP/1.1 request: method, url with query, host = :authority, no pseudo-headers or l5d-orig-proto, verified l5d-client-id, split cookies joined, the real connection's addresses", async () => {
    let seen: Record<string, unknown> | undefined;
    const port = await serve((req, res) => {
      const socket = req.socket as Socket & { encrypted?: boolean };
      readBody(req, (body) => {
        seen = {
          method: req.method,
          url: req.url,
          httpVersion: req.httpVersion,
          headers: { ...req.headers },
          rawHeaders: [...req.rawHeaders],
          distinctClientId: req.headersDistinct["l5d-client-id"],
          body: body.toString(),
          remoteAddress: socket.remoteAddress,
          remotePort: socket.remotePort,
          localAddress: socket.localAddress,
          localPort: socket.localPort,
          encrypted: socket.encrypted,
        };
        res.end("ok");
      });
    });
    const { session, socket } = mtls(port);
    const response = await send(
      session,
      {
        ":method": "PUT",
        ":path": "/things/42?sort=asc&q=a%20b",
        ":authority": "foo.default.svc.cluster.local:8080",
        ...H11,
        "l5d-client-id": "spoofed.serviceaccount.identity.linkerd.cluster.local",
        cookie: ["a=1", "b=2"],
        "x-single": "v",
        "x-multi": ["a", "b"],
      },
      "payload",
    );
    expect(response.status).toBe(200);
    expect(response.body.toString()).toBe("ok");
    expect(seen).toBeDefined();
    const facts = seen as {
      headers: Record<string, unknown>;
      rawHeaders: string[];
      [key: string]: unknown;
    };
    expect(facts).toMatchObject({
      method: "PUT",
      url: "/things/42?sort=asc&q=a%20b",
      httpVersion: "1.1",
      body: "payload",
    });
    expect(facts.headers.host).toBe("foo.default.svc.cluster.local:8080");
    expect(facts.headers["x-single"]).toBe("v");
    // Two h2 fields of one name: joined as node:http joins repeated headers.
    expect(facts.headers["x-multi"]).toBe("a, b");
    expect(Object.keys(facts.headers).filter((name) => name.startsWith(":"))).toEqual([]);
    expect(rawNames(facts.rawHeaders).filter((name) => name.startsWith(":"))).toEqual([]);
    expect(facts.headers["l5d-orig-proto"]).toBeUndefined();
    expect(rawNames(facts.rawHeaders)).not.toContain("l5d-orig-proto");
    // The verified identity, and only it: the client's spoofed value is gone everywhere.
    expect(facts.headers["l5d-client-id"]).toBe(BAR);
    expect(rawValues(facts.rawHeaders, "l5d-client-id")).toEqual([BAR]);
    expect(facts.distinctClientId).toEqual([BAR]);
    // Two h2 cookie fields become one HTTP/1 Cookie header (RFC 9113 §8.2.3).
    expect(facts.headers.cookie).toBe("a=1; b=2");
    // The real connection: from 127.0.0.2 (support's client address), to the listening port, over TLS.
    expect(facts.remoteAddress).toBe("127.0.0.2");
    expect(facts.remotePort).toBe(socket.localPort);
    expect(facts.localAddress).toBe("127.0.0.1");
    expect(facts.localPort).toBe(port);
    expect(facts.encrypted).toBeTruthy();
  });

  it("keeps repeated request headers apart: joined in req.headers, each value in rawHeaders and headersDistinct", async () => {
    let seen: { joined: unknown; raw: string[]; distinct: unknown } | undefined;
    const port = await serve((req, res) => {
      seen = {
        joined: req.headers["x-multi"],
        raw: rawValues(req.rawHeaders, "x-multi"),
        distinct: req.headersDistinct["x-multi"],
      };
      res.end();
    });
    const { session } = mtls(port);
    const response = await send(session, { ":path": "/", ...H11, "x-multi": ["a", "b"] });
    expect(response.status).toBe(200);
    expect(seen).toEqual({ joined: "a, b", raw: ["a", "b"], distinct: ["a", "b"] });
  });

  it("over h2c the handler sees a plaintext connection and no l5d-client-id at all (a spoofed one is removed)", async () => {
    let seen: Record<string, unknown> | undefined;
    const port = await serve((req, res) => {
      const socket = req.socket as Socket & { encrypted?: boolean };
      seen = {
        httpVersion: req.httpVersion,
        clientId: req.headers["l5d-client-id"] ?? null,
        rawClientIds: rawValues(req.rawHeaders, "l5d-client-id"),
        encrypted: socket.encrypted ?? false,
        remoteAddress: socket.remoteAddress,
        remotePort: socket.remotePort,
        localPort: socket.localPort,
      };
      res.end();
    });
    const { session, socket } = h2c(port);
    const response = await send(session, { ":path": "/", ...H11, "l5d-client-id": BAR });
    expect(response.status).toBe(200);
    expect(seen).toEqual({
      httpVersion: "1.1",
      clientId: null,
      rawClientIds: [],
      encrypted: false,
      remoteAddress: "127.0.0.2",
      remotePort: socket.localPort,
      localPort: port,
    });
  });

  // ---------- 2. the response ----------

  it("sends status and headers (set-cookie values as an array), drops connection-specific headers the app set", async () => {
    const port = await serve((req, res) => {
      if (req.url === "/next") {
        res.end("next");
        return;
      }
      if (req.url === "/hop") {
        // Fields the Connection header names are hop-by-hop, however many it names.
        res.setHeader("connection", req.headers["x-names"] as string);
        res.setHeader("x-hop-a", "1");
        res.setHeader("x-hop-b", "2");
        res.setHeader("x-end-to-end", "3");
        res.end();
        return;
      }
      res.statusCode = 201;
      res.setHeader("content-type", "application/json");
      res.setHeader("x-custom", "yes");
      res.setHeader("set-cookie", ["a=1; Path=/", "b=2; HttpOnly"]);
      res.setHeader("connection", "close");
      res.setHeader("keep-alive", "timeout=5");
      res.setHeader("transfer-encoding", "chunked");
      res.setHeader("upgrade", "websocket");
      res.end('{"ok":true}');
    });
    const { session } = mtls(port);
    const response = await send(session, { ":path": "/created", ...H11 });
    expect(response.error).toBeUndefined();
    expect(response.ended).toBe(true);
    expect(response.status).toBe(201);
    expect(response.headers["content-type"]).toBe("application/json");
    expect(response.headers["x-custom"]).toBe("yes");
    expect(response.headers["set-cookie"]).toEqual(["a=1; Path=/", "b=2; HttpOnly"]);
    for (const name of ["connection", "keep-alive", "transfer-encoding", "upgrade"]) {
      expect(response.headers[name], name).toBeUndefined();
    }
    expect(response.body.toString()).toBe('{"ok":true}');
    // `connection: close` from the app ends nothing but the response: the session serves on.
    const next = await send(session, { ":path": "/next", ...H11 });
    expect(next.status).toBe(200);
    expect(next.body.toString()).toBe("next");
    for (const names of ["x-hop-a", "x-hop-a, X-Hop-B", "close, x-hop-b"]) {
      const hop = await send(session, { ":path": "/hop", "x-names": names, ...H11 });
      expect(hop.status, names).toBe(200);
      expect(hop.headers["x-end-to-end"], names).toBe("3");
      expect(hop.headers["x-hop-a"], names).toBe(names.includes("hop-a") ? undefined : "1");
      expect(hop.headers["x-hop-b"], names).toBe(names.toLowerCase().includes("hop-b") ? undefined : "2");
    }
  });

  it("echoes l5d-orig-proto on the response only when the request carried it", async () => {
    const port = await serve((_req, res) => res.end("x"));
    const { session } = mtls(port);
    const upgraded = await send(session, { ":path": "/", ...H11 });
    expect(upgraded.status).toBe(200);
    expect(upgraded.headers["l5d-orig-proto"]).toBe("HTTP/1.1");
    const native = await send(session, { ":path": "/" });
    expect(native.status).toBe(200);
    expect(native.headers["l5d-orig-proto"]).toBeUndefined();
    expect(native.body.toString()).toBe("x");
  });

  it("serves both the writeHead(status, {...}) form and setHeader + end(body); end('hello') sets content-length: 5", async () => {
    const port = await serve((req, res) => {
      if (req.url === "/writehead") {
        res.writeHead(202, { "content-type": "text/plain", "x-form": "writeHead" });
        res.end("hello");
      } else {
        res.setHeader("content-type", "text/plain");
        res.setHeader("x-form", "setHeader");
        res.end("hello");
      }
    });
    const { session } = mtls(port);
    const writeHead = await send(session, { ":path": "/writehead", ...H11 });
    expect(writeHead.status).toBe(202);
    expect(writeHead.headers["x-form"]).toBe("writeHead");
    expect(writeHead.headers["content-type"]).toBe("text/plain");
    expect(writeHead.body.toString()).toBe("hello");
    const setHeader = await send(session, { ":path": "/setheader", ...H11 });
    expect(setHeader.status).toBe(200);
    expect(setHeader.headers["x-form"]).toBe("setHeader");
    expect(setHeader.headers["content-length"]).toBe("5");
    expect(setHeader.body.toString()).toBe("hello");
  });

  // ---------- 3. bodies ----------

  it("marks a body of unknown length as chunked (body parsers look for it) and keeps a client's content-length", async () => {
    const seen: Record<string, { te: unknown; length: unknown; body: string }> = {};
    const port = await serve((req, res) =>
      readBody(req, (body) => {
        seen[req.url ?? ""] = {
          te: req.headers["transfer-encoding"],
          length: req.headers["content-length"],
          body: body.toString(),
        };
        res.end();
      }),
    );
    const { session } = mtls(port);
    await send(session, { ":path": "/unknown", ...H11 }, "abc");
    await send(session, { ":path": "/known", "content-length": "3", ...H11 }, "xyz");
    await send(session, { ":path": "/none", ...H11 });
    expect(seen["/unknown"]).toEqual({ te: "chunked", length: undefined, body: "abc" });
    expect(seen["/known"]).toEqual({ te: undefined, length: "3", body: "xyz" });
    expect(seen["/none"]).toEqual({ te: undefined, length: undefined, body: "" });
  });

  it("echoes a 64 KiB request body byte-exact (read with req.on('data'))", async () => {
    const port = await serve(echoBody);
    const { session } = mtls(port);
    const body = randomBytes(64 * 1024);
    const response = await send(
      session,
      { ":path": "/echo", ...H11, "content-length": String(body.length) },
      body,
    );
    expect(response.status).toBe(200);
    expect(response.body.length).toBe(body.length);
    expect(response.body.equals(body)).toBe(true);
  });

  it("streams a 1 MiB response written in 16 KiB chunks with back-pressure (write() false, wait for 'drain') byte-exact", async () => {
    const payload = pattern(1024 * 1024, 7);
    let written = 0;
    let drains = 0;
    // pipe() and frameworks check writableNeedDrain before writing: it must clear once 'drain' fired.
    const needDrainAfterDrain: boolean[] = [];
    const port = await serve((_req, res) => {
      res.writeHead(200, { "content-type": "application/octet-stream" });
      res.on("drain", () => needDrainAfterDrain.push(res.writableNeedDrain));
      const pump = () => {
        while (written < payload.length) {
          const piece = payload.subarray(written, written + 16 * 1024);
          written += piece.length;
          if (!res.write(piece)) {
            drains += 1;
            res.once("drain", pump);
            return;
          }
        }
        res.end();
      };
      pump();
    });
    const { session } = mtls(port);
    const stream = session.request({ ":method": "GET", ":path": "/big", ...H11 }, { endStream: true });
    // The client reads nothing until the handler has been writing for 200 ms: it must have been held
    // back meanwhile, not allowed to buffer the whole MiB.
    let release: (() => void) | undefined;
    const exchange = settle(stream, { hold: new Promise<void>((resolve) => (release = resolve)) });
    await eventually(() => written > 0, 5000, "handler writing");
    await new Promise((resolve) => setTimeout(resolve, 200));
    const writtenWhileHeld = written;
    release?.();
    const response = await exchange;
    expect(response.status).toBe(200);
    expect(response.ended).toBe(true);
    expect(response.body.length).toBe(payload.length);
    expect(response.body.equals(payload)).toBe(true);
    expect(drains).toBeGreaterThan(0);
    expect(needDrainAfterDrain.length).toBe(drains);
    expect(needDrainAfterDrain.every((needed) => !needed)).toBe(true);
    expect(writtenWhileHeld).toBeGreaterThan(0);
    expect(writtenWhileHeld).toBeLessThan(payload.length);
  });

  it("answers without reading the request body: the response ends while a 256 KiB body is still being sent", async () => {
    let handled = 0;
    const port = await serve((req, res) => {
      if (req.url === "/next") {
        res.end("next");
        return;
      }
      handled += 1;
      res.setHeader("content-type", "text/plain");
      res.end("early");
    });
    const { session } = mtls(port);
    const stream = session.request({ ":method": "POST", ":path": "/upload", ...H11 }, { endStream: false });
    // Until the response body ends: what becomes of the rest of the request is the next test's matter.
    const exchange = settle(stream, { until: "end" });
    stream.end(pattern(256 * 1024, 3));
    const response = await exchange;
    expect(handled).toBe(1);
    expect(response.status).toBe(200);
    expect(response.ended).toBe(true);
    expect(response.body.toString()).toBe("early");
    const next = await send(session, { ":path": "/next", ...H11 });
    expect(next.status).toBe(200);
    expect(next.body.toString()).toBe("next");
  });

  it("answers without reading the request body: the stream then closes and the session still carries uploads", async () => {
    const port = await serve((req, res) => {
      if (req.url === "/echo") echoBody(req, res);
      else res.end("early");
    });
    const { session } = mtls(port);
    const unread = await send(session, { ":path": "/upload", ...H11 }, pattern(256 * 1024, 3), 3000);
    expect(unread.status).toBe(200);
    expect(unread.body.toString()).toBe("early");
    // Closed without error: the body drained, or the server's RST_STREAM(NO_ERROR) (RFC 9113 §8.1).
    expect(unread.error).toBeUndefined();
    const body = pattern(256 * 1024, 4);
    const next = await send(session, { ":path": "/echo", ...H11 }, body, 3000);
    expect(next.status).toBe(200);
    expect(next.body.equals(body)).toBe(true);
  });

  it("carries utf-8 multi-byte string bodies byte-exact both ways", async () => {
    const port = await serve((req, res) => {
      res.setHeader("content-type", "text/plain; charset=utf-8");
      if (req.method === "GET") {
        res.end("héllo ✓");
        return;
      }
      req.setEncoding("utf8");
      let text = "";
      req.on("data", (chunk: string) => {
        text += chunk;
      });
      req.on("end", () => res.end(JSON.stringify({ text, length: text.length })));
    });
    const { session } = mtls(port);
    const get = await send(session, { ":path": "/", ...H11 });
    expect(get.status).toBe(200);
    expect(get.body.equals(Buffer.from("héllo ✓", "utf8"))).toBe(true);
    expect(get.headers["content-length"]).toBe(String(Buffer.byteLength("héllo ✓")));
    const post = await send(session, { ":path": "/", ...H11 }, "ünï ✓ 𝄞");
    expect(post.status).toBe(200);
    expect(JSON.parse(post.body.toString("utf8"))).toEqual({ text: "ünï ✓ 𝄞", length: "ünï ✓ 𝄞".length });
  });

  // ---------- 4. trailers ----------

  it("sends the handler's res.addTrailers() of a chunked response as HTTP/2 trailers", async () => {
    const port = await serve((_req, res) => {
      res.writeHead(200, { "content-type": "text/plain", trailer: "x-checksum" });
      res.write("some ");
      res.write("body");
      res.addTrailers({ "x-checksum": "abc" });
      res.end();
    });
    const { session } = mtls(port);
    const response = await send(session, { ":path": "/", ...H11 });
    expect(response.status).toBe(200);
    expect(response.headers["content-length"]).toBeUndefined();
    expect(response.body.toString()).toBe("some body");
    expect(response.trailers?.["x-checksum"]).toBe("abc");
  });

  it("shows request trailers the client sends (sendTrailers after waitForTrailers) as req.trailers after 'end'", async () => {
    const port = await serve((req, res) =>
      readBody(req, (body) => res.end(JSON.stringify({ body: body.toString(), trailers: req.trailers }))),
    );
    const { session } = mtls(port);
    const stream = session.request(
      { ":method": "POST", ":path": "/", ...H11 },
      { endStream: false, waitForTrailers: true },
    );
    stream.once("wantTrailers", () => stream.sendTrailers({ "x-request-checksum": "xyz" }));
    const exchange = settle(stream, { timeoutMs: 3000 });
    stream.end("request body");
    const response = await exchange;
    expect(response.status).toBe(200);
    expect(JSON.parse(response.body.toString())).toEqual({
      body: "request body",
      trailers: { "x-request-checksum": "xyz" },
    });
  });

  // ---------- 5. bodiless responses ----------

  it("answers HEAD with no body, the status and the content-length the handler set", async () => {
    const port = await serve((_req, res) => {
      res.setHeader("content-type", "text/plain");
      res.setHeader("content-length", "5");
      // As frameworks do for HEAD: the body is written and must be dropped.
      res.end("hello");
    });
    const { session } = mtls(port);
    const head = await send(session, { ":method": "HEAD", ":path": "/", ...H11 });
    expect(head.error).toBeUndefined();
    expect(head.status).toBe(200);
    expect(head.headers["content-length"]).toBe("5");
    expect(head.body.length).toBe(0);
    expect(head.ended).toBe(true);
    const get = await send(session, { ":path": "/", ...H11 });
    expect(get.body.toString()).toBe("hello");
  });

  it("ends 204 and 304 responses with no body, cleanly", async () => {
    const port = await serve((req, res) => {
      if (req.url === "/204") res.writeHead(204, { "x-kind": "no-content" });
      else res.writeHead(304, { etag: '"v1"' });
      res.end();
    });
    const { session } = mtls(port);
    const noContent = await send(session, { ":path": "/204", ...H11 });
    expect(noContent.status).toBe(204);
    expect(noContent.headers["x-kind"]).toBe("no-content");
    const notModified = await send(session, { ":path": "/304", ...H11, "if-none-match": '"v1"' });
    expect(notModified.status).toBe(304);
    expect(notModified.headers.etag).toBe('"v1"');
    for (const response of [noContent, notModified]) {
      expect(response.body.length).toBe(0);
      expect(response.ended).toBe(true);
      expect(response.error).toBeUndefined();
      expect(response.rstCode).toBe(h2constants.NGHTTP2_NO_ERROR);
    }
  });

  // ---------- 6. Expect: 100-continue ----------

  it("relays Expect: 100-continue: the client gets a 100 ('continue'), then sends the body, which the handler echoes", async () => {
    const port = await serve(echoBody);
    const { session } = mtls(port);
    const stream = session.request(
      { ":method": "POST", ":path": "/", ...H11, expect: "100-continue" },
      { endStream: false },
    );
    let continued = false;
    stream.once("continue", () => {
      continued = true;
      stream.end("sent after 100");
    });
    const response = await settle(stream, { timeoutMs: 3000 });
    expect(continued).toBe(true);
    expect(response.status).toBe(200);
    expect(response.body.toString()).toBe("sent after 100");
  });

  // ---------- 7. resets ----------

  it("a client reset (CANCEL) mid request body closes the handler's req and res; the session serves on", async () => {
    const upload = watchUpload();
    const port = await serve(upload.handler);
    const { session } = mtls(port);
    const cancelled = await cancelMidBody(session, upload.receiving);
    expect(cancelled.rstCode).toBe(h2constants.NGHTTP2_CANCEL);
    await eventually(() => upload.events.reqClosed && upload.events.resClosed, 5000, "req and res closed");
    const next = await send(session, { ":path": "/next", ...H11 });
    expect(next.status).toBe(200);
    expect(next.body.toString()).toBe("next");
  });

  // node:http2's client ends the request body (END_STREAM) before it resets a stream, so the server sees
  // a complete body there; a proxy (hyper) resets without ending. Raw frames send exactly that.
  it("a reset without END_STREAM mid request body aborts the handler's req (complete === false) and closes its res; the server serves on", async () => {
    const upload = watchUpload();
    const port = await serve(upload.handler);
    const socket = plainSocket({ port });
    socket.on("error", () => undefined);
    await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
    socket.write(
      Buffer.concat([
        PREFACE,
        settings(),
        headers(1, post("/upload", [["l5d-orig-proto", "HTTP/1.1"]])),
        data(1, Buffer.alloc(8 * 1024, 0x61)),
      ]),
    );
    await upload.receiving;
    socket.write(rstStream(1, h2constants.NGHTTP2_CANCEL));
    await eventually(() => upload.events.resClosed && upload.events.reqClosed, 5000, "req and res closed");
    socket.destroy();
    expect(upload.events.aborted).toBe(true);
    expect(upload.events.complete).toBe(false);
    expect(upload.events.ended).toBe(false);
    const { session } = h2c(port);
    const next = await send(session, { ":path": "/next", ...H11 });
    expect(next.status).toBe(200);
    expect(next.body.toString()).toBe("next");
  });

  it("res.destroy() before headers: the client gets 502, as a proxy answers for an application that hung up; the session serves on", async () => {
    const port = await serve((req, res) => {
      if (req.url === "/next") res.end("next");
      else res.destroy();
    });
    const { session } = mtls(port);
    const destroyed = await send(session, { ":path": "/destroy", ...H11 });
    expect(destroyed.status).toBe(502);
    expect(destroyed.body.length).toBe(0);
    const next = await send(session, { ":path": "/next", ...H11 });
    expect(next.status).toBe(200);
    expect(next.body.toString()).toBe("next");
  });

  it("res.destroy() after headers and part of the body: the client stream is reset, not ended cleanly", async () => {
    let pending: ServerResponse | undefined;
    const port = await serve((req, res) => {
      if (req.url === "/next") {
        res.end("next");
        return;
      }
      res.writeHead(200, { "content-type": "text/plain" });
      res.write("partial");
      pending = res;
    });
    const { session } = mtls(port);
    const stream = session.request({ ":method": "GET", ":path": "/partial", ...H11 }, { endStream: true });
    // Destroyed once the first bytes reached the client, so the response has certainly started.
    stream.once("data", () => pending?.destroy());
    const response = await settle(stream);
    expect(response.status).toBe(200);
    expect(response.body.toString()).toBe("partial");
    expect(response.ended).toBe(false);
    const reset = response.error !== undefined || (response.rstCode ?? 0) !== h2constants.NGHTTP2_NO_ERROR;
    expect(reset).toBe(true);
    const next = await send(session, { ":path": "/next", ...H11 });
    expect(next.status).toBe(200);
  });

  // 8. Express over HTTP/2 is covered in packages/express/test/middleware.test.ts; every test here uses a
  // plain handler.

  // ---------- 9. concurrency ----------

  it("serves 64 concurrent POSTs with distinct 1–8 KiB bodies on one session, each echoed to its own stream", async () => {
    const port = await serve((req, res) =>
      readBody(req, (body) => {
        res.setHeader("x-index", String(req.headers["x-index"]));
        res.end(body);
      }),
    );
    const { session } = mtls(port);
    const bodies = Array.from({ length: 64 }, (_, i) => pattern(1024 + i * 113, i));
    const responses = await Promise.all(
      bodies.map((body, i) => send(session, { ":path": `/echo/${i}`, ...H11, "x-index": String(i) }, body)),
    );
    responses.forEach((response, i) => {
      expect(response.status).toBe(200);
      expect(response.headers["x-index"]).toBe(String(i));
      expect(response.body.equals(bodies[i] as Buffer)).toBe(true);
    });
  });

  // ---------- 10. timeouts ----------

  it("res.setTimeout(50) on a handler that never answers fires the response's 'timeout' (answered 503)", async () => {
    let timedOut = false;
    const port = await serve((_req, res) => {
      res.setTimeout(50);
      res.on("timeout", () => {
        timedOut = true;
        res.statusCode = 503;
        res.end("timed out");
      });
    });
    const { session } = mtls(port);
    const response = await send(session, { ":path": "/slow", ...H11 }, undefined, 3000);
    expect(timedOut).toBe(true);
    expect(response.status).toBe(503);
    expect(response.body.toString()).toBe("timed out");
  });

  // ---------- 6. nothing per request outlives it ----------

  it("a closed stream no longer holds its request and response: node may keep the stream object a while, and what hung from it was promoted and then filled the old generation (bench S1d)", async () => {
    const collect = garbageCollector();
    const streams: object[] = [];
    const requests: WeakRef<IncomingMessage>[] = [];
    const responses: WeakRef<ServerResponse>[] = [];
    const closed: Promise<void>[] = [];
    const port = await serve((req, res) => {
      const stream = (
        req.socket as unknown as { stream: { once(event: "close", listener: () => void): void } }
      ).stream;
      // Held as long as node might hold it.
      streams.push(stream);
      closed.push(new Promise((resolve) => stream.once("close", resolve)));
      requests.push(new WeakRef(req));
      responses.push(new WeakRef(res));
      res.setHeader("content-length", 2);
      res.end("ok");
    });
    const { session } = mtls(port);
    for (let i = 0; i < 4; i += 1) {
      const response = await send(session, { ":path": `/r${i}`, ...H11 });
      expect(response.status).toBe(200);
    }
    await Promise.all(closed);
    expect(streams).toHaveLength(4);
    // The handler's own closure and a few ticks may still reach the last request briefly.
    const alive = () =>
      requests.filter((ref) => ref.deref() !== undefined).length +
      responses.filter((ref) => ref.deref() !== undefined).length;
    await eventually(
      async () => {
        await new Promise((resolve) => setImmediate(resolve));
        collect();
        return alive() === 0;
      },
      2000,
      "requests and responses collected",
    ).catch(() => undefined);
    expect(alive()).toBe(0);
  });
});

/** `gc()` without starting the test process with --expose-gc. */
function garbageCollector(): () => void {
  setFlagsFromString("--expose-gc");
  return runInNewContext("gc") as () => void;
}
