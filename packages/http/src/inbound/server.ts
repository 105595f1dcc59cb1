/**
 * The inbound server: wires the connection pipeline's stages (accept and detect → TLS → direct →
 * HTTP/1, HTTP/2 or opaque; drain) and resolves their options. Each stage holds its own state and bounds.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type {
  Http2ServerRequest,
  Http2ServerResponse,
  IncomingHttpHeaders,
  ServerHttp2Stream,
} from "node:http2";
import type { AddressInfo, Server as NetServer, Socket } from "node:net";
import type { Duplex } from "node:stream";
import type { TLSSocket } from "node:tls";
import {
  type Closable,
  checkDuration,
  holdTickShape,
  MeshError,
  MeshErrorCode,
  type PeerIdentity,
} from "@inmesh/core";
import type { CompiledServerPolicy } from "@inmesh/policy";
import { createAcceptStage } from "./accept.js";
import { connectionState, type MeshServerIdentity } from "./connection.js";
import type { MeshConnectionInfo, MeshRequestContext } from "./context.js";
import { createDirectStage } from "./direct-stage.js";
import { createDrain, createShutdownFlag } from "./drain.js";
import type { ConnectionState, GateConfig } from "./gate.js";
import { createHttp1Stage } from "./http1-stage.js";
import { createHttp2Stage } from "./http2-stage.js";
import { createOpaqueStage } from "./opaque-stage.js";
import type { Pipeline, ServedProtocol } from "./pipeline.js";
import {
  checkPort,
  type MeshPolicyInput,
  type MeshPolicySource,
  resolvePolicySource,
} from "./policy-source.js";
import { observeTcp } from "./telemetry.js";
import { createTlsStage } from "./tls-stage.js";

/** A node:http-style request handler; it gets HTTP/1 objects unless `http2Compat` is set. */
export type MeshRequestHandler = (
  req: IncomingMessage | Http2ServerRequest,
  res: ServerResponse | Http2ServerResponse,
) => void;

