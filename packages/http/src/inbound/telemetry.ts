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

export interface CallTelemetry {
  readonly message: MutableCallMessage;
  readonly startedAt: number;
}

export function startCall(
  connection: ConnectionState,
  port: number,
  request: {
    readonly method: string;
    readonly path: string;
    readonly authority: string | undefined;
    readonly h2: boolean;
    readonly grpc: boolean;
    readonly headers: Record<string, string | string[] | undefined>;
  },
  decision: HttpDecision | HttpRateLimitedDecision | undefined,
): CallTelemetry {
  const headers = request.headers;
  const message: MutableCallMessage = {
    protocol: request.grpc ? "grpc" : "http",
    httpVersion: request.h2 ? "2" : "1.1",
    method: request.method,
    path: request.path,
    authority: request.authority ?? "",
    port,
    targetAddress: connection.targetAddress,
    clientAddress: connection.facts.address,
    peer: connection.peer,
    getHeader(name: string) {
      const value = headers[name];
      return Array.isArray(value) ? value[0] : value;
    },
    decision,
    statusCode: undefined,
    grpcStatus: undefined,
    error: undefined,
    durationMs: undefined,
    runInScope: undefined,
  };
  const telemetry = { message, startedAt: performance.now() };
  if (callStart.hasSubscribers) callStart.publish(message);
  return telemetry;
}

export function endCall(
  telemetry: CallTelemetry,
  outcome: { statusCode: number | undefined; grpcStatus: number | undefined; error: unknown },
): void {
  const message = telemetry.message;
  message.statusCode = outcome.statusCode;
  message.grpcStatus = outcome.grpcStatus;
  message.error = outcome.error;
  message.durationMs = performance.now() - telemetry.startedAt;
  if (callEnd.hasSubscribers) callEnd.publish(message);
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
  socket.once("error", (error: NodeJS.ErrnoException) => {
    message.errno = error.code ?? "EUNKNOWN";
  });
  socket.once("close", () => {
    message.bytesRead = socket.bytesRead;
    message.bytesWritten = socket.bytesWritten;
    if (tcpClose.hasSubscribers) tcpClose.publish(message);
  });
  return (decision) => {
    if (decision !== undefined && !decision.allowed) message.denied = true;
  };
}
