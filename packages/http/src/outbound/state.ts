import type { OutboundCallMessage } from "@inmesh/core";
import type { HeaderModifier, RequestPolicy, RetryBudget } from "@inmesh/destination";
import type { RawResponse } from "./controller.js";
import type { HeaderPairs } from "./headers.js";
import type { EndpointGroup, EndpointLease, LogicalTarget } from "./targets.js";

/** Per-call state, carried from interceptor to interceptor in the dispatch options under this key. */
export const kCall: unique symbol = Symbol("inmesh.outbound.call");
/** Per-attempt state, set by the retry interceptor for the layers below it. */
export const kAttempt: unique symbol = Symbol("inmesh.outbound.attempt");

export interface CallState {
  /** `host:port` the application addressed, lower-case. */
  readonly authority: string;
  /**
   * Set when the application addressed an IP, or an external name resolved to one: the target is looked
   * up by this address (`ip:port`) while `authority` stays the Host the application sent.
   */
  readonly address: { readonly key: string; readonly ip: string; readonly port: number } | undefined;
  /**
   * The Host the application sent when it differs from `authority` (a short name completed by the
   * search path): sent upstream and matched by routes' hostnames, as the proxy leaves Host alone.
   */
  readonly hostHeader: string | undefined;
  readonly method: string;
  /** Path with query, as sent. */
  readonly path: string;
  readonly protocol: "http" | "grpc";
  /** The request headers as the application sent them, parsed once (lower-case names). */
  readonly headers: HeaderPairs;
  readonly startedAtMs: number;
  telemetry: OutboundCallMessage | undefined;
  /** Headers added to every attempt (trace context set through the telemetry message). */
  readonly extraHeaders: [string, string][];
  target: LogicalTarget | undefined;
  /** The endpoint group of the chosen backend. */
  group: EndpointGroup | undefined;
  policy: RequestPolicy | undefined;
  /** Request headers removed before sending (`l5d-*` the route honoured). */
  stripHeaders: readonly string[];
  /** RequestHeaderModifier filters of the route rule and backend, in order. */
  headerFilters: readonly HeaderModifier[];
  /** Absolute deadline of the whole call on the `performance.now()` clock. */
  deadlineAtMs: number | undefined;
  /** The budget retries of this call withdraw from. */
  budget: RetryBudget | undefined;
  /** The policy, when its rule splits traffic: a retry draws its backend again (`redistributeInterceptor`). */
  splitPolicy: RequestPolicy | undefined;
  attempts: number;
  /** Where the endpoint's raw response headers are kept for an old-API caller (see controller.ts). */
  readonly rawResponse: RawResponse | undefined;
}

export interface AttemptState {
  /** 1 for the first try. */
  readonly number: number;
  /** Why the attempt was abandoned before it reached a socket (deadline, cancel), if it was. */
  readonly abandoned: Error | undefined;
  /** Aborted on abandonment; created on first use (most attempts never wait for anything). */
  readonly signal: AbortSignal;
  /** Set by the balance interceptor. */
  lease: EndpointLease | undefined;
  /** Marks the attempt abandoned and aborts its signal; the first reason wins. */
  abandon(reason: Error): void;
}

/** Dispatch options as they travel through our interceptors. */
export interface MeshDispatchOptions {
  [kCall]?: CallState;
  [kAttempt]?: AttemptState;
  [key: string]: unknown;
}

export function callOf(opts: object): CallState {
  const call = (opts as MeshDispatchOptions)[kCall];
  if (!call) throw new TypeError("inmesh outbound interceptor used outside createMeshDispatcher");
  return call;
}

export function attemptOf(opts: object): AttemptState {
  const attempt = (opts as MeshDispatchOptions)[kAttempt];
  if (!attempt) throw new TypeError("inmesh outbound interceptor used outside createMeshDispatcher");
  return attempt;
}

/**
 * The attempt the retry layer left in the call's own options when it had nothing to do (a route without
 * retries): the layer above abandons it when the caller aborts before it reaches a socket.
 */
export function passedThroughAttempt(opts: object): AttemptState | undefined {
  return (opts as MeshDispatchOptions)[kAttempt];
}