export interface MeshServerOptions {
  /** The workload identity (an `IdentityProvider`): its certificate terminates mesh TLS. */
  identity: MeshServerIdentity;
  /** The port's inbound policy: a `PolicyWatcher`, a policy source, or one compiled policy. */
  policy: MeshPolicyInput;
  /**
   * The port whose policy applies, as the policy controller knows it (the container port). Also the port
   * `listen()` binds by default, and the port a transport header must name.
   */
  port: number;
  /**
   * Serves authorized HTTP requests, HTTP/1 and HTTP/2 alike, with `node:http` request/response objects
   * (an Express app, a Fastify handler from `serverFactory`, a plain listener). HTTP/2 requests (what
   * Linkerd sidecars send, upgrading HTTP/1 with `l5d-orig-proto`) are downgraded to HTTP/1.1 for it,
   * as the proxy does for an HTTP/1 application.
   */
  handler?(req: IncomingMessage, res: ServerResponse): void;
  /**
   * The handler understands `node:http2` compatibility objects (plain listeners do; Express does not):
   * HTTP/2 requests then reach it directly, without the HTTP/1 downgrade.
   * @default false
   */
  http2Compat?: boolean;
  /** Serves authorized HTTP/2 streams directly (instead of `handler`); `context` is the mesh context. */
  onStream?(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, context: MeshRequestContext): void;
  /**
   * Takes whole HTTP/2 connections (TLS already terminated, preface not consumed) instead of serving
   * their streams here: for example a grpc-js connection injector whose credentials carry the
   * authorization (`@inmesh/grpc` `createMeshConnectionInjector`).
   */
  onHttp2Connection?(socket: Duplex, info: MeshConnectionInfo): void;
  /**
   * Serves opaque (non-HTTP) connections the policy allows; without it they are closed. Denied
   * connections are closed without a byte written, and allowed ones are closed when a policy update
   * revokes them. The socket is handed over paused, with the bytes read during detection pushed back:
   * call `resume()` or `pipe()` it (as with `net.createServer({ pauseOnConnect: true })`).
   */
  onConnection?(socket: Duplex, info: MeshConnectionInfo): void;
  /** Accept plaintext connections (Linkerd does, and lets policy decide; kubelet probes are plaintext). @default true */
  allowPlaintext?: boolean;
  /**
   * How long a new connection may wait for the port's first policy before it is denied (R4). The
   * connection's requests wait only what is left of it, so nothing is held twice. @default 1000
   */
  initialPolicyWaitMs?: number;
  /**
   * Also accept Linkerd's direct connections (port 4143 in a pod): TLS with ALPN `transport.l5d.io/v1`, a
   * client identity, and a transport header naming `port`. Bound by `listen()` on the same host.
   */
  transportHeaderPort?: number;
  /**
   * One bound, from accept, on everything before a connection is served: the ClientHello, the TLS
   * handshake, HTTP detection and a transport header. A silent connection is closed (or, where the
   * policy allows opaque traffic, handed to `onConnection`) after it. @default 10000
   */
  detectTimeoutMs?: number;
  /**
   * Open connections per listener. At the cap a new connection is still accepted: it closes the oldest
   * of, in this order, connections still in detection; idle ones (HTTP/1 between requests, HTTP/2 with
   * no open stream) that never finished a request; ones in the TLS handshake; idle ones between
   * requests; else the oldest one. @default 10000
   */
  maxConnections?: number;
  /**
   * Time to receive a request's headers: HTTP/1 per request; HTTP/2 for the first request of a
   * connection (a client that sends only the preface, or HEADERS without END_HEADERS, is closed).
   * @default 10000
   */
  headersTimeoutMs?: number;
  /**
   * Time to receive a whole request, body included (HTTP/1: 408 and close; HTTP/2: 408, or
   * RST_STREAM once the response started). @default 300000
   */
  requestTimeoutMs?: number;
  /** HTTP/1: idle keep-alive time between requests. @default 5000 */
  keepAliveTimeoutMs?: number;
  /** HTTP/2: a connection with no open stream is closed with GOAWAY after this. @default 60000 */
  http2IdleTimeoutMs?: number;
  /**
   * HTTP/2: a connection from which nothing was read for this long is sent a PING; 0 turns keep-alive
   * off. Linkerd's `LINKERD2_PROXY_INBOUND_SERVER_HTTP2_KEEP_ALIVE_INTERVAL`. @default 10000
   */
  http2KeepAliveIntervalMs?: number;
  /**
   * HTTP/2: a keep-alive PING not answered within this closes the connection (a peer that vanished,
   * or, on Node 20, a session nghttp2 ended on a protocol error). Linkerd's
   * `LINKERD2_PROXY_INBOUND_SERVER_HTTP2_KEEP_ALIVE_TIMEOUT`. @default 3000
   */
  http2KeepAliveTimeoutMs?: number;
  /** Request header bytes: HTTP/1 (431 beyond) and HTTP/2 (SETTINGS_MAX_HEADER_LIST_SIZE). @default 16384 */
  maxHeaderSizeBytes?: number;
  /** HTTP/2: concurrent streams per connection. @default 200 */
  maxConcurrentStreams?: number;
  /** `close()` waits this long for in-flight requests, then closes what is left. @default 120000 */
  drainTimeoutMs?: number;
}

/**
 * What the shared transport-header listener (`createTransportHeaderListener`) hands a connection to: TLS
 * terminated, client identity verified, header read (and consumed), routed by the header's port.
 */
export interface TransportHeaderTarget {
  /**
   * Serves a connection from the shared transport-header listener as this server's port: `sessionProtocol`
   * `http1`/`http2` is served without detection, undefined as opaque (Linkerd's direct stack). The server
   * then owns the connection (policy, drain on close).
   */
  acceptTransportHeaderConnection(
    socket: TLSSocket,
    raw: Socket,
    peer: PeerIdentity,
    sessionProtocol: "http1" | "http2" | undefined,
  ): void;
}

