/**
 * HTTP/1: a `node:http` server fed with the connections detection classified as HTTP/1. Authorizes each
 * request before the handler sees it; node:http bounds headers, whole requests and keep-alive idleness.
 */
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import type { TLSSocket } from "node:tls";
import { MeshError, MeshErrorCode } from "@inmesh/core";
import { attachMeshContext } from "./context.js";
import {
  authorizeRequest,
  type ConnectionState,
  type GateConfig,
  type MeshAuthorization,
  sendSynthetic,
} from "./gate.js";
import { Http1Drain, MeshIncomingMessage, sendHeadWithFirstChunk } from "./message.js";
import { type ConnectionActivity, debug, type ShutdownFlag } from "./pipeline.js";
import { type CallTelemetry, callsObserved, finishCall, runHandler, startCall } from "./telemetry.js";

export type Http1Handler = (req: IncomingMessage, res: ServerResponse) => void;

export interface Http1StageOptions {
  readonly gate: GateConfig;
  readonly port: number;
  readonly handler: Http1Handler | undefined;
  readonly shutdown: ShutdownFlag;
  readonly maxHeaderSize: number;
  readonly headersTimeoutMs: number;
  readonly requestTimeoutMs: number;
  readonly keepAliveTimeoutMs: number;
  /** The accept stage's marker of whether a connection is between requests (reaped first at the cap). */
  activity(raw: Socket): ConnectionActivity | undefined;
}

export interface Http1Stage {
  serve(socket: Socket | TLSSocket, state: ConnectionState, raw: Socket): void;
  startDrain(): void;
  close(): void;
}

/** One served connection, kept on its socket (a property read per request rather than a map lookup). */
interface Http1Connection {
  readonly state: ConnectionState;
  readonly activity: ConnectionActivity | undefined;
  /** Requests whose responses are not closed yet (pipelining can make it more than one). */
  inFlight: number;
  /**
   * The keep-alive sweep's tick at which the last response closed; -1 before the first request (node:http's
   * headersTimeout bounds that wait) and while a request is in flight.
   */
  idleSince: number;
  /** `bytesRead` when the sweep first saw the connection idle (-1: not seen yet). */
  idleBytesRead: number;
  /** The close was put off once already because bytes of a next request arrived. */
  idleDeferred: boolean;
}

const kConnection = Symbol("inmesh.http1.connection");
const kCall = Symbol("inmesh.http1.call");
const kSyntheticGrpcStatus = Symbol("inmesh.http1.syntheticGrpcStatus");

type ServedSocket = Duplex & { [kConnection]?: Http1Connection };
/**
 * What one response carries until it closes: its connection (for in-flight counting) and, when calls are
 * observed, its call. One shared close listener reads them, instead of a closure (and a `once` wrapper)
 * per request.
 */
type ServedResponse = ServerResponse & {
  _keepAliveTimeout: number;
  _send: typeof sendHeadWithFirstChunk;
  [kConnection]: Http1Connection;
  /** Set only when calls are observed (absent reads as undefined: no two stores per request otherwise). */
  [kCall]?: CallTelemetry;
  [kSyntheticGrpcStatus]?: number | undefined;
};

