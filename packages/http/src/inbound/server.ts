import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from "node:http";
import {
  createServer as createHttp2Server,
  type Http2ServerRequest,
  type Http2ServerResponse,
  constants as h2constants,
  type IncomingHttpHeaders,
  type ServerHttp2Session,
  type ServerHttp2Stream,
} from "node:http2";
import {
  type AddressInfo,
  createServer as createNetServer,
  type Server as NetServer,
  type Socket,
} from "node:net";
import type { Duplex } from "node:stream";
import { createServer as createTlsServer, type TLSSocket, type Server as TlsServer } from "node:tls";
import { debuglog } from "node:util";
import { type Closable, closeOnce, MeshError, MeshErrorCode, type PeerIdentity } from "@inmesh/core";
import type { CompiledServerPolicy, PolicyWatchEvent } from "@inmesh/policy";
import {
  MAX_TRANSPORT_HEADER_BYTES,
  parseTransportHeader,
  TRANSPORT_HEADER_ALPN,
  type TransportHeader,
} from "@inmesh/proto";
import { connectionState, type MeshServerIdentity } from "./connection.js";
import { attachMeshContext, type MeshConnectionInfo, type MeshRequestContext } from "./context.js";
import {
  CLIENT_HELLO_MAX_BYTES,
  detectConnection,
  detectHttp,
  HTTP_DETECT_MAX_BYTES,
  type PlaintextProtocol,
} from "./detect.js";
import {
  authorizeRequest,
  type ConnectionState,
  type GateConfig,
  type MeshAuthorization,
  sendSynthetic,
  sendSyntheticOnStream,
} from "./gate.js";
import { L5D_ORIG_PROTO } from "./headers.js";
import { bridgeToHttp1 } from "./http1-bridge.js";
import { Http1Drain, MeshIncomingMessage } from "./message.js";
import {
  checkDuration,
  checkPort,
  type MeshPolicyInput,
  type MeshPolicySource,
  resolvePolicySource,
} from "./policy-source.js";
import { readPrefix } from "./prefix.js";
import { type CallTelemetry, callsObserved, endCall, observeTcp, startCall } from "./telemetry.js";

const debug = debuglog("mesh");

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
  /** How long a connection or request is held for the port's first policy before being denied (R4). @default 1000 */
  initialPolicyWaitMs?: number;
  /**
   * Also accept Linkerd's direct connections (port 4143 in a pod): TLS with ALPN `transport.l5d.io/v1`, a
   * client identity, and a transport header naming `port`. Bound by `listen()` on the same host.
   */
  transportHeaderPort?: number;
  /** Bound on TLS and protocol detection (handshake, ClientHello, first request bytes). @default 10000 */
  detectTimeoutMs?: number;
  /** Connections accepted at once per listener; more are dropped at accept. @default 10000 */
  maxConnections?: number;
  /** HTTP/1: time to receive a request's headers. @default 10000 */
  headersTimeoutMs?: number;
  /** HTTP/1: time to receive a whole request. @default 300000 */
  requestTimeoutMs?: number;
  /** HTTP/1: idle keep-alive time. @default 5000 */
  keepAliveTimeoutMs?: number;
  /** HTTP/1: request header bytes (431 beyond). @default 16384 */
  maxHeaderSizeBytes?: number;
  /** HTTP/2: concurrent streams per connection. @default 200 */
  maxConcurrentStreams?: number;
  /** `close()` waits this long for in-flight requests, then closes what is left. @default 120000 */
  drainTimeoutMs?: number;
}

