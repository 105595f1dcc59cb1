import { channel, subscribe, unsubscribe } from "node:diagnostics_channel";
import type { PeerIdentity } from "./peer.js";

/**
 * Runtime packages publish what happens on these channels; `@inmesh/admin` (metrics) and `@inmesh/otel`
 * (spans) subscribe. Nothing is built or published unless someone subscribes, so telemetry costs nothing
 * when it is off and can never break a request.
 *
 * A call publishes the SAME message object on its start and end channels, filling in the outcome
 * fields before the end, so subscribers can correlate the two with a WeakMap.
 */
export const MeshChannel = {
  inboundCallStart: "mesh:inbound:call:start",
  inboundCallEnd: "mesh:inbound:call:end",
  outboundCallStart: "mesh:outbound:call:start",
  outboundCallEnd: "mesh:outbound:call:end",
  outboundAttemptStart: "mesh:outbound:attempt:start",
  outboundAttemptEnd: "mesh:outbound:attempt:end",
  tcpOpen: "mesh:tcp:open",
  tcpClose: "mesh:tcp:close",
  inboundTcpAuthz: "mesh:inbound:tcp:authz",
  identityChanged: "mesh:identity:changed",
  policyChanged: "mesh:policy:changed",
  destinationChanged: "mesh:destination:changed",
  meshStatusChanged: "mesh:status:changed",
} as const;

export type MeshChannelName = (typeof MeshChannel)[keyof typeof MeshChannel];

/** Group, kind and name of a Linkerd resource (or a default), as used in metric labels. */
export interface ResourceLabels {
  readonly group: string;
  readonly kind: string;
  readonly name: string;
}

/** The inbound policy decision for one call, as metrics and spans need it. */
export interface DecisionSummary {
  readonly allowed: boolean;
  /** Why a call was refused: `unauthorized`, `route-not-found`, `invalid-policy`, `not-loaded`, `rate-limited`. */
  readonly reason: string | undefined;
  readonly server: ResourceLabels | undefined;
  readonly route: ResourceLabels | undefined;
  readonly authz: ResourceLabels | undefined;
  /**
   * Set when an authorized call was refused by the server's local rate limit (reason `rate-limited`):
   * the HTTPLocalRateLimitPolicy's labels and Linkerd's `ratelimit_scope` (`total` or `identity`).
   */
  readonly rateLimit?: { readonly meta: ResourceLabels | undefined; readonly scope: string } | undefined;
}

export interface InboundCallMessage {
  readonly protocol: "http" | "grpc";
  readonly httpVersion: "1.1" | "2";
  readonly method: string;
  readonly path: string;
  readonly authority: string;
  /** The served port (the target port in Linkerd's labels). */
  readonly port: number;
  readonly targetAddress: string;
  readonly clientAddress: string;
  readonly peer: PeerIdentity;
  /** Reads a request header (lower-case name); used to extract trace context. */
  getHeader(name: string): string | undefined;
  decision: DecisionSummary | undefined;
  statusCode: number | undefined;
  grpcStatus: number | undefined;
  error: unknown;
  /** Milliseconds from start to end, set before the end message. */
  durationMs: number | undefined;
  /**
   * Set by a start subscriber that has a context for the call (the OpenTelemetry bridge: the SERVER
   * span): the server then runs the request handler inside it, so work the handler starts, outbound
   * calls included, belongs to the call. Unset, the handler runs as is, at no cost.
   */
  runInScope?: (<T>(fn: () => T) => T) | undefined;
}

export interface OutboundCallMessage {
  readonly protocol: "http" | "grpc";
  readonly method: string;
  readonly path: string;
  /** The logical authority the application addressed (for example `books.default.svc.cluster.local:80`). */
  readonly authority: string;
  /** Sets a request header on every attempt; used to inject trace context. */
  setHeader(name: string, value: string): void;
  route: ResourceLabels | undefined;
  /**
   * The EgressNetwork whose policy the call went by, when it left the cluster (metrics label it
   * `parent_*`, as Linkerd labels egress traffic); undefined for calls inside the cluster.
   */
  parent?: (ResourceLabels & { readonly namespace: string }) | undefined;
  statusCode: number | undefined;
  grpcStatus: number | undefined;
  error: unknown;
  attempts: number;
  durationMs: number | undefined;
}