export function createHttp1Stage(options: Http1StageOptions): Http1Stage {
  const { gate, port, handler, shutdown } = options;
  // Draining finds the response in flight through each connection: a set of responses, added to and
  // deleted from per request, rehashed every few requests, and V8 links each retired table to its
  // successor, so one promoted table kept every later one (and the requests they held) alive through
  // young-generation collections: the S8 service grew its young generation to the maximum (32 MiB).
  const drain = new Http1Drain();
  const closeIdle = () => server.closeIdleConnections();

  // Keep-alive idleness is bounded by a sweep over the served connections rather than by node:http's
  // keepAliveTimeout, which re-arms a socket timer twice per request (a Timeout, a bound function and a
  // timer list built and torn down each time: ~2,000 instructions, ~3% of an mTLS request). A connection
  // idle for keepAliveTimeoutMs closes within one tick after it (node:http itself closes 1 s after).
  const keepAliveTimeoutMs = options.keepAliveTimeoutMs;
  const tickMs = Math.max(10, Math.min(1000, Math.ceil(keepAliveTimeoutMs / 4)));
  const idleTicks = Math.ceil(keepAliveTimeoutMs / tickMs) + 1;
  let tick = 0;
  let sweeper: NodeJS.Timeout | undefined;
  function sweepIdle(): void {
    tick += 1;
    for (const socket of drain.sockets) {
      const connection = (socket as ServedSocket)[kConnection];
      if (connection === undefined || connection.idleSince < 0) continue;
      const bytesRead = (socket as Socket).bytesRead;
      if (connection.idleBytesRead < 0) {
        connection.idleBytesRead = bytesRead;
      } else if (bytesRead !== connection.idleBytesRead && !connection.idleDeferred) {
        // A next request is arriving (node:http's headersTimeout bounds it from its first byte): as
        // node:http refreshes its timer on reads, the close is put off, but once only, so a client
        // trickling bytes that never make a request is still closed.
        connection.idleDeferred = true;
        connection.idleSince = tick;
        continue;
      }
      if (tick - connection.idleSince >= idleTicks) {
        debug("inbound: HTTP/1 keep-alive connection idle for %d ms: closing", keepAliveTimeoutMs);
        socket.destroy();
      }
    }
  }

  function onResponseClose(this: ServedResponse): void {
    const connection = this[kConnection];
    connection.inFlight -= 1;
    if (connection.inFlight === 0) {
      connection.activity?.setIdle(true);
      connection.idleSince = tick;
      connection.idleBytesRead = -1;
      connection.idleDeferred = false;
    }
    if (shutdown.closing) setImmediate(closeIdle);
    const call = this[kCall];
    if (call !== undefined) {
      finishCall(
        call,
        this.statusCode,
        this[kSyntheticGrpcStatus],
        this.writableFinished
          ? undefined
          : new MeshError(MeshErrorCode.CANCELED, "response closed before it finished"),
      );
    }
  }

  const server = createHttpServer({
    // headersDistinct is built only if the app reads it (see message.ts).
    IncomingMessage: MeshIncomingMessage,
    maxHeaderSize: options.maxHeaderSize,
    headersTimeout: options.headersTimeoutMs,
    requestTimeout: options.requestTimeoutMs,
    // Bounded by sweepIdle instead (see there).
    keepAliveTimeout: 0,
    connectionsCheckingInterval: Math.min(1000, options.headersTimeoutMs),
  });
  // node:http starts enforcing headersTimeout/requestTimeout on 'listening'; this server never listens
  // (connections are handed to it), so it is told it does, or slow clients would never be cut off (R9).
  server.emit("listening");
  server.on("request", onRequest);
  // Expect: 100-continue is answered only once the request is authorized, so a refused client never
  // sends its body.
  server.on("checkContinue", (req: IncomingMessage, res: ServerResponse) => onRequest(req, res, true));

  function serve(socket: Socket | TLSSocket, state: ConnectionState, raw: Socket): void {
    if (handler === undefined) {
      socket.destroy();
      return;
    }
    const activity = options.activity(raw);
    (socket as ServedSocket)[kConnection] = {
      state,
      activity,
      inFlight: 0,
      idleSince: -1,
      idleBytesRead: -1,
      idleDeferred: false,
    };
    drain.track(socket);
    if (sweeper === undefined) {
      sweeper = setInterval(sweepIdle, tickMs);
      sweeper.unref();
    }
    // Waiting for its first request: node:http's headersTimeout bounds it, and the cap may reap it.
    activity?.setIdle(true);
    server.emit("connection", socket);
    // Detection left the socket paused with its first bytes pushed back; node:http only listens.
    socket.resume();
  }

  function onRequest(req: IncomingMessage, res: ServerResponse, expectContinue = false): void {
    const connection = (req.socket as ServedSocket)[kConnection];
    if (connection === undefined || handler === undefined) {
      res.destroy();
      return;
    }
    const state = connection.state;
    connection.inFlight += 1;
    if (connection.inFlight === 1) {
      connection.activity?.setIdle(false);
      connection.idleSince = -1;
    }
    const served = res as ServedResponse;
    // node:http advertises `Keep-Alive: timeout=…` from this field (its own keepAliveTimeout is 0 here).
    served._keepAliveTimeout = keepAliveTimeoutMs;
    served._send = sendHeadWithFirstChunk;
    served[kConnection] = connection;
    res.on("close", onResponseClose);
    if (shutdown.closing) res.setHeader("connection", "close");
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
        (settled) => finish(req, res, state, settled, expectContinue),
        (error) => failResponse(res, error),
      );
    } else {
      finish(req, res, state, result, expectContinue);
    }
  }

  function finish(
    req: IncomingMessage,
    res: ServerResponse,
    state: ConnectionState,
    result: MeshAuthorization,
    expectContinue: boolean,
  ): void {
    if (res.destroyed) return;
    const telemetry = callsObserved()
      ? observeResponse(req, res as ServedResponse, state, result)
      : undefined;
    if (!result.allowed) {
      // The body the client held back must not be read as the next request.
      if (expectContinue) res.setHeader("connection", "close");
      sendSynthetic(res, result.response);
      return;
    }
    if (expectContinue) res.writeContinue();
    attachMeshContext(req, result.context);
    runHandler(telemetry, handler as Http1Handler, req, res);
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
    req: IncomingMessage,
    res: ServedResponse,
    state: ConnectionState,
    result: MeshAuthorization,
  ): CallTelemetry {
    const target = req.url ?? "/";
    const question = target.indexOf("?");
    const telemetry: CallTelemetry = startCall(
      state,
      port,
      {
        method: req.method ?? "GET",
        path: question < 0 ? target : target.slice(0, question),
        authority: req.headers.host,
        h2: false,
        grpc: false,
        headers: req.headers,
      },
      result.decision,
    );
    // Ended by onResponseClose.
    res[kCall] = telemetry;
    res[kSyntheticGrpcStatus] = result.response?.grpcStatus;
    return telemetry;
  }

  return {
    serve,
    startDrain() {
      drain.start(closeIdle);
    },
    close: () => {
      if (sweeper !== undefined) clearInterval(sweeper);
      server.close();
    },
  };
}