export interface MeshServer extends Closable, TransportHeaderTarget {
  /**
   * The listening socket server. Fastify's `serverFactory` can return it; Fastify's close then drains
   * through `closeIdleConnections()`.
   */
  readonly server: NetServer;
  /** The transport-header listener, when `transportHeaderPort` is set. */
  readonly transportHeaderServer: NetServer | undefined;
  /** Binds `port` (default: the policy port) and the transport-header port on `host`. */
  listen(port?: number, host?: string): Promise<AddressInfo>;
  address(): AddressInfo | undefined;
  transportHeaderAddress(): AddressInfo | undefined;
  /** Open client connections (both listeners). */
  readonly connectionCount: number;
}

interface ResolvedOptions {
  readonly identity: MeshServerIdentity;
  readonly source: MeshPolicySource;
  readonly gate: GateConfig;
  readonly port: number;
  readonly allowPlaintext: boolean;
  readonly detectTimeoutMs: number;
  readonly drainTimeoutMs: number;
}

const WHERE = "createMeshServer";

function resolveOptions(options: MeshServerOptions): ResolvedOptions {
  if (typeof options !== "object" || options === null) {
    throw new MeshError(MeshErrorCode.INVALID_ARG, `${WHERE}: options are required`);
  }
  const identity = options.identity;
  if (
    typeof identity?.tlsServerOptions !== "function" ||
    typeof identity.peerIdentity !== "function" ||
    typeof identity.localName !== "string"
  ) {
    throw new MeshError(MeshErrorCode.INVALID_ARG, `${WHERE}: identity must be an IdentityProvider`);
  }
  const port = checkPort(options.port, "port", WHERE);
  const source = resolvePolicySource(options.policy, WHERE);
  const serving = [options.handler, options.onStream, options.onHttp2Connection, options.onConnection];
  if (serving.every((fn) => fn === undefined)) {
    throw new MeshError(
      MeshErrorCode.INVALID_ARG,
      `${WHERE}: give handler, onStream, onHttp2Connection or onConnection`,
    );
  }
  for (const [name, fn] of Object.entries({
    handler: options.handler,
    onStream: options.onStream,
    onHttp2Connection: options.onHttp2Connection,
    onConnection: options.onConnection,
  })) {
    if (fn !== undefined && typeof fn !== "function") {
      throw new MeshError(MeshErrorCode.INVALID_ARG, `${WHERE}: ${name} must be a function`);
    }
  }
  if (options.transportHeaderPort !== undefined)
    checkPort(options.transportHeaderPort, "transportHeaderPort", WHERE, true);
  const initialPolicyWaitMs = checkDuration(
    options.initialPolicyWaitMs,
    1000,
    "initialPolicyWaitMs",
    WHERE,
    true,
  );
  return {
    identity,
    source,
    gate: { source, port, initialPolicyWaitMs },
    port,
    allowPlaintext: options.allowPlaintext !== false,
    detectTimeoutMs: checkDuration(options.detectTimeoutMs, 10_000, "detectTimeoutMs", WHERE),
    drainTimeoutMs: checkDuration(options.drainTimeoutMs, 120_000, "drainTimeoutMs", WHERE, true),
  };
}

function positiveInteger(value: number | undefined, fallback: number, name: string): number {
  const result = value ?? fallback;
  if (!Number.isInteger(result) || result <= 0) {
    throw new MeshError(
      MeshErrorCode.INVALID_ARG,
      `${WHERE}: ${name} must be a positive integer, got ${String(value)}`,
    );
  }
  return result;
}