export interface OutboundAttemptMessage {
  readonly call: OutboundCallMessage;
  /** 1 for the first try. */
  readonly attempt: number;
  /** `ip:port` of the chosen endpoint, once chosen. */
  endpointAddress: string | undefined;
  /** The endpoint's verified identity, or undefined for plaintext. */
  serverIdentity: string | undefined;
  /** Labels from discovery (pod, namespace, service…), prefixed `dst_` in metrics. */
  endpointLabels: Readonly<Record<string, string>> | undefined;
  statusCode: number | undefined;
  grpcStatus: number | undefined;
  error: unknown;
  durationMs: number | undefined;
}

export interface TcpConnectionMessage {
  readonly direction: "inbound" | "outbound";
  readonly port: number;
  readonly peer: PeerIdentity | undefined;
  /** Set on close. */
  bytesRead: number;
  bytesWritten: number;
  /** Set on close when the connection ended with an error (an errno name such as ECONNRESET). */
  errno: string | undefined;
  /** Set on close when inbound policy refused the connection. */
  denied: boolean;
}

/**
 * A connection-level authorization (opaque and TLS ports, non-HTTP traffic on detect ports): published
 * once when the connection is authorized or refused, and again, `terminated`, when a policy update
 * revokes an authorized connection. HTTP connections are authorized per request, never here.
 */
export interface TcpAuthzMessage {
  readonly port: number;
  /** `ip:port` we accepted on (Linkerd's target_addr). */
  readonly targetAddress: string;
  readonly peer: PeerIdentity;
  readonly decision: DecisionSummary;
  readonly terminated: boolean;
}

export interface MeshChannelMessages {
  [MeshChannel.inboundCallStart]: InboundCallMessage;
  [MeshChannel.inboundCallEnd]: InboundCallMessage;
  [MeshChannel.outboundCallStart]: OutboundCallMessage;
  [MeshChannel.outboundCallEnd]: OutboundCallMessage;
  [MeshChannel.outboundAttemptStart]: OutboundAttemptMessage;
  [MeshChannel.outboundAttemptEnd]: OutboundAttemptMessage;
  [MeshChannel.tcpOpen]: TcpConnectionMessage;
  [MeshChannel.tcpClose]: TcpConnectionMessage;
  [MeshChannel.inboundTcpAuthz]: TcpAuthzMessage;
  [MeshChannel.identityChanged]: {
    readonly status: string;
    readonly expiresAtMs: number | undefined;
    readonly serial: string | undefined;
  };
  [MeshChannel.policyChanged]: { readonly port: number; readonly status: string };
  [MeshChannel.destinationChanged]: { readonly authority: string; readonly endpointCount: number };
  [MeshChannel.meshStatusChanged]: {
    readonly status: "starting" | "ready" | "degraded" | "closing" | "closed";
    readonly reasons: readonly string[];
  };
}

/** The channel for a name; `hasSubscribers` should be checked before building a message. */
export function meshChannel<TName extends MeshChannelName>(name: TName) {
  return channel(name) as ReturnType<typeof channel> & {
    publish(message: MeshChannelMessages[TName]): void;
  };
}

/** A handler per channel; each receives that channel's message type. */
export type MeshChannelHandlers = {
  readonly [TName in MeshChannelName]?: (message: MeshChannelMessages[TName]) => void;
};

/** A set of channel handlers attached and detached together (both idempotent). */
export interface MeshChannelSubscription {
  subscribe(): void;
  unsubscribe(): void;
  readonly active: boolean;
}

/**
 * Subscribes telemetry handlers to mesh channels. A subscriber's exception would be rethrown by
 * diagnostics_channel as an uncaught exception, so every handler is guarded and failures go to `onError`:
 * telemetry can never break a request.
 */
export function createMeshChannelSubscription(
  handlers: MeshChannelHandlers,
  onError: (channel: MeshChannelName, error: unknown) => void,
): MeshChannelSubscription {
  const guarded = (Object.entries(handlers) as [MeshChannelName, (message: unknown) => void][]).map(
    ([name, handler]) =>
      [
        name,
        (message: unknown) => {
          try {
            handler(message);
          } catch (error) {
            onError(name, error);
          }
        },
      ] as const,
  );
  let active = false;
  return {
    subscribe() {
      if (active) return;
      active = true;
      for (const [name, handler] of guarded) subscribe(name, handler);
    },
    unsubscribe() {
      if (!active) return;
      active = false;
      for (const [name, handler] of guarded) unsubscribe(name, handler);
    },
    get active() {
      return active;
    },
  };
}
