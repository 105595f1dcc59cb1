/**
 * Publishes calls on the real `mesh:*` channels, the way the runtime packages do: one message object
 * published on the start channel, its outcome filled in, then the same object on the end channel.
 */
import {
  type DecisionSummary,
  type InboundCallMessage,
  MeshChannel,
  meshChannel,
  type OutboundAttemptMessage,
  type OutboundCallMessage,
  type PeerIdentity,
  type ResourceLabels,
  type TcpAuthzMessage,
  type TcpConnectionMessage,
} from "@inmesh/core";

export const SERVER: ResourceLabels = { group: "policy.linkerd.io", kind: "server", name: "books-http" };
export const ROUTE: ResourceLabels = { group: "policy.linkerd.io", kind: "HTTPRoute", name: "books-read" };
export const AUTHZ: ResourceLabels = {
  group: "policy.linkerd.io",
  kind: "authorizationpolicy",
  name: "books-from-web",
};

export function meshPeer(name: string): PeerIdentity {
  return { kind: "mesh", name, tls: "established" };
}

export function allowed(overrides: Partial<DecisionSummary> = {}): DecisionSummary {
  return { allowed: true, reason: undefined, server: SERVER, route: ROUTE, authz: AUTHZ, ...overrides };
}

export function denied(reason: string, overrides: Partial<DecisionSummary> = {}): DecisionSummary {
  return { allowed: false, reason, server: SERVER, route: ROUTE, authz: undefined, ...overrides };
}

export interface InboundCall {
  protocol?: "http" | "grpc";
  method?: string;
  path?: string;
  authority?: string;
  port?: number;
  targetAddress?: string;
  clientAddress?: string;
  peer?: PeerIdentity;
  headers?: Record<string, string>;
  decision?: DecisionSummary | undefined;
  statusCode?: number | undefined;
  grpcStatus?: number | undefined;
  error?: unknown;
  durationMs?: number | undefined;
}

export function inboundCall(call: InboundCall): InboundCallMessage {
  const headers = call.headers ?? {};
  const message: InboundCallMessage = {
    protocol: call.protocol ?? "http",
    httpVersion: call.protocol === "grpc" ? "2" : "1.1",
    method: call.method ?? "GET",
    path: call.path ?? "/books",
    authority: call.authority ?? "books.default.svc.cluster.local:8080",
    port: call.port ?? 8080,
    targetAddress: call.targetAddress ?? "10.42.0.7",
    clientAddress: call.clientAddress ?? "10.42.0.9",
    peer: call.peer ?? meshPeer("web.default.serviceaccount.identity.linkerd.cluster.local"),
    getHeader: (name) => headers[name],
    decision: undefined,
    statusCode: undefined,
    grpcStatus: undefined,
    error: undefined,
    durationMs: undefined,
  };
  meshChannel(MeshChannel.inboundCallStart).publish(message);
  message.decision = "decision" in call ? call.decision : allowed();
  message.statusCode = "statusCode" in call ? call.statusCode : 200;
  message.grpcStatus = call.grpcStatus;
  message.error = call.error;
  message.durationMs = "durationMs" in call ? call.durationMs : 5;
  meshChannel(MeshChannel.inboundCallEnd).publish(message);
  return message;
}

export interface AttemptOutcome {
  endpointAddress?: string | undefined;
  serverIdentity?: string | undefined;
  endpointLabels?: Record<string, string> | undefined;
  statusCode?: number | undefined;
  grpcStatus?: number | undefined;
  error?: unknown;
  durationMs?: number;
}

export interface OutboundCall {
  protocol?: "http" | "grpc";
  method?: string;
  path?: string;
  authority?: string;
  route?: ResourceLabels | undefined;
  attempts: readonly AttemptOutcome[];
  /** Outcome of the call when there is no attempt. */
  error?: unknown;
}

export function outboundCall(call: OutboundCall): {
  message: OutboundCallMessage;
  headers: Map<string, string>;
  attempts: OutboundAttemptMessage[];
} {
  const headers = new Map<string, string>();
  const message: OutboundCallMessage = {
    protocol: call.protocol ?? "http",
    method: call.method ?? "GET",
    path: call.path ?? "/authors/1",
    authority: call.authority ?? "authors.default.svc.cluster.local:7001",
    setHeader: (name, value) => {
      headers.set(name, value);
    },
    route: call.route,
    statusCode: undefined,
    grpcStatus: undefined,
    error: undefined,
    attempts: 0,
    durationMs: undefined,
  };
  meshChannel(MeshChannel.outboundCallStart).publish(message);
  const attempts: OutboundAttemptMessage[] = [];
  let elapsed = 0;
  call.attempts.forEach((outcome, index) => {
    const attempt: OutboundAttemptMessage = {
      call: message,
      attempt: index + 1,
      endpointAddress: undefined,
      serverIdentity: undefined,
      endpointLabels: undefined,
      statusCode: undefined,
      grpcStatus: undefined,
      error: undefined,
      durationMs: undefined,
    };
    message.attempts = index + 1;
    attempt.endpointAddress = outcome.endpointAddress;
    attempt.serverIdentity = outcome.serverIdentity;
    attempt.endpointLabels = outcome.endpointLabels;
    meshChannel(MeshChannel.outboundAttemptStart).publish(attempt);
    attempt.statusCode = outcome.statusCode;
    attempt.grpcStatus = outcome.grpcStatus;
    attempt.error = outcome.error;
    attempt.durationMs = outcome.durationMs ?? 4;
    elapsed += attempt.durationMs;
    meshChannel(MeshChannel.outboundAttemptEnd).publish(attempt);
    attempts.push(attempt);
  });
  const last = attempts.at(-1);
  message.statusCode = last?.statusCode;
  message.grpcStatus = last?.grpcStatus;
  message.error = last ? last.error : call.error;
  message.durationMs = elapsed;
  meshChannel(MeshChannel.outboundCallEnd).publish(message);
  return { message, headers, attempts };
}

export function tcpConnection(
  connection: Partial<TcpConnectionMessage> & { direction: "inbound" | "outbound" },
): TcpConnectionMessage {
  const message: TcpConnectionMessage = {
    direction: connection.direction,
    port: connection.port ?? 8080,
    peer: connection.peer,
    bytesRead: 0,
    bytesWritten: 0,
    errno: undefined,
    denied: false,
  };
  meshChannel(MeshChannel.tcpOpen).publish(message);
  return message;
}

export function closeTcp(
  message: TcpConnectionMessage,
  outcome: { bytesRead?: number; bytesWritten?: number; errno?: string; denied?: boolean },
): void {
  message.bytesRead = outcome.bytesRead ?? 0;
  message.bytesWritten = outcome.bytesWritten ?? 0;
  message.errno = outcome.errno;
  message.denied = outcome.denied ?? false;
  meshChannel(MeshChannel.tcpClose).publish(message);
}

/** Publishes a connection-level authorization, as the inbound server does for opaque connections. */
export function tcpAuthz(message: Partial<TcpAuthzMessage> & { decision: DecisionSummary }): void {
  meshChannel(MeshChannel.inboundTcpAuthz).publish({
    port: message.port ?? 8080,
    targetAddress: message.targetAddress ?? "10.42.0.7:8080",
    peer: message.peer ?? { kind: "none", reason: "no_tls_from_remote" },
    decision: message.decision,
    terminated: message.terminated ?? false,
  });
}