export interface MeshServer extends Closable {
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

function addressKey(socket: { remoteAddress?: string | undefined; remotePort?: number | undefined }): string {
  return `${socket.remoteAddress ?? ""}|${socket.remotePort ?? 0}`;
}

interface PendingTls {
  readonly raw: Socket;
  readonly policy: CompiledServerPolicy;
}

type HttpRoute = PlaintextProtocol;

/** Which protocol to serve: detection decides, except where the Server's `proxyProtocol` fixes it. */
function chooseProtocol(policy: CompiledServerPolicy, detected: HttpRoute | undefined): HttpRoute {
  if (policy.protocol === "http2" || policy.protocol === "grpc") return "h2";
  if (detected === "h2" || detected === "http1") return detected;
  return policy.protocol === "http1" ? "http1" : "opaque";
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
  const onStream = options.onStream;
  const onHttp2Connection = options.onHttp2Connection;
  const onConnection = options.onConnection;
  const http2Compat = options.http2Compat === true;
  const maxConnections = positiveInteger(options.maxConnections, 10_000, "maxConnections");
  const headersTimeoutMs = checkDuration(options.headersTimeoutMs, 10_000, "headersTimeoutMs", WHERE);
  const requestTimeoutMs = Math.max(
    headersTimeoutMs,
    checkDuration(options.requestTimeoutMs, 300_000, "requestTimeoutMs", WHERE),
  );
  const keepAliveTimeoutMs = checkDuration(options.keepAliveTimeoutMs, 5000, "keepAliveTimeoutMs", WHERE);
  const maxHeaderSize = positiveInteger(options.maxHeaderSizeBytes, 16 * 1024, "maxHeaderSizeBytes");
  const maxConcurrentStreams = positiveInteger(options.maxConcurrentStreams, 200, "maxConcurrentStreams");

  let closing = false;
  const rawSockets = new Set<Socket>();
  /** Sockets still in detection or handshake: closed at once when draining starts. */
  const unclassified = new Set<Socket>();
  const pendingTls = new Map<string, PendingTls>();
  const pendingDirectTls = new Map<string, PendingTls>();
  const http1Connections = new WeakMap<object, ConnectionState>();
  const bridged = new WeakMap<object, { readonly context: MeshRequestContext }>();
  const sessions = new Map<ServerHttp2Session, ConnectionState>();
  const http1Drain = new Http1Drain();
  const opaqueConnections = new Set<{ readonly socket: Duplex; readonly state: ConnectionState }>();
  let pendingSession: ConnectionState | undefined;
  let drainWaiter: (() => void) | undefined;

  // ---- protocol servers fed with sockets we accepted; none of them listens itself ----

  const http1 = createHttpServer({
    IncomingMessage: MeshIncomingMessage,
    maxHeaderSize,
    headersTimeout: headersTimeoutMs,
    requestTimeout: requestTimeoutMs,
    keepAliveTimeout: keepAliveTimeoutMs,
    connectionsCheckingInterval: Math.min(1000, headersTimeoutMs),
  });
  // node:http starts enforcing headersTimeout/requestTimeout on 'listening'; this server never listens
  // (connections are handed to it), so it is told it does, or slow clients would never be cut off (R9).
  http1.emit("listening");
  http1.on("request", onHttp1Request);
  // Expect: 100-continue is answered only once the request is authorized, so a refused client never
  // sends its body.
  http1.on("checkContinue", (req: IncomingMessage, res: ServerResponse) => onHttp1Request(req, res, true));

  const h2 = createHttp2Server({ settings: { maxConcurrentStreams } });
  h2.on("session", (session: ServerHttp2Session) => {
    const state = pendingSession;
    if (state === undefined) {
      session.destroy();
      return;
    }
    sessions.set(session, state);
    session.on("error", (error) => debug("inbound: http2 session error: %s", error.message));
    session.once("close", () => {
      sessions.delete(session);
    });
    if (closing) session.close();
  });
  if (http2Compat && handler !== undefined && onStream === undefined) {
    h2.on("request", onH2CompatRequest);
  } else {
    h2.on("stream", onH2Stream);
  }

  const tlsOptions = identity.tlsServerOptions();
  const tlsServer: TlsServer = createTlsServer({ ...tlsOptions, handshakeTimeout: detectTimeoutMs });
  tlsServer.on("secureConnection", (socket: TLSSocket) => onSecure(socket, pendingTls, false));
  tlsServer.on("tlsClientError", (error) => debug("inbound: TLS handshake failed: %s", error.message));
  let directTlsServer: TlsServer | undefined;
  if (options.transportHeaderPort !== undefined) {
    directTlsServer = createTlsServer({
      ...tlsOptions,
      ALPNProtocols: [TRANSPORT_HEADER_ALPN],
      handshakeTimeout: detectTimeoutMs,
    });
    directTlsServer.on("secureConnection", (socket: TLSSocket) => onSecure(socket, pendingDirectTls, true));
    directTlsServer.on("tlsClientError", (error) =>
      debug("inbound: direct TLS handshake failed: %s", error.message),
    );
  }

  // ---- listeners ----

  const netServer = createNetServer({ noDelay: true }, (socket) => onRawConnection(socket, false));
  netServer.maxConnections = maxConnections;
  let directServer: NetServer | undefined;
  if (options.transportHeaderPort !== undefined) {
    directServer = createNetServer({ noDelay: true }, (socket) => onRawConnection(socket, true));
    directServer.maxConnections = maxConnections;
  }

  const unsubscribe =
    onConnection !== undefined && source.subscribe !== undefined
      ? source.subscribe((event: PolicyWatchEvent) => {
          if (event.type !== "updated" || event.port !== port) return;
          // Linkerd re-checks authorized TCP connections on every policy change and ends revoked ones.
          for (const entry of opaqueConnections) {
            if (!event.policy.authorizeConnection(entry.state.facts).allowed) {
              debug("inbound: policy update revoked an opaque connection from %s", entry.state.facts.address);
              entry.socket.destroy();
            }
          }
        })
      : undefined;

  function swallow(error: Error): void {
    debug("inbound: connection error: %s", error.message);
  }

  function onRawConnection(raw: Socket, direct: boolean): void {
    if (closing) {
      raw.destroy();
      return;
    }
    raw.on("error", swallow);
    rawSockets.add(raw);
    unclassified.add(raw);
    raw.once("close", () => {
      rawSockets.delete(raw);
      unclassified.delete(raw);
      if (drainWaiter !== undefined && rawSockets.size === 0) drainWaiter();
    });
    const policy = source.policyFor(port);
    if (
      policy.status !== "not-loaded" ||
      source.waitForPolicy === undefined ||
      gate.initialPolicyWaitMs === 0
    ) {
      accept(raw, policy, direct);
      return;
    }
    // Strict mode: hold the connection (bounded) for the first policy; a still-missing one denies.
    source
      .waitForPolicy(port, { timeoutMs: gate.initialPolicyWaitMs })
      .catch(() => source.policyFor(port))
      .then((loaded) => {
        if (!raw.destroyed) accept(raw, loaded, direct);
      });
  }

  function accept(raw: Socket, policy: CompiledServerPolicy, direct: boolean): void {
    if (!direct && policy.protocol === "opaque") {
      // Linkerd skips TLS detection on opaque ports: meshed clients come through the direct port.
      serveOpaque(raw, plaintextState(raw, false), policy);
      return;
    }
    readPrefix(
      raw,
      {
        maxBytes: CLIENT_HELLO_MAX_BYTES,
        timeoutMs: detectTimeoutMs,
        decide: (buffer) => {
          const detection = detectConnection(buffer);
          return detection.kind === "more" ? undefined : detection;
        },
      },
      (result) => {
        if (result.kind === "closed") return;
        if (result.kind === "decided" && result.value.kind === "tls") {
          if (result.value.serverName === identity.localName) {
            terminateTls(raw, policy, direct);
            return;
          }
          if (direct) {
            raw.destroy();
            return;
          }
          // Not our SNI: Linkerd passes such TLS through untouched, so it is opaque traffic here.
          const peer: PeerIdentity =
            result.value.serverName === undefined
              ? identity.peerIdentity(raw)
              : { kind: "none", reason: "passthru" };
          serveOpaque(raw, connectionState(raw, peer, { tls: false, transportHeader: false }), policy);
          return;
        }
        if (direct || !resolved.allowPlaintext) {
          raw.destroy();
          return;
        }
        const state = plaintextState(raw, false);
        if (policy.protocol === "tls") {
          serveOpaque(raw, state, policy);
          return;
        }
        const detected =
          result.kind === "decided" && result.value.kind === "plaintext" ? result.value.protocol : undefined;
        serveProtocol(raw, state, policy, chooseProtocol(policy, detected));
      },
    );
  }

  function plaintextState(raw: Socket, transportHeader: boolean): ConnectionState {
    return connectionState(raw, identity.peerIdentity(raw), { tls: false, transportHeader });
  }

  function terminateTls(raw: Socket, policy: CompiledServerPolicy, direct: boolean): void {
    const pending = direct ? pendingDirectTls : pendingTls;
    const key = addressKey(raw);
    pending.set(key, { raw, policy });
    raw.once("close", () => {
      if (pending.get(key)?.raw === raw) pending.delete(key);
    });
    ((direct ? directTlsServer : tlsServer) as TlsServer).emit("connection", raw);
  }

  function onSecure(socket: TLSSocket, pending: Map<string, PendingTls>, direct: boolean): void {
    socket.on("error", swallow);
    const key = addressKey(socket);
    const entry = pending.get(key);
    pending.delete(key);
    if (entry === undefined || closing) {
      socket.destroy();
      return;
    }
    const peer = identity.peerIdentity(socket);
    if (peer.kind === "none") {
      // A client certificate that does not verify against the trust anchors: linkerd2-proxy's verifier
      // fails such handshakes (only an absent certificate is allowed), so the connection ends here.
      debug("inbound: client certificate from %s refused", entry.raw.remoteAddress);
      socket.destroy();
      return;
    }
    const state = connectionState(entry.raw, peer, { tls: true, transportHeader: direct });
    if (direct) {
      serveDirect(socket, entry.raw, state);
      return;
    }
    const policy = entry.policy;
    if (policy.protocol === "tls") {
      serveOpaque(socket, state, policy, entry.raw);
      return;
    }
    if (policy.protocol === "http2" || policy.protocol === "grpc") {
      serveProtocol(socket, state, policy, "h2", entry.raw);
      return;
    }
    // A client proxy may have upgraded to HTTP/2 even on an HTTP/1 server, so detection always runs.
    readPrefix(
      socket,
      {
        maxBytes: HTTP_DETECT_MAX_BYTES,
        timeoutMs: policy.detectTimeoutMs ?? detectTimeoutMs,
        decide: (buffer, final) => detectHttp(buffer) ?? (final ? "opaque" : undefined),
      },
      (result) => {
        if (result.kind === "closed") return;
        const detected = result.kind === "decided" ? result.value : undefined;
        serveProtocol(socket, state, policy, chooseProtocol(policy, detected), entry.raw);
      },
    );
  }

  function serveDirect(socket: TLSSocket, raw: Socket, state: ConnectionState): void {
    // Linkerd's direct stack: ALPN transport.l5d.io/v1 and a client identity, or the connection is closed.
    if (socket.alpnProtocol !== TRANSPORT_HEADER_ALPN || !state.meshed) {
      debug(
        "inbound: direct connection refused (alpn %s, identity %s)",
        socket.alpnProtocol,
        state.facts.identity,
      );
      socket.destroy();
      return;
    }
    let invalid = false;
    readPrefix<{ header: TransportHeader; consumed: number }>(
      socket,
      {
        maxBytes: MAX_TRANSPORT_HEADER_BYTES + 64,
        timeoutMs: detectTimeoutMs,
        decide: (buffer) => {
          try {
            const parsed = parseTransportHeader(buffer);
            return parsed.complete ? { header: parsed.header, consumed: parsed.consumed } : undefined;
          } catch (error) {
            debug("inbound: bad transport header: %s", (error as Error).message);
            invalid = true;
            return { header: { port: 0, name: "", sessionProtocol: undefined }, consumed: 0 };
          }
        },
      },
      (result) => {
        if (result.kind !== "decided" || invalid) {
          socket.destroy();
          return;
        }
        const { header, consumed } = result.value;
        if (header.name !== "" || header.port !== port) {
          debug("inbound: transport header for %s:%d is not served here", header.name, header.port);
          socket.destroy();
          return;
        }
        socket.read(consumed);
        const policy = source.policyFor(port);
        if (header.sessionProtocol === undefined) serveOpaque(socket, state, policy, raw);
        else serveProtocol(socket, state, policy, header.sessionProtocol === "http2" ? "h2" : "http1", raw);
      },
    );
  }

  function serveProtocol(
    socket: Socket | TLSSocket,
    state: ConnectionState,
    policy: CompiledServerPolicy,
    protocol: HttpRoute,
    raw: Socket = socket as Socket,
  ): void {
    if (protocol === "opaque") {
      serveOpaque(socket, state, policy, raw);
      return;
    }
    unclassified.delete(raw);
    observeTcp(raw, port, state.peer);
    if (protocol === "http1") {
      if (handler === undefined) {
        socket.destroy();
        return;
      }
      http1Connections.set(socket, state);
      http1Drain.track(socket);
      http1.emit("connection", socket);
      // Detection left the socket paused with its first bytes pushed back; node:http only listens.
      socket.resume();
      return;
    }
    if (state.tls) {
      // Sidecars speak prior-knowledge HTTP/2 over TLS without ALPN; node:http2 refuses a TLS socket
      // whose ALPN is not h2, so the detected protocol is recorded as if negotiated.
      (socket as TLSSocket).alpnProtocol = "h2";
    }
    if (onHttp2Connection !== undefined) {
      onHttp2Connection(socket, {
        peer: state.peer,
        clientAddress: state.facts.address,
        port,
        tls: state.tls,
        transportHeader: state.transportHeader,
        decision: undefined,
        policy,
      });
      return;
    }
    if (handler === undefined && onStream === undefined) {
      socket.destroy();
      return;
    }
    pendingSession = state;
    try {
      h2.emit("connection", socket);
    } finally {
      pendingSession = undefined;
    }
  }

  function serveOpaque(
    socket: Socket | TLSSocket,
    state: ConnectionState,
    policy: CompiledServerPolicy,
    raw: Socket = socket as Socket,
  ): void {
    unclassified.delete(raw);
    const decision = policy.authorizeConnection(state.facts);
    observeTcp(raw, port, state.peer)?.(decision);
    if (!decision.allowed || onConnection === undefined || closing) {
      // Linkerd drops denied connections without writing anything.
      debug(
        "inbound: opaque connection from %s closed (%s)",
        state.facts.address,
        decision.reason ?? "no onConnection",
      );
      socket.destroy();
      return;
    }
    const entry = { socket, state };
    opaqueConnections.add(entry);
    socket.once("close", () => opaqueConnections.delete(entry));
    onConnection(socket, {
      peer: state.peer,
      clientAddress: state.facts.address,
      port,
      tls: state.tls,
      transportHeader: state.transportHeader,
      decision,
      policy,
    });
  }

  // ---- requests ----

  function onHttp1Request(req: IncomingMessage, res: ServerResponse, expectContinue = false): void {
    const socket = req.socket;
    const bridge = bridged.get(socket);
    if (bridge !== undefined) {
      attachMeshContext(req, bridge.context);
      if (expectContinue) res.writeContinue();
      (handler as MeshRequestHandler)(req, res);
      return;
    }
    const state = http1Connections.get(socket);
    if (state === undefined || handler === undefined) {
      res.destroy();
      return;
    }
    if (closing) res.setHeader("connection", "close");
    const result = authorizeRequest(gate, state, {
      method: req.method ?? "GET",
      target: req.url ?? "/",
      authority: req.headers.host,
      headers: req.headers,
      rawHeaders: req.rawHeaders,
      h2: false,
      message: req,
    });
    if (result instanceof Promise) {
      result.then(
        (settled) => finishHttp1(req, res, state, settled, expectContinue),
        (error) => failResponse(res, error),
      );
    } else {
      finishHttp1(req, res, state, result, expectContinue);
    }
  }

  function finishHttp1(
    req: IncomingMessage,
    res: ServerResponse,
    state: ConnectionState,
    result: MeshAuthorization,
    expectContinue: boolean,
  ): void {
    if (res.destroyed) return;
    if (callsObserved())
      observeResponse(
        res,
        state,
        req.method ?? "GET",
        req.url ?? "/",
        req.headers.host,
        false,
        false,
        req.headers,
        result,
      );
    if (!result.allowed) {
      // The body the client held back must not be read as the next request.
      if (expectContinue) res.setHeader("connection", "close");
      sendSynthetic(res, result.response);
      return;
    }
    if (expectContinue) res.writeContinue();
    attachMeshContext(req, result.context);
    (handler as MeshRequestHandler)(req, res);
  }

  function onH2Stream(
    stream: ServerHttp2Stream,
    headers: IncomingHttpHeaders,
    _flags: number,
    rawHeaders: string[],
  ): void {
    const state =
      stream.session === undefined ? undefined : sessions.get(stream.session as ServerHttp2Session);
    if (state === undefined) {
      stream.close(h2constants.NGHTTP2_REFUSED_STREAM);
      return;
    }
    stream.on("error", swallow);
    const method = String(headers[":method"] ?? "");
    if (method === "CONNECT") {
      stream.respond({ ":status": 405, "content-length": "0" }, { endStream: true });
      return;
    }
    const authority = headers[":authority"] ?? headers.host;
    const result = authorizeRequest(gate, state, {
      method,
      target: String(headers[":path"] ?? "/"),
      authority,
      headers: headers as Record<string, string | string[] | undefined>,
      rawHeaders,
      h2: true,
    });
    if (result instanceof Promise) {
      result.then(
        (settled) => finishStream(stream, headers, state, settled),
        () => stream.close(h2constants.NGHTTP2_INTERNAL_ERROR),
      );
    } else {
      finishStream(stream, headers, state, result);
    }
  }

  function finishStream(
    stream: ServerHttp2Stream,
    headers: IncomingHttpHeaders,
    state: ConnectionState,
    result: MeshAuthorization,
  ): void {
    if (stream.destroyed) return;
    if (callsObserved()) observeStream(stream, state, headers, result);
    if (!result.allowed) {
      sendSyntheticOnStream(stream, result.response);
      return;
    }
    const context = result.context;
    if (onStream !== undefined) {
      attachMeshContext(stream, context);
      onStream(stream, headers, context);
      return;
    }
    const socket = stream.session?.socket;
    bridgeToHttp1(stream, headers, {
      server: http1,
      address: {
        remoteAddress: socket?.remoteAddress,
        remotePort: socket?.remotePort,
        localAddress: socket?.localAddress,
        localPort: socket?.localPort,
        encrypted: state.tls,
      },
      origProto: context.origProto,
      onServerSocket: (bridgeSocket) => bridged.set(bridgeSocket, { context }),
    });
  }

  function onH2CompatRequest(req: Http2ServerRequest, res: Http2ServerResponse): void {
    const stream = req.stream;
    const state = sessions.get(stream.session as ServerHttp2Session);
    if (state === undefined) {
      stream.close(h2constants.NGHTTP2_REFUSED_STREAM);
      return;
    }
    const headers = req.headers as Record<string, string | string[] | undefined>;
    const result = authorizeRequest(gate, state, {
      method: req.method,
      target: req.url,
      authority: req.authority || undefined,
      headers,
      rawHeaders: req.rawHeaders,
      h2: true,
    });
    const finish = (settled: MeshAuthorization) => {
      if (stream.destroyed) return;
      if (callsObserved()) observeStream(stream, state, req.headers, settled);
      if (!settled.allowed) {
        sendSyntheticOnStream(stream, settled.response);
        return;
      }
      if (settled.context.origProto !== undefined) res.setHeader(L5D_ORIG_PROTO, settled.context.origProto);
      attachMeshContext(req, settled.context);
      (handler as MeshRequestHandler)(req, res);
    };
    if (result instanceof Promise) {
      result.then(finish, () => stream.close(h2constants.NGHTTP2_INTERNAL_ERROR));
    } else {
      finish(result);
    }
  }

  function failResponse(res: ServerResponse, error: unknown): void {
    debug("inbound: request failed before the handler: %s", (error as Error)?.message);
    if (!res.headersSent) {
      res.writeHead(500, { "content-length": "0", connection: "close" });
      res.end();
    } else {
      res.destroy();
    }
  }

  function observeResponse(
    res: ServerResponse,
    state: ConnectionState,
    method: string,
    target: string,
    authority: string | undefined,
    h2: boolean,
    grpc: boolean,
    headers: Record<string, string | string[] | undefined>,
    result: MeshAuthorization,
  ): void {
    const question = target.indexOf("?");
    const telemetry: CallTelemetry = startCall(
      state,
      port,
      { method, path: question < 0 ? target : target.slice(0, question), authority, h2, grpc, headers },
      result.decision,
    );
    res.once("close", () =>
      endCall(telemetry, {
        statusCode: res.statusCode,
        grpcStatus: result.response?.grpcStatus,
        error: res.writableFinished
          ? undefined
          : new MeshError(MeshErrorCode.CANCELED, "response closed before it finished"),
      }),
    );
  }

  function observeStream(
    stream: ServerHttp2Stream,
    state: ConnectionState,
    headers: IncomingHttpHeaders,
    result: MeshAuthorization,
  ): void {
    const target = String(headers[":path"] ?? "/");
    const question = target.indexOf("?");
    const contentType = headers["content-type"];
    const grpc = typeof contentType === "string" && contentType.toLowerCase().startsWith("application/grpc");
    const telemetry = startCall(
      state,
      port,
      {
        method: String(headers[":method"] ?? ""),
        path: question < 0 ? target : target.slice(0, question),
        authority: headers[":authority"] ?? headers.host,
        h2: true,
        grpc,
        headers: headers as Record<string, string | string[] | undefined>,
      },
      result.decision,
    );
    stream.once("close", () => {
      const status = stream.sentHeaders?.[":status"];
      endCall(telemetry, {
        statusCode: typeof status === "number" ? status : status === undefined ? undefined : Number(status),
        grpcStatus: result.response?.grpcStatus,
        error:
          stream.rstCode !== undefined && stream.rstCode !== h2constants.NGHTTP2_NO_ERROR
            ? new MeshError(MeshErrorCode.CANCELED, `stream reset with code ${stream.rstCode}`)
            : undefined,
      });
    });
  }

  // ---- lifecycle ----

  function startDrain(): void {
    if (closing) return;
    closing = true;
    for (const socket of unclassified) socket.destroy();
    http1Drain.start(() => http1.closeIdleConnections());
    for (const session of sessions.keys()) session.close();
  }

  function destroyAll(): void {
    for (const socket of rawSockets) socket.destroy();
  }

  const decorated = netServer as NetServer & { closeIdleConnections(): void; closeAllConnections(): void };
  decorated.closeIdleConnections = startDrain;
  decorated.closeAllConnections = () => {
    startDrain();
    destroyAll();
  };

  const lifecycle = closeOnce(async () => {
    startDrain();
    unsubscribe?.();
    // Stop accepting; net.Server's own close callback would wait for every connection, which the
    // bounded drain below handles instead.
    for (const server of [netServer, directServer]) if (server?.listening) server.close();
    if (rawSockets.size > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          destroyAll();
          resolve();
        }, resolved.drainTimeoutMs);
        timer.unref();
        drainWaiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    drainWaiter = undefined;
    for (const session of sessions.keys()) session.destroy();
    http1.close();
    h2.close();
  });
  netServer.once("close", () => {
    void lifecycle.close();
  });

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
    async listen(listenPort = port, host) {
      if (closing) throw new MeshError(MeshErrorCode.CLOSED, "the mesh server is closed");
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
      return rawSockets.size;
    },
    close: lifecycle.close,
    [Symbol.asyncDispose]: lifecycle.close,
  };
}