/**
 * Creates the inbound side of a meshed service: one listener that accepts plaintext and mesh TLS on the
 * same port (terminating TLS only for the SNI that is our identity, with client certificates requested),
 * detects HTTP/1, prior-knowledge HTTP/2 (no ALPN, as Linkerd sidecars send) and opaque traffic, applies
 * the port's Linkerd policy to each request (or connection), sets `l5d-client-id` from the verified
 * identity, and answers denials as linkerd2-proxy does. Call `listen()` to start.
 */
export function createMeshServer(options: MeshServerOptions): MeshServer {
  const resolved = resolveOptions(options);
  const { identity, source, gate, port, detectTimeoutMs } = resolved;
  const handler = options.handler;
  const maxConnections = positiveInteger(options.maxConnections, 10_000, "maxConnections");
  const headersTimeoutMs = checkDuration(options.headersTimeoutMs, 10_000, "headersTimeoutMs", WHERE);
  const requestTimeoutMs = Math.max(
    headersTimeoutMs,
    checkDuration(options.requestTimeoutMs, 300_000, "requestTimeoutMs", WHERE),
  );
  const keepAliveTimeoutMs = checkDuration(options.keepAliveTimeoutMs, 5000, "keepAliveTimeoutMs", WHERE);
  const maxHeaderSize = positiveInteger(options.maxHeaderSizeBytes, 16 * 1024, "maxHeaderSizeBytes");
  const maxConcurrentStreams = positiveInteger(options.maxConcurrentStreams, 200, "maxConcurrentStreams");
  const http2IdleTimeoutMs = checkDuration(options.http2IdleTimeoutMs, 60_000, "http2IdleTimeoutMs", WHERE);
  const http2KeepAliveIntervalMs = checkDuration(
    options.http2KeepAliveIntervalMs,
    10_000,
    "http2KeepAliveIntervalMs",
    WHERE,
    true,
  );
  const http2KeepAliveTimeoutMs = checkDuration(
    options.http2KeepAliveTimeoutMs,
    3000,
    "http2KeepAliveTimeoutMs",
    WHERE,
  );
  const direct = options.transportHeaderPort !== undefined;
  holdTickShape();

  const shutdown = createShutdownFlag();
  const pipeline: Pipeline = {
    shutdown,
    classified: (raw) => accept.classified(raw),
    setIdle: (raw, idle) => accept.setIdle(raw, idle),
    activity: (raw) => accept.activity(raw),
    serveOpaque: (socket, state, policy, raw) => opaque.serve(socket, state, policy, raw),
    serveProtocol,
  };

  const http1 = createHttp1Stage({
    gate,
    port,
    handler: handler as MeshRequestHandler | undefined,
    shutdown,
    maxHeaderSize,
    headersTimeoutMs,
    requestTimeoutMs,
    keepAliveTimeoutMs,
    activity: pipeline.activity,
  });
  const http2 = createHttp2Stage({
    gate,
    port,
    shutdown,
    maxConcurrentStreams,
    maxHeaderListSize: maxHeaderSize,
    headersTimeoutMs,
    requestTimeoutMs,
    idleTimeoutMs: http2IdleTimeoutMs,
    keepAliveIntervalMs: http2KeepAliveIntervalMs,
    keepAliveTimeoutMs: http2KeepAliveTimeoutMs,
    setIdle: pipeline.setIdle,
    http1Handler: options.http2Compat === true ? undefined : (handler as MeshRequestHandler | undefined),
    hasHandler: handler !== undefined,
    compatHandler:
      options.http2Compat === true && handler !== undefined ? (handler as MeshRequestHandler) : undefined,
    onStream: options.onStream,
    onHttp2Connection: options.onHttp2Connection,
  });
  const opaque = createOpaqueStage({ source, port, onConnection: options.onConnection, pipeline });
  const directStage = createDirectStage({ source, port, detectTimeoutMs, pipeline });
  const tls = createTlsStage({
    identity,
    detectTimeoutMs,
    direct,
    pipeline,
    serveDirect: (socket, admission, state) => directStage.serve(socket, admission, state),
  });
  const accept = createAcceptStage({
    identity,
    source,
    gate,
    port,
    allowPlaintext: resolved.allowPlaintext,
    detectTimeoutMs,
    maxConnections,
    direct,
    pipeline,
    terminateTls: (admission, policy, isDirect) => tls.terminate(admission, policy, isDirect),
  });
  const drain = createDrain({
    shutdown,
    accept,
    http1,
    http2,
    opaque,
    drainTimeoutMs: resolved.drainTimeoutMs,
  });

  // Entry point for the shared transport-header listener (issue 15): the connection is tracked and
  // drained like one accepted here, and waits (bounded) for the port's first policy like one too.
  function acceptTransportHeaderConnection(
    socket: TLSSocket,
    raw: Socket,
    peer: PeerIdentity,
    sessionProtocol: "http1" | "http2" | undefined,
  ): void {
    if (shutdown.closing || raw.destroyed) {
      socket.destroy();
      return;
    }
    accept.adopt(raw);
    const policyWaitUntil = Date.now() + gate.initialPolicyWaitMs;
    const state = connectionState(raw, peer, { tls: true, transportHeader: true, policyWaitUntil });
    const serve = (policy: CompiledServerPolicy) => {
      if (raw.destroyed) return;
      if (shutdown.closing) {
        socket.destroy();
        return;
      }
      if (sessionProtocol === undefined) opaque.serve(socket, state, policy, raw);
      else serveProtocol(socket, state, policy, sessionProtocol === "http2" ? "h2" : "http1", raw);
    };
    const policy = source.policyFor(port);
    if (
      policy.status !== "not-loaded" ||
      source.waitForPolicy === undefined ||
      gate.initialPolicyWaitMs === 0
    ) {
      serve(policy);
      return;
    }
    source
      .waitForPolicy(port, { timeoutMs: gate.initialPolicyWaitMs })
      .catch(() => source.policyFor(port))
      .then(serve);
  }

  function serveProtocol(
    socket: Socket | TLSSocket,
    state: ConnectionState,
    policy: CompiledServerPolicy,
    protocol: ServedProtocol,
    raw: Socket,
  ): void {
    if (protocol === "opaque") {
      opaque.serve(socket, state, policy, raw);
      return;
    }
    accept.classified(raw);
    observeTcp(raw, port, state.peer);
    if (protocol === "http1") http1.serve(socket, state, raw);
    else http2.serve(socket, state, policy, raw);
  }

  const netServer = accept.server;
  const directServer = accept.directServer;
  const decorated = netServer as NetServer & { closeIdleConnections(): void; closeAllConnections(): void };
  decorated.closeIdleConnections = drain.start;
  decorated.closeAllConnections = drain.destroyAll;

  const listenOne = (server: NetServer, listenPort: number, host: string | undefined) =>
    new Promise<AddressInfo>((resolve, reject) => {
      const onError = (error: Error) => reject(error);
      server.once("error", onError);
      server.listen(listenPort, host, () => {
        server.removeListener("error", onError);
        resolve(server.address() as AddressInfo);
      });
    });

  return {
    server: netServer,
    transportHeaderServer: directServer,
    acceptTransportHeaderConnection,
    async listen(listenPort = port, host) {
      if (shutdown.closing) throw new MeshError(MeshErrorCode.CLOSED, "the mesh server is closed");
      checkPort(listenPort, "listen port", "MeshServer.listen", true);
      const address = await listenOne(netServer, listenPort, host);
      if (directServer !== undefined && options.transportHeaderPort !== undefined) {
        await listenOne(directServer, options.transportHeaderPort, host);
      }
      return address;
    },
    address: () => (netServer.address() as AddressInfo | null) ?? undefined,
    transportHeaderAddress: () => (directServer?.address() as AddressInfo | null | undefined) ?? undefined,
    get connectionCount() {
      return accept.connectionCount;
    },
    close: drain.close,
    [Symbol.asyncDispose]: drain.close,
  };
}
