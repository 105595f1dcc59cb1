/**
 * HTTP/2: a `node:http2` server fed with the connections detection classified as prior-knowledge
 * HTTP/2 (plaintext, or mesh TLS without ALPN as sidecars send), or the hand-off of whole connections to
 * `onHttp2Connection` (grpc-js). Authorizes each stream, then serves it with `onStream`, the compat
 * handler, or the HTTP/1 handler with the request downgraded to HTTP/1 objects (http1-downgrade.ts).
 */
import type {
  Http2ServerRequest,
  Http2ServerResponse,
  IncomingHttpHeaders,
  ServerHttp2Session,
  ServerHttp2Stream,
} from "node:http2";
import { createServer as createHttp2Server, constants as h2constants } from "node:http2";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import type { TLSSocket } from "node:tls";
import { MeshError, MeshErrorCode } from "@inmesh/core";
import {
  closeEndedSession,
  closeOnlyAfterGoaway,
  createKeepAliveSweep,
  createResetBudgets,
  createStreamAdmission,
  destroySocketAfter,
  ENHANCE_YOUR_CALM,
  GOAWAY_SEND_GRACE_MS,
  type KeepAliveRelease,
  refuseSession,
  type SessionResetBudget,
} from "@inmesh/core/http2-abuse";
import type { CompiledServerPolicy } from "@inmesh/policy";
import { attachMeshContext, type MeshConnectionInfo, type MeshRequestContext } from "./context.js";
import {
  authorizeRequest,
  type ConnectionState,
  type GateConfig,
  type MeshAuthorization,
  sendSyntheticOnStream,
} from "./gate.js";
import { L5D_ORIG_PROTO } from "./headers.js";
import { type DowngradeAddress, downgradeAddress, downgradeStream } from "./http1-downgrade.js";
import type { Http1Handler } from "./http1-stage.js";
import { debug, type ShutdownFlag, swallow } from "./pipeline.js";

import { type CallTelemetry, callsObserved, endCall, runHandler, startCall } from "./telemetry.js";

export type Http2CompatHandler = (req: Http2ServerRequest, res: Http2ServerResponse) => void;

export interface Http2StageOptions {
  readonly gate: GateConfig;
  readonly port: number;
  readonly shutdown: ShutdownFlag;
  readonly maxConcurrentStreams: number;
  /** Header block bytes per request (SETTINGS_MAX_HEADER_LIST_SIZE). */
  readonly maxHeaderListSize: number;
  /** A new session must complete its first request's HEADERS within this. */
  readonly headersTimeoutMs: number;
  /** A stream must receive its whole request (END_STREAM) within this. */
  readonly requestTimeoutMs: number;
  /** A session with no open stream is closed (GOAWAY) after this. */
  readonly idleTimeoutMs: number;
  /** A session from which nothing was read for this long is sent a PING (0: never). */
  readonly keepAliveIntervalMs: number;
  /** A PING not answered within this closes the session. */
  readonly keepAliveTimeoutMs: number;
  /** Tells the accept stage whether a connection is between requests (reaped first at the cap). */
  setIdle(raw: Socket, idle: boolean): void;
  /** Serves requests when neither `onStream` nor the compat handler does (downgraded to HTTP/1). */
  readonly http1Handler: Http1Handler | undefined;
  readonly hasHandler: boolean;
  readonly compatHandler: Http2CompatHandler | undefined;
  readonly onStream:
    | ((stream: ServerHttp2Stream, headers: IncomingHttpHeaders, context: MeshRequestContext) => void)
    | undefined;
  readonly onHttp2Connection: ((socket: Duplex, info: MeshConnectionInfo) => void) | undefined;
}

export interface Http2Stage {
  serve(socket: Socket | TLSSocket, state: ConnectionState, policy: CompiledServerPolicy, raw: Socket): void;
  /** GOAWAY on every session; in-flight streams finish. */
  startDrain(): void;
  close(): void;
}

/** After GOAWAY, how long a session may take to close before it is destroyed. */
const CLOSE_GRACE_MS = 1000;

/**
 * Streams that ended in RST_STREAM (reset by the client, or by nghttp2 for its protocol errors): per
 * session a burst of 200 refilled at 100 a second, per client address (all its sessions together) a
 * burst of 1,000 refilled at 500 a second. Beyond either the session gets GOAWAY ENHANCE_YOUR_CALM, as
 * hyper (Linkerd's HTTP stack) bounds reset streams against rapid reset (CVE-2023-44487).
 */
