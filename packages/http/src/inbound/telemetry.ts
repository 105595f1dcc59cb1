import type { Socket } from "node:net";
import { performance } from "node:perf_hooks";
import {
  type InboundCallMessage,
  MeshChannel,
  meshChannel,
  type PeerIdentity,
  type TcpConnectionMessage,
} from "@inmesh/core";
import type { ConnectionDecision, HttpDecision, HttpRateLimitedDecision } from "@inmesh/policy";
import type { ConnectionState } from "./gate.js";

const callStart = meshChannel(MeshChannel.inboundCallStart);
const callEnd = meshChannel(MeshChannel.inboundCallEnd);
const tcpOpen = meshChannel(MeshChannel.tcpOpen);
const tcpClose = meshChannel(MeshChannel.tcpClose);
const tcpAuthz = meshChannel(MeshChannel.inboundTcpAuthz);

/**
 * Publishes a connection-level authorization (`inbound_tcp_authz_*`): the decision when a non-HTTP
 * connection is authorized or refused, or `terminated` when a policy update revoked it.
 */
export function publishTcpAuthz(
  connection: ConnectionState,
  port: number,
  decision: ConnectionDecision,
  terminated: boolean,
): void {
  if (!tcpAuthz.hasSubscribers) return;
  tcpAuthz.publish({
    port,
    targetAddress: connection.targetAddress,
    peer: connection.peer,
    decision,
    terminated,
  });
}

/** True when metrics or spans listen for calls; nothing is built otherwise. */
export function callsObserved(): boolean {
  return callStart.hasSubscribers || callEnd.hasSubscribers;
}

type MutableCallMessage = { -readonly [K in keyof InboundCallMessage]: InboundCallMessage[K] };
type HeaderObject = Record<string, string | string[] | undefined>;

/**
 * One observed call: the message subscribers receive, with `getHeader` on the prototype rather than a
 * closure per call (metrics are on by default, so this runs for every request).
 */
class InboundCall implements MutableCallMessage {
  protocol: "http" | "grpc";
  httpVersion: "1.1" | "2";
  method: string;
  path: string;
  authority: string;
  port: number;
  targetAddress: string;
  clientAddress: string;
  peer: PeerIdentity;
  decision: HttpDecision | HttpRateLimitedDecision | undefined;
  statusCode: number | undefined = undefined;
  grpcStatus: number | undefined = undefined;
  error: unknown = undefined;
  durationMs: number | undefined = undefined;
  runInScope: InboundCallMessage["runInScope"] = undefined;
  readonly #headers: HeaderObject;
  readonly #startedAt = performance.now();

  constructor(
    connection: ConnectionState,
    port: number,
    request: {
      readonly method: string;
      readonly path: string;
      readonly authority: string | undefined;
      readonly h2: boolean;
      readonly grpc: boolean;
      readonly headers: HeaderObject;
    },
    decision: HttpDecision | HttpRateLimitedDecision | undefined,
  ) {
    this.protocol = request.grpc ? "grpc" : "http";
    this.httpVersion = request.h2 ? "2" : "1.1";
    this.method = request.method;
    this.path = request.path;
    this.authority = request.authority ?? "";
    this.port = port;
    this.targetAddress = connection.targetAddress;
    this.clientAddress = connection.facts.address;
    this.peer = connection.peer;
    this.decision = decision;
    this.#headers = request.headers;
  }

  getHeader(name: string): string | undefined {
    const value = this.#headers[name];
    return Array.isArray(value) ? value[0] : value;
  }

  get startedAt(): number {
    return this.#startedAt;
  }

  /** The call is its own message (one object per call); kept for callers written against the pair. */
  get message(): this {
    return this;
  }
}

export type CallTelemetry = InboundCall;

export function startCall(
  connection: ConnectionState,
  port: number,
  request: {
    readonly method: string;
    readonly path: string;
    readonly authority: string | undefined;
    readonly h2: boolean;
    readonly grpc: boolean;
    readonly headers: HeaderObject;
  },
  decision: HttpDecision | HttpRateLimitedDecision | undefined,
): CallTelemetry {
  const call = new InboundCall(connection, port, request, decision);
  if (callStart.hasSubscribers) callStart.publish(call);
  return call;
}

export function endCall(
  call: CallTelemetry,
  outcome: { statusCode: number | undefined; grpcStatus: number | undefined; error: unknown },
): void {
  finishCall(call, outcome.statusCode, outcome.grpcStatus, outcome.error);
}

/** {@link endCall} without an outcome object (the HTTP/1 stage ends every observed call through it). */
export function finishCall(
  call: CallTelemetry,
  statusCode: number | undefined,
  grpcStatus: number | undefined,
  error: unknown,
): void {
  call.statusCode = statusCode;
  call.grpcStatus = grpcStatus;
  call.error = error;
  call.durationMs = performance.now() - call.startedAt;
  if (callEnd.hasSubscribers) callEnd.publish(call);
}

/**
 * Calls a request handler inside the call's scope when a subscriber gave one (trace context), else
 * directly: no closure is made unless a scope exists.
 */
export function runHandler<A, B>(
  telemetry: CallTelemetry | undefined,
  handler: (a: A, b: B) => unknown,
  a: A,
  b: B,
): void {
  const scope = telemetry?.message.runInScope;
  if (scope === undefined) handler(a, b);
  else scope(() => handler(a, b));
}

type MutableTcpMessage = { -readonly [K in keyof TcpConnectionMessage]: TcpConnectionMessage[K] };

/** Tracks one accepted TCP connection on `mesh:tcp:open` / `mesh:tcp:close` when someone listens. */
export function observeTcp(
  socket: Socket,
  port: number,
  peer: PeerIdentity | undefined,
): ((decision: ConnectionDecision | undefined) => void) | undefined {
  if (!tcpOpen.hasSubscribers && !tcpClose.hasSubscribers) return undefined;
  const message: MutableTcpMessage = {
    direction: "inbound",
    port,
    peer,
    bytesRead: 0,
    bytesWritten: 0,
    errno: undefined,
    denied: false,
  };
  if (tcpOpen.hasSubscribers) tcpOpen.publish(message);
  // `on`, not `once`: 'close' fires once anyway, and a `once` wrapper per listener would stay in memory
  // for the connection's whole life.
  socket.on("error", (error: NodeJS.ErrnoException) => {
    message.errno ??= error.code ?? "EUNKNOWN";
  });
  socket.on("close", () => {
    message.bytesRead = socket.bytesRead;
    message.bytesWritten = socket.bytesWritten;
    if (tcpClose.hasSubscribers) tcpClose.publish(message);
  });
  return (decision) => {
    if (decision !== undefined && !decision.allowed) message.denied = true;
  };
}