const RESET_BUDGETS = {
  sessionBurst: 200,
  sessionRefillPerSecond: 100,
  addressBurst: 1_000,
  addressRefillPerSecond: 500,
  maxAddresses: 4_096,
} as const;

interface SessionEntry {
  readonly session: ServerHttp2Session;
  readonly state: ConnectionState;
  /** The socket the session reads (TLS, or the plaintext one). */
  readonly socket: Socket | TLSSocket;
  readonly raw: Socket;
  /** What downgraded requests read from `req.socket`; built on the session's first one. */
  address: DowngradeAddress | undefined;
  openStreams: number;
  readonly resets: SessionResetBudget;
  /** The first-request headers bound, then the idle bound whenever no stream is open. */
  timer: NodeJS.Timeout;
}

export function createHttp2Stage(options: Http2StageOptions): Http2Stage {
  const { gate, port, shutdown, http1Handler, onStream, onHttp2Connection, compatHandler } = options;
  const sessions = new Map<ServerHttp2Session, SessionEntry>();
  const resetBudgets = createResetBudgets(RESET_BUDGETS);
  const admission = createStreamAdmission();
  // PINGs a silent session, and lets go of those nghttp2 ended (Node 20 leaves them open): see
  // createKeepAliveSweep.
  const keepAlive = createKeepAliveSweep({
    intervalMs: options.keepAliveIntervalMs,
    timeoutMs: options.keepAliveTimeoutMs,
  });
  let pendingSession:
    | { readonly state: ConnectionState; readonly socket: Socket | TLSSocket; readonly raw: Socket }
    | undefined;

  const h2 = createHttp2Server({
    settings: {
      maxConcurrentStreams: options.maxConcurrentStreams,
      maxHeaderListSize: options.maxHeaderListSize,
    },
  });
  h2.on("session", (session: ServerHttp2Session) => {
    const pending = pendingSession;
    if (pending === undefined) {
      session.destroy();
      return;
    }
    // Before anything can close it: node 20 corrupts its heap when a session is closed under a client's
    // HEADERS (see closeOnlyAfterGoaway).
    closeOnlyAfterGoaway(session, GOAWAY_SEND_GRACE_MS, pending.raw);
    session.on("error", onSessionError);
    // Until its first request's headers are complete (preface only, HEADERS without END_HEADERS,
    // nothing after the preface), a session is held no longer than an HTTP/1 connection would be.
    const entry: SessionEntry = {
      session,
      state: pending.state,
      socket: pending.socket,
      raw: pending.raw,
      address: undefined,
      openStreams: 0,
      resets: resetBudgets.forSession(pending.state.facts.address || undefined),
      timer: boundedWait(session, pending.raw, options.headersTimeoutMs, "no request headers"),
    };
    sessions.set(session, entry);
    keepAlive.watch(session, entry.raw, (why) => letGo(entry, why));
    options.setIdle(entry.raw, true);
    // Per session, so a stream reset before its 'stream' event (it then has no session) still counts.
    session.on("stream", onSessionStream);
    session.once("close", onSessionClose);
    if (shutdown.closing) session.close();
  });
  if (compatHandler !== undefined && onStream === undefined) {
    h2.on("request", onCompatRequest);
  } else {
    h2.on("stream", onH2Stream);
  }
  // Every 'stream' listener (node's compat layer included) runs through admission: nothing is served on
  // a stream the client reset in the same read (see createStreamAdmission). A stream can also be reset
  // (content-length exceeded, DATA after END_STREAM…) before its 'stream' event runs, so it gets an
  // error handler first, whatever happened.
  const streamListeners = h2.rawListeners("stream") as ((...args: unknown[]) => void)[];
  h2.removeAllListeners("stream");
  h2.on("stream", (stream: ServerHttp2Stream, ...rest: unknown[]) => {
    stream.on("error", swallow);
    if (stream.destroyed || stream.closed) return;
    admission.admit(stream, () => {
      for (const listener of streamListeners) Reflect.apply(listener, h2, [stream, ...rest]);
    });
  });

  // The session's listeners are shared and find their entry in `sessions`: node may keep a destroyed
  // session object alive for a while (on Node 24, one whose SETTINGS were never acknowledged), and it must
  // not keep the connection's sockets and state with it.
  function onSessionError(this: ServerHttp2Session, error: Error): void {
    debug("inbound: http2 session error: %s", error.message);
    // Node destroys the session and ends its socket, which waits for the peer: bounded here.
    const entry = sessions.get(this);
    if (entry !== undefined) destroySocketAfter(entry.raw, CLOSE_GRACE_MS);
  }

  function onSessionStream(this: ServerHttp2Session, stream: ServerHttp2Stream): void {
    const entry = sessions.get(this);
    if (entry === undefined) return;
    if (stream.destroyed || stream.closed) earlyReset(entry);
    else trackStream(stream, entry);
  }

  function onSessionClose(this: ServerHttp2Session): void {
    const entry = sessions.get(this);
    if (entry === undefined) return;
    clearTimeout(entry.timer);
    sessions.delete(this);
    // Node closed the socket it was given; the accepted one under it must close too: a TLS session
    // whose accepted socket stays open is never freed on Node 24 (its SETTINGS still awaiting an ACK keep
    // the native session, nghttp2's ~20 KiB and the sockets alive): +110 MiB RSS over R10's 60 s
    // WINDOW_UPDATE flood before this.
    entry.raw.destroy();
  }

  /** GOAWAY once `ms` pass; a session that cannot even do that (nghttp2 stopped reading) is destroyed. */
  function boundedWait(session: ServerHttp2Session, raw: Socket, ms: number, why: string): NodeJS.Timeout {
    const timer = setTimeout(() => {
      debug("inbound: closing http2 session from %s (%s)", session.socket?.remoteAddress, why);
      session.close();
      const grace = setTimeout(
        () => {
          session.destroy();
          raw.destroy();
        },
        Math.min(ms, CLOSE_GRACE_MS),
      );
      grace.unref();
    }, ms);
    timer.unref();
    return timer;
  }

  function letGo(entry: SessionEntry, why: KeepAliveRelease): void {
    debug("inbound: closing http2 session from %s (%s)", entry.raw.remoteAddress, why);
    clearTimeout(entry.timer);
    if (why === "ended by nghttp2") {
      // Its GOAWAY may still be on its way out; the session's close destroys `raw` (onSessionClose).
      closeEndedSession(entry.session, CLOSE_GRACE_MS, entry.raw);
      return;
    }
    sessions.delete(entry.session);
    entry.session.destroy();
    entry.raw.destroy();
  }

  function trackStream(stream: ServerHttp2Stream, entry: SessionEntry): void {
    entry.openStreams += 1;
    if (entry.openStreams === 1) {
      clearTimeout(entry.timer);
      options.setIdle(entry.raw, false);
    }
    // A request body that never ends must not hold the stream (and its connection) forever.
    let requestTimer: NodeJS.Timeout | undefined;
    if (!stream.endAfterHeaders) {
      requestTimer = setTimeout(() => expireRequest(stream), options.requestTimeoutMs);
      requestTimer.unref();
    }
    stream.once("close", () => {
      clearTimeout(requestTimer);
      if (stream.rstCode !== undefined && stream.rstCode !== h2constants.NGHTTP2_NO_ERROR) {
        earlyReset(entry);
      }
      entry.openStreams -= 1;
      if (entry.openStreams === 0 && sessions.has(entry.session)) {
        options.setIdle(entry.raw, true);
        entry.timer = boundedWait(entry.session, entry.raw, options.idleTimeoutMs, "idle");
      }
    });
  }

  function earlyReset(entry: SessionEntry): void {
    if (entry.resets.reset() || entry.session.destroyed) return;
    debug("inbound: http2 session from %s reset too many streams", entry.raw.remoteAddress);
    refuseSession(entry.session, ENHANCE_YOUR_CALM, CLOSE_GRACE_MS, entry.raw);
  }

  function expireRequest(stream: ServerHttp2Stream): void {
    if (stream.destroyed || stream.closed) return;
    const streamState = stream.state.state;
    if (
      streamState === h2constants.NGHTTP2_STREAM_STATE_HALF_CLOSED_REMOTE ||
      streamState === h2constants.NGHTTP2_STREAM_STATE_CLOSED
    )
      return;
    debug("inbound: http2 request from %s timed out", stream.session?.socket?.remoteAddress);
    if (!stream.headersSent) {
      // As node:http answers an HTTP/1 request that outlived requestTimeout.
      stream.respond({ ":status": 408, "content-length": "0" }, { endStream: true });
      stream.close(h2constants.NGHTTP2_NO_ERROR);
    } else {
      stream.close(h2constants.NGHTTP2_CANCEL);
    }
  }

  function serve(
    socket: Socket | TLSSocket,
    state: ConnectionState,
    policy: CompiledServerPolicy,
    raw: Socket,
  ): void {
    if (state.tls) {
      // Sidecars speak prior-knowledge HTTP/2 over TLS without ALPN; node:http2 refuses a TLS socket
      // whose ALPN is not h2, so the detected protocol is recorded as if negotiated.
      (socket as TLSSocket).alpnProtocol = "h2";
    }
    if (onHttp2Connection !== undefined) {
      // Whoever serves the connection closes the socket it was given; the accepted socket under it must
      // close too, or (with TLS, on Node 24) node keeps the closed session and its memory alive.
      if (socket !== raw) socket.once("close", () => raw.destroy());
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
    if (!options.hasHandler && onStream === undefined) {
      socket.destroy();
      return;
    }
    pendingSession = { state, socket, raw };
    try {
      h2.emit("connection", socket);
    } finally {
      pendingSession = undefined;
    }
  }

  function onH2Stream(
    stream: ServerHttp2Stream,
    headers: IncomingHttpHeaders,
    _flags: number,
    rawHeaders: string[],
  ): void {
    if (stream.destroyed || stream.closed) return;
    const entry =
      stream.session === undefined ? undefined : sessions.get(stream.session as ServerHttp2Session);
    if (entry === undefined) {
      stream.close(h2constants.NGHTTP2_REFUSED_STREAM);
      return;
    }
    const state = entry.state;
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
        (settled) => finishStream(stream, headers, rawHeaders, entry, settled),
        () => stream.close(h2constants.NGHTTP2_INTERNAL_ERROR),
      );
    } else {
      finishStream(stream, headers, rawHeaders, entry, result);
    }
  }

  function finishStream(
    stream: ServerHttp2Stream,
    headers: IncomingHttpHeaders,
    rawHeaders: string[],
    entry: SessionEntry,
    result: MeshAuthorization,
  ): void {
    if (stream.destroyed || stream.closed) return;
    const state = entry.state;
    const telemetry = callsObserved() ? observeStream(stream, state, headers, result) : undefined;
    if (!result.allowed) {
      sendSyntheticOnStream(stream, result.response);
      return;
    }
    const context = result.context;
    if (onStream !== undefined) {
      attachMeshContext(stream, context);
      const scope = telemetry?.message.runInScope;
      if (scope === undefined) onStream(stream, headers, context);
      else scope(() => onStream(stream, headers, context));
      return;
    }
    if (http1Handler === undefined) {
      stream.close(h2constants.NGHTTP2_REFUSED_STREAM);
      return;
    }
    entry.address ??= downgradeAddress(entry.socket, state.tls);
    let downgraded: ReturnType<typeof downgradeStream>;
    try {
      downgraded = downgradeStream(stream, rawHeaders, {
        address: entry.address,
        origProto: context.origProto,
      });
    } catch (error) {
      debug("inbound: %s", (error as Error).message);
      stream.respond({ ":status": 500, "content-length": "0" }, { endStream: true });
      return;
    }
    const { req, res } = downgraded;
    attachMeshContext(req, context);
    // As node:http without a 'checkContinue' listener: the client may send its body (the gate has
    // already admitted the request).
    const expect = headers.expect;
    if (typeof expect === "string" && expect.toLowerCase() === "100-continue") res.writeContinue();
    runHandler(telemetry, http1Handler, req, res);
  }

  function onCompatRequest(req: Http2ServerRequest, res: Http2ServerResponse): void {
    const stream = req.stream;
    if (stream.destroyed || stream.closed) return;
    const state = sessions.get(stream.session as ServerHttp2Session)?.state;
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
      if (stream.destroyed || stream.closed) return;
      const telemetry = callsObserved() ? observeStream(stream, state, req.headers, settled) : undefined;
      if (!settled.allowed) {
        sendSyntheticOnStream(stream, settled.response);
        return;
      }
      if (settled.context.origProto !== undefined) res.setHeader(L5D_ORIG_PROTO, settled.context.origProto);
      attachMeshContext(req, settled.context);
      runHandler(telemetry, compatHandler as Http2CompatHandler, req, res);
    };
    if (result instanceof Promise) {
      result.then(finish, () => stream.close(h2constants.NGHTTP2_INTERNAL_ERROR));
    } else {
      finish(result);
    }
  }

  function observeStream(
    stream: ServerHttp2Stream,
    state: ConnectionState,
    headers: IncomingHttpHeaders,
    result: MeshAuthorization,
  ): CallTelemetry {
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
    return telemetry;
  }

  return {
    serve,
    startDrain() {
      for (const session of sessions.keys()) session.close();
    },
    close() {
      for (const session of sessions.keys()) session.destroy();
      h2.close();
    },
  };
}
