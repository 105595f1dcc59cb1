import type { grpcRoute, httpRoute, httpTypes, outbound, tlsRoute } from "@inmesh/proto";
import {
  type BackoffConfig,
  DEFAULT_FAILURE_ACCRUAL_BACKOFF,
  DEFAULT_ROUTE_RETRY_BACKOFF,
} from "./backoff.js";
import { invalidUpdate, methodFromProto, positiveDurationMs } from "./convert.js";
import { type Endpoint, endpointFromProto } from "./endpoint.js";
import type {
  GrpcRequestMatch,
  HostMatcher,
  HttpRequestMatch,
  PathMatcher,
  ValueMatcher,
} from "./http-match.js";
import { LIMITS } from "./limits.js";
import { metadataFromProto, type ResourceMetadata } from "./metadata.js";
import { compileRustRegex, type RustRegex, withRegexBudget } from "./regex.js";
import type { RequestTimeouts } from "./timeouts.js";

/** Request bodies up to this size are buffered so they can be replayed (Linkerd's default). */
export const DEFAULT_MAX_REQUEST_BYTES = 64 * 1024;

/** Peak-EWMA defaults of linkerd2-proxy and the policy controller (contract §8.4). */
export const DEFAULT_EWMA = Object.freeze({ defaultRttMs: 30, decayMs: 10_000 });

/** Per-backend queue defaults sent by the policy controller (contract §8.4). */
export const DEFAULT_QUEUE = Object.freeze({ capacity: 100, failfastTimeoutMs: 3000 });

export type LoadPolicy =
  | { readonly kind: "peak-ewma"; readonly defaultRttMs: number; readonly decayMs: number }
  | {
      readonly kind: "penalty-peak-ewma";
      readonly defaultRttMs: number;
      readonly decayMs: number;
      readonly penaltyMs?: number;
      readonly maxRetryAfterMs?: number;
      readonly penaltyDecayMs?: number;
    };

export interface QueuePolicy {
  readonly capacity: number;
  /** With no ready endpoint for this long, requests fail fast (504). */
  readonly failfastTimeoutMs: number;
}

export type BackendTarget =
  /** Forward to one endpoint, no discovery. */
  | { readonly kind: "forward"; readonly endpoint: Endpoint }
  /** Balance over `watchEndpoints(path)` with `load`. */
  | { readonly kind: "balancer"; readonly path: string; readonly load: LoadPolicy };

export interface Backend {
  readonly metadata: ResourceMetadata;
  readonly queue: QueuePolicy;
  readonly target: BackendTarget;
}

export interface RouteBackend<TFilter> {
  readonly backend: Backend;
  readonly filters: readonly TFilter[];
}

export interface WeightedRouteBackend<TFilter> extends RouteBackend<TFilter> {
  readonly weight: number;
}

export type BackendDistribution<TFilter> =
  | { readonly kind: "empty" }
  | { readonly kind: "first-available"; readonly backends: readonly RouteBackend<TFilter>[] }
  | { readonly kind: "random-available"; readonly backends: readonly WeightedRouteBackend<TFilter>[] };

/** Header name/value pairs; values are latin1 strings (the bytes as sent). */
export type HeaderList = readonly (readonly [string, string])[];

export interface HeaderModifier {
  readonly add: HeaderList;
  readonly set: HeaderList;
  readonly remove: readonly string[];
}

export type HttpFilter =
  | {
      readonly kind: "failure-injector";
      readonly status: number;
      readonly message: string;
      /** Fraction of requests to fail, 0..1. */
      readonly ratio: number;
    }
  | ({ readonly kind: "request-header-modifier" } & HeaderModifier)
  | ({ readonly kind: "response-header-modifier" } & HeaderModifier)
  | {
      readonly kind: "redirect";
      readonly scheme?: string;
      readonly host?: string;
      readonly path?: { readonly kind: "full" | "prefix"; readonly value: string };
      readonly port?: number;
      readonly status: number;
    };

export type GrpcFilter =
  | {
      readonly kind: "failure-injector";
      readonly code: number;
      readonly message: string;
      readonly ratio: number;
    }
  | ({ readonly kind: "request-header-modifier" } & HeaderModifier);

export type OpaqueFilter =
  | { readonly kind: "invalid"; readonly message: string }
  | { readonly kind: "forbidden" };

interface RetryCommon {
  /** Extra attempts after the first. */
  readonly maxRetries: number;
  /** Larger bodies are sent once and never replayed. */
  readonly maxRequestBytes: number;
  /** Time to response headers of each attempt but the last. */
  readonly timeoutMs?: number;
  readonly backoff: BackoffConfig;
}

export interface HttpRetryPolicy extends RetryCommon {
  /** Inclusive `[start, end]` ranges, validated 1 ≤ start ≤ end ≤ 599. */
  readonly statusRanges: readonly (readonly [number, number])[];
}

export interface GrpcRetryPolicy extends RetryCommon {
  /** gRPC codes among {1 cancelled, 4 deadline-exceeded, 8 resource-exhausted, 13 internal, 14 unavailable}. */
  readonly codes: ReadonlySet<number>;
}

export interface HttpRouteRule {
  readonly matches: readonly HttpRequestMatch[];
  readonly filters: readonly HttpFilter[];
  readonly backends: BackendDistribution<HttpFilter>;
  readonly timeouts: RequestTimeouts;
  readonly retry: HttpRetryPolicy | undefined;
  readonly allowL5dRequestHeaders: boolean;
}

export interface HttpRoute {
  readonly metadata: ResourceMetadata;
  readonly hosts: readonly HostMatcher[];
  readonly rules: readonly HttpRouteRule[];
}

export interface GrpcRouteRule {
  readonly matches: readonly GrpcRequestMatch[];
  readonly filters: readonly GrpcFilter[];
  readonly backends: BackendDistribution<GrpcFilter>;
  readonly timeouts: RequestTimeouts;
  readonly retry: GrpcRetryPolicy | undefined;
  readonly allowL5dRequestHeaders: boolean;
}

export interface GrpcRoute {
  readonly metadata: ResourceMetadata;
  readonly hosts: readonly HostMatcher[];
  readonly rules: readonly GrpcRouteRule[];
}

export interface OpaqueRouteRule {
  readonly backends: BackendDistribution<OpaqueFilter>;
  readonly filters: readonly OpaqueFilter[];
}

export interface OpaqueRoute {
  readonly metadata: ResourceMetadata;
  readonly rules: readonly OpaqueRouteRule[];
}

export interface TlsRoute {
  readonly metadata: ResourceMetadata;
  readonly snis: readonly HostMatcher[];
  readonly rules: readonly OpaqueRouteRule[];
}

/**
 * Per-endpoint circuit breaking (contract §8.4). `unified` is modelled, but the balancer applies only
 * its consecutive-failure part.
 */
export type FailureAccrualPolicy =
  | { readonly kind: "none" }
  | {
      readonly kind: "consecutive";
      readonly maxFailures: number;
      readonly backoff: BackoffConfig;
      readonly minReadyEndpoints: number;
    }
  | {
      readonly kind: "unified";
      readonly successRateThreshold: number;
      readonly decayMs: number | undefined;
      readonly minRequests: number;
      readonly maxFailures: number;
      readonly backoff: BackoffConfig;
      readonly minReadyEndpoints: number;
    };

export interface HttpRouteSet {
  readonly routes: readonly HttpRoute[];
  readonly failureAccrual: FailureAccrualPolicy;
}

export type OutboundProtocol =
  | {
      readonly kind: "detect";
      readonly timeoutMs: number | undefined;
      readonly http1: HttpRouteSet;
      readonly http2: HttpRouteSet;
      readonly opaque: readonly OpaqueRoute[];
    }
  | ({ readonly kind: "http1" } & HttpRouteSet)
  | ({ readonly kind: "http2" } & HttpRouteSet)
  | {
      readonly kind: "grpc";
      readonly routes: readonly GrpcRoute[];
      readonly failureAccrual: FailureAccrualPolicy;
    }
  | { readonly kind: "opaque"; readonly routes: readonly OpaqueRoute[] }
  | { readonly kind: "tls"; readonly routes: readonly TlsRoute[] };

/** A compiled `OutboundPolicy`. */
export interface OutboundPolicy {
  readonly kind: "policy";
  readonly metadata: ResourceMetadata;
  readonly protocol: OutboundProtocol;
}

/** The policy controller does not know this target (NotFound) or the API (Unimplemented): fall back. */
export interface NoOutboundPolicy {
  readonly kind: "none";
  readonly reason: "not-found" | "unimplemented";
}

// ---------------------------------------------------------------------------------------------------

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9a-z-]{1,256}$/;
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

function checkCount(what: string, count: number, limit: number): void {
  if (count > limit) throw invalidUpdate(`outbound policy has ${count} ${what}; the limit is ${limit}`);
}

function compileRegex(what: string, pattern: string): RustRegex {
  if (pattern.length > LIMITS.maxRegexLength) throw invalidUpdate(`${what} regex is too long`);
  const compiled = compileRustRegex(pattern);
  if (typeof compiled === "string") throw invalidUpdate(`${what}: ${compiled}`);
  return compiled;
}

function compileHostMatch(match: httpRoute.HostMatch | tlsRoute.SniMatch): HostMatcher {
  const kind = match.match;
  if (!kind) throw invalidUpdate("host match without a kind");
  if (kind.$case === "exact") {
    const host = kind.value.toLowerCase();
    if (host.length === 0 || host.length > 253)
      throw invalidUpdate(`invalid exact host ${JSON.stringify(kind.value)}`);
    return Object.freeze({ kind: "exact", host });
  }
  const labels = kind.value.reverseLabels.map((label) => label.toLowerCase());
  if (
    labels.length === 0 ||
    labels.length > 127 ||
    labels.some((label) => label.length === 0 || label.length > 63)
  )
    throw invalidUpdate("invalid host suffix");
  return Object.freeze({ kind: "suffix", reverseLabels: Object.freeze(labels) });
}

function compileHosts(hosts: readonly (httpRoute.HostMatch | tlsRoute.SniMatch)[]): readonly HostMatcher[] {
  checkCount("hosts in a route", hosts.length, LIMITS.maxHostsPerRoute);
  return Object.freeze(hosts.map(compileHostMatch));
}

function compileHeaderMatch(match: httpRoute.HeaderMatch): ValueMatcher {
  const name = match.name.toLowerCase();
  if (!HEADER_NAME.test(name)) throw invalidUpdate(`invalid header name ${JSON.stringify(match.name)}`);
  const value = match.value;
  if (!value) throw invalidUpdate(`header match ${name} has no value`);
  if (value.$case === "exact")
    return Object.freeze({ name, kind: "exact", value: value.value.toString("latin1") });
  return Object.freeze({
    name,
    kind: "regex",
    value: value.value,
    regex: compileRegex("header", value.value),
  });
}

function compileQueryMatch(match: httpRoute.QueryParamMatch): ValueMatcher {
  const name = match.name;
  if (name.length === 0 || name.length > 256) throw invalidUpdate("invalid query parameter name");
  const value = match.value;
  if (!value) throw invalidUpdate(`query parameter match ${name} has no value`);
  if (value.$case === "exact") return Object.freeze({ name, kind: "exact", value: value.value });
  return Object.freeze({
    name,
    kind: "regex",
    value: value.value,
    regex: compileRegex("query", value.value),
  });
}

function compilePath(path: httpRoute.PathMatch | undefined): PathMatcher | undefined {
  const kind = path?.kind;
  if (!kind) return undefined;
  if (kind.$case === "regex")
    return Object.freeze({ kind: "regex", value: kind.value, regex: compileRegex("path", kind.value) });
  if (!kind.value.startsWith("/"))
    throw invalidUpdate(`path ${JSON.stringify(kind.value)} must start with /`);
  return Object.freeze({ kind: kind.$case, value: kind.value });
}

function compileHttpMatch(match: httpRoute.HttpRouteMatch): HttpRequestMatch {
  checkCount("header matches", match.headers.length, LIMITS.maxHeaderMatches);
  checkCount("query matches", match.queryParams.length, LIMITS.maxHeaderMatches);
  const compiled: { -readonly [K in keyof HttpRequestMatch]: HttpRequestMatch[K] } = {
    headers: Object.freeze(match.headers.map(compileHeaderMatch)),
    queryParams: Object.freeze(match.queryParams.map(compileQueryMatch)),
  };
  const path = compilePath(match.path);
  if (path) compiled.path = path;
  if (match.method) {
    const method = methodFromProto(match.method as httpTypes.HttpMethod);
    if (method === undefined) throw invalidUpdate("invalid method in route match");
    compiled.method = method;
  }
  return Object.freeze(compiled);
}

function compileGrpcMatch(match: grpcRoute.GrpcRouteMatch): GrpcRequestMatch {
  checkCount("header matches", match.headers.length, LIMITS.maxHeaderMatches);
  const service = match.rpc?.service ?? "";
  const method = match.rpc?.method ?? "";
  if (service.length > 1024 || method.length > 1024 || service.includes("/") || method.includes("/"))
    throw invalidUpdate("invalid gRPC service or method match");
  return Object.freeze({ service, method, headers: Object.freeze(match.headers.map(compileHeaderMatch)) });
}

function compileHeaderList(headers: httpTypes.Headers | undefined): HeaderList {
  const list = headers?.headers ?? [];
  checkCount("header modifiers", list.length, LIMITS.maxHeaderModifiers);
  return Object.freeze(
    list.map((header) => {
      const name = header.name.toLowerCase();
      const value = header.value.toString("latin1");
      // Header values must not smuggle CR, LF or NUL into the request.
      if (!HEADER_NAME.test(name) || !HEADER_VALUE.test(value))
        throw invalidUpdate(`invalid header in modifier: ${JSON.stringify(header.name)}`);
      return Object.freeze([name, value] as const);
    }),
  );
}

function compileHeaderModifier(
  modifier: httpRoute.RequestHeaderModifier | httpRoute.ResponseHeaderModifier,
): HeaderModifier {
  checkCount("header removals", modifier.remove.length, LIMITS.maxHeaderModifiers);
  const remove = modifier.remove.map((name) => {
    const lower = name.toLowerCase();
    if (!HEADER_NAME.test(lower)) throw invalidUpdate(`invalid header name ${JSON.stringify(name)}`);
    return lower;
  });
  return {
    add: compileHeaderList(modifier.add),
    set: compileHeaderList(modifier.set),
    remove: Object.freeze(remove),
  };
}

function compileRatio(ratio: httpRoute.Ratio | undefined): number {
  // An absent ratio means every request (linkerd `FailureInjector` default 1/1).
  if (!ratio) return 1;
  if (ratio.denominator === 0) throw invalidUpdate("failure injector ratio has a zero denominator");
  return Math.min(1, ratio.numerator / ratio.denominator);
}

function compileHttpFilter(filter: outbound.HttpRoute_Filter): HttpFilter {
  const kind = filter.kind;
  if (!kind) throw invalidUpdate("HTTP filter without a kind");
  switch (kind.$case) {
    case "failureInjector": {
      const { status, message } = kind.value;
      if (status < 100 || status > 599) throw invalidUpdate(`invalid failure injector status ${status}`);
      if (message.length > 1024 || !HEADER_VALUE.test(message))
        throw invalidUpdate("invalid failure injector message");
      return Object.freeze({
        kind: "failure-injector",
        status,
        message,
        ratio: compileRatio(kind.value.ratio),
      });
    }
    case "requestHeaderModifier":
      return Object.freeze({ kind: "request-header-modifier", ...compileHeaderModifier(kind.value) });
    case "responseHeaderModifier":
      return Object.freeze({ kind: "response-header-modifier", ...compileHeaderModifier(kind.value) });
    case "redirect": {
      const r = kind.value;
      const status = r.status === 0 ? 301 : r.status;
      if (status < 300 || status > 399) throw invalidUpdate(`invalid redirect status ${r.status}`);
      const redirect: { -readonly [K in keyof Extract<HttpFilter, { kind: "redirect" }>]: unknown } = {
        kind: "redirect",
        status,
      };
      const scheme = r.scheme?.type;
      if (scheme) {
        const name = scheme.$case === "registered" ? (scheme.value === 1 ? "https" : "http") : scheme.value;
        if (!/^[a-z][a-z0-9+.-]{0,31}$/i.test(name)) throw invalidUpdate("invalid redirect scheme");
        redirect.scheme = name.toLowerCase();
      }
      if (r.host) {
        if (r.host.length > 253 || !/^[\x21-\x7e]+$/.test(r.host))
          throw invalidUpdate("invalid redirect host");
        redirect.host = r.host;
      }
      const path = r.path?.replace;
      if (path) {
        if (!path.value.startsWith("/") || !/^[\x21-\x7e]*$/.test(path.value))
          throw invalidUpdate("invalid redirect path");
        redirect.path = Object.freeze({ kind: path.$case, value: path.value });
      }
      if (r.port) {
        if (r.port > 65535) throw invalidUpdate("invalid redirect port");
        redirect.port = r.port;
      }
      return Object.freeze(redirect) as HttpFilter;
    }
  }
}

function compileGrpcFilter(filter: outbound.GrpcRoute_Filter): GrpcFilter {
  const kind = filter.kind;
  if (!kind) throw invalidUpdate("gRPC filter without a kind");
  if (kind.$case === "requestHeaderModifier")
    return Object.freeze({ kind: "request-header-modifier", ...compileHeaderModifier(kind.value) });
  const { code, message } = kind.value;
  if (code > 16) throw invalidUpdate(`invalid failure injector gRPC code ${code}`);
  if (message.length > 1024 || !HEADER_VALUE.test(message))
    throw invalidUpdate("invalid failure injector message");
  return Object.freeze({ kind: "failure-injector", code, message, ratio: compileRatio(kind.value.ratio) });
}

function compileOpaqueFilter(filter: outbound.OpaqueRoute_Filter | outbound.TlsRoute_Filter): OpaqueFilter {
  const kind = filter.kind;
  if (!kind) throw invalidUpdate("opaque filter without a kind");
  if (kind.$case === "forbidden") return Object.freeze({ kind: "forbidden" });
  return Object.freeze({ kind: "invalid", message: kind.value.message.slice(0, 1024) });
}

export function compileBackoff(
  backoff: outbound.ExponentialBackoff | undefined,
  fallback: BackoffConfig,
): BackoffConfig {
  if (!backoff) return fallback;
  const minMs = positiveDurationMs(backoff.minBackoff) ?? 0;
  const maxMs = positiveDurationMs(backoff.maxBackoff) ?? 0;
  const jitterRatio = backoff.jitterRatio;
  if (!(maxMs > 0) || minMs > maxMs || !(jitterRatio >= 0 && jitterRatio <= 100))
    throw invalidUpdate(`invalid backoff: min ${minMs} ms, max ${maxMs} ms, jitter ${jitterRatio}`);
  return Object.freeze({ minMs, maxMs, jitterRatio, respectRetryAfterHint: backoff.respectRetryAfterHint });
}

function compileLoad(load: outbound.Backend_BalanceP2c["load"]): LoadPolicy {
  if (!load) return Object.freeze({ kind: "peak-ewma", ...DEFAULT_EWMA });
  const defaultRttMs = positiveDurationMs(load.value.defaultRtt) ?? DEFAULT_EWMA.defaultRttMs;
  const decayMs = positiveDurationMs(load.value.decay) ?? DEFAULT_EWMA.decayMs;
  if (load.$case === "peakEwma") return Object.freeze({ kind: "peak-ewma", defaultRttMs, decayMs });
  const penalty: { -readonly [K in keyof Extract<LoadPolicy, { kind: "penalty-peak-ewma" }>]: unknown } = {
    kind: "penalty-peak-ewma",
    defaultRttMs,
    decayMs,
  };
  const penaltyMs = positiveDurationMs(load.value.penalty);
  const maxRetryAfterMs = positiveDurationMs(load.value.maxRetryAfter);
  const penaltyDecayMs = positiveDurationMs(load.value.penaltyDecay);
  if (penaltyMs !== undefined) penalty.penaltyMs = penaltyMs;
  if (maxRetryAfterMs !== undefined) penalty.maxRetryAfterMs = maxRetryAfterMs;
  if (penaltyDecayMs !== undefined) penalty.penaltyDecayMs = penaltyDecayMs;
  return Object.freeze(penalty) as LoadPolicy;
}

function compileBackend(backend: outbound.Backend | undefined): Backend {
  const kind = backend?.kind;
  if (!backend || !kind) throw invalidUpdate("backend without a kind");
  const queue = Object.freeze({
    capacity: backend.queue?.capacity || DEFAULT_QUEUE.capacity,
    failfastTimeoutMs: positiveDurationMs(backend.queue?.failfastTimeout) ?? DEFAULT_QUEUE.failfastTimeoutMs,
  });
  let target: BackendTarget;
  if (kind.$case === "forward") {
    const endpoint = endpointFromProto(kind.value);
    if (!endpoint) throw invalidUpdate("forward backend with an invalid address");
    target = Object.freeze({ kind: "forward", endpoint });
  } else {
    const discovery = kind.value.discovery?.kind;
    if (!discovery) throw invalidUpdate("balancer backend without discovery");
    const path = discovery.value.path;
    if (path.length === 0 || path.length > 512) throw invalidUpdate("balancer backend with an invalid path");
    target = Object.freeze({ kind: "balancer", path, load: compileLoad(kind.value.load) });
  }
  return Object.freeze({ metadata: metadataFromProto(backend.metadata), queue, target });
}

type AnyDistribution =
  | outbound.HttpRoute_Distribution
  | outbound.GrpcRoute_Distribution
  | outbound.OpaqueRoute_Distribution
  | outbound.TlsRoute_Distribution;

interface AnyRouteBackend<TProtoFilter> {
  backend: outbound.Backend | undefined;
  filters: TProtoFilter[];
}

function compileDistribution<TProtoFilter, TFilter>(
  distribution: AnyDistribution | undefined,
  compileFilter: (filter: TProtoFilter) => TFilter,
): BackendDistribution<TFilter> {
  const kind = distribution?.kind;
  if (!kind) throw invalidUpdate("route rule without a backend distribution");
  const routeBackend = (rb: AnyRouteBackend<TProtoFilter> | undefined): RouteBackend<TFilter> => {
    if (!rb) throw invalidUpdate("weighted backend without a backend");
    checkCount("backend filters", rb.filters.length, LIMITS.maxFiltersPerRule);
    return Object.freeze({
      backend: compileBackend(rb.backend),
      filters: Object.freeze(rb.filters.map(compileFilter)),
    });
  };
  switch (kind.$case) {
    case "empty":
      return Object.freeze({ kind: "empty" });
    case "firstAvailable": {
      const backends = kind.value.backends as unknown as AnyRouteBackend<TProtoFilter>[];
      checkCount("backends", backends.length, LIMITS.maxBackends);
      return Object.freeze({ kind: "first-available", backends: Object.freeze(backends.map(routeBackend)) });
    }
    case "randomAvailable": {
      const backends = kind.value.backends as unknown as {
        backend: AnyRouteBackend<TProtoFilter> | undefined;
        weight: number;
      }[];
      checkCount("backends", backends.length, LIMITS.maxBackends);
      return Object.freeze({
        kind: "random-available",
        backends: Object.freeze(
          backends.map((wb) => Object.freeze({ ...routeBackend(wb.backend), weight: wb.weight })),
        ),
      });
    }
  }
}

function compileTimeouts(
  timeouts: httpRoute.Timeouts | undefined,
  legacyRequestTimeout: { seconds: bigint; nanos: number } | undefined,
): RequestTimeouts {
  const out: { -readonly [K in keyof RequestTimeouts]: RequestTimeouts[K] } = {};
  if (timeouts) {
    const requestMs = positiveDurationMs(timeouts.request);
    const responseMs = positiveDurationMs(timeouts.response);
    const idleMs = positiveDurationMs(timeouts.idle);
    if (requestMs !== undefined) out.requestMs = requestMs;
    if (responseMs !== undefined) out.responseMs = responseMs;
    if (idleMs !== undefined) out.idleMs = idleMs;
  } else {
    // Older controllers send only the deprecated field, meaning the whole-request timeout.
    const legacy = positiveDurationMs(legacyRequestTimeout);
    if (legacy !== undefined) out.requestMs = legacy;
  }
  return Object.freeze(out);
}

function retryCommon(retry: outbound.HttpRoute_Retry | outbound.GrpcRoute_Retry): RetryCommon {
  const common: { -readonly [K in keyof RetryCommon]: RetryCommon[K] } = {
    maxRetries: retry.maxRetries,
    maxRequestBytes: retry.maxRequestBytes || DEFAULT_MAX_REQUEST_BYTES,
    backoff: compileBackoff(retry.backoff, DEFAULT_ROUTE_RETRY_BACKOFF),
  };
  const timeoutMs = positiveDurationMs(retry.timeout);
  if (timeoutMs !== undefined) common.timeoutMs = timeoutMs;
  return common;
}

function compileHttpRetry(retry: outbound.HttpRoute_Retry | undefined): HttpRetryPolicy | undefined {
  if (!retry) return undefined;
  if (!retry.conditions) throw invalidUpdate("HTTP retry without conditions");
  const ranges = retry.conditions.statusRanges;
  checkCount("retry status ranges", ranges.length, LIMITS.maxStatusRanges);
  const statusRanges = ranges.map(({ start, end }) => {
    if (!(start >= 1 && start <= end && end <= 599))
      throw invalidUpdate(`invalid retry status range ${start}-${end}`);
    return Object.freeze([start, end] as const);
  });
  return Object.freeze({ ...retryCommon(retry), statusRanges: Object.freeze(statusRanges) });
}

function compileGrpcRetry(retry: outbound.GrpcRoute_Retry | undefined): GrpcRetryPolicy | undefined {
  if (!retry) return undefined;
  const conditions = retry.conditions;
  if (!conditions) throw invalidUpdate("gRPC retry without conditions");
  const codes = new Set<number>();
  if (conditions.cancelled) codes.add(1);
  if (conditions.deadineExceeded) codes.add(4);
  if (conditions.resourceExhausted) codes.add(8);
  if (conditions.internal) codes.add(13);
  if (conditions.unavailable) codes.add(14);
  return Object.freeze({ ...retryCommon(retry), codes });
}

function compileHttpRoute(route: outbound.HttpRoute): HttpRoute {
  checkCount("rules in a route", route.rules.length, LIMITS.maxRulesPerRoute);
  const rules = route.rules.map((rule): HttpRouteRule => {
    checkCount("matches in a rule", rule.matches.length, LIMITS.maxMatchesPerRule);
    checkCount("filters in a rule", rule.filters.length, LIMITS.maxFiltersPerRule);
    return Object.freeze({
      matches: Object.freeze(rule.matches.map(compileHttpMatch)),
      filters: Object.freeze(rule.filters.map(compileHttpFilter)),
      backends: compileDistribution(rule.backends, compileHttpFilter),
      timeouts: compileTimeouts(rule.timeouts, rule.requestTimeout),
      retry: compileHttpRetry(rule.retry),
      allowL5dRequestHeaders: rule.allowL5dRequestHeaders,
    });
  });
  return Object.freeze({
    metadata: metadataFromProto(route.metadata),
    hosts: compileHosts(route.hosts),
    rules: Object.freeze(rules),
  });
}

function compileGrpcRoute(route: outbound.GrpcRoute): GrpcRoute {
  checkCount("rules in a route", route.rules.length, LIMITS.maxRulesPerRoute);
  const rules = route.rules.map((rule): GrpcRouteRule => {
    checkCount("matches in a rule", rule.matches.length, LIMITS.maxMatchesPerRule);
    checkCount("filters in a rule", rule.filters.length, LIMITS.maxFiltersPerRule);
    return Object.freeze({
      matches: Object.freeze(rule.matches.map(compileGrpcMatch)),
      filters: Object.freeze(rule.filters.map(compileGrpcFilter)),
      backends: compileDistribution(rule.backends, compileGrpcFilter),
      timeouts: compileTimeouts(rule.timeouts, rule.requestTimeout),
      retry: compileGrpcRetry(rule.retry),
      allowL5dRequestHeaders: rule.allowL5dRequestHeaders,
    });
  });
  return Object.freeze({
    metadata: metadataFromProto(route.metadata),
    hosts: compileHosts(route.hosts),
    rules: Object.freeze(rules),
  });
}

function compileOpaqueRules(
  rules: readonly (outbound.OpaqueRoute_Rule | outbound.TlsRoute_Rule)[],
): readonly OpaqueRouteRule[] {
  checkCount("rules in a route", rules.length, LIMITS.maxRulesPerRoute);
  return Object.freeze(
    rules.map((rule) => {
      checkCount("filters in a rule", rule.filters.length, LIMITS.maxFiltersPerRule);
      return Object.freeze({
        backends: compileDistribution(rule.backends, compileOpaqueFilter),
        filters: Object.freeze(rule.filters.map(compileOpaqueFilter)),
      });
    }),
  );
}

function compileOpaqueRoutes(routes: readonly outbound.OpaqueRoute[]): readonly OpaqueRoute[] {
  checkCount("routes", routes.length, LIMITS.maxRoutes);
  return Object.freeze(
    routes.map((route) =>
      Object.freeze({ metadata: metadataFromProto(route.metadata), rules: compileOpaqueRules(route.rules) }),
    ),
  );
}

export function compileFailureAccrual(accrual: outbound.FailureAccrual | undefined): FailureAccrualPolicy {
  const kind = accrual?.kind;
  if (!accrual || !kind) return Object.freeze({ kind: "none" });
  const minReadyEndpoints = accrual.ejection?.minReadyEndpoints ?? 0;
  if (kind.$case === "consecutiveFailures") {
    return Object.freeze({
      kind: "consecutive",
      maxFailures: kind.value.maxFailures || 7,
      backoff: compileBackoff(kind.value.backoff, DEFAULT_FAILURE_ACCRUAL_BACKOFF),
      minReadyEndpoints,
    });
  }
  const u = kind.value;
  if (!(u.successRateThreshold >= 0 && u.successRateThreshold <= 1))
    throw invalidUpdate(`invalid success rate threshold ${u.successRateThreshold}`);
  return Object.freeze({
    kind: "unified",
    successRateThreshold: u.successRateThreshold,
    decayMs: positiveDurationMs(u.decay),
    minRequests: u.minRequests,
    maxFailures: u.maxConsecutiveFailures || 7,
    backoff: compileBackoff(u.backoff, DEFAULT_FAILURE_ACCRUAL_BACKOFF),
    minReadyEndpoints,
  });
}

function compileHttpRouteSet(
  set: { routes: outbound.HttpRoute[]; failureAccrual: outbound.FailureAccrual | undefined } | undefined,
): HttpRouteSet {
  const routes = set?.routes ?? [];
  checkCount("routes", routes.length, LIMITS.maxRoutes);
  return Object.freeze({
    routes: Object.freeze(routes.map(compileHttpRoute)),
    failureAccrual: compileFailureAccrual(set?.failureAccrual),
  });
}

function compileProtocol(protocol: outbound.ProxyProtocol | undefined): OutboundProtocol {
  const kind = protocol?.kind;
  if (!kind) throw invalidUpdate("outbound policy without a protocol");
  switch (kind.$case) {
    case "detect":
      return Object.freeze({
        kind: "detect",
        timeoutMs: positiveDurationMs(kind.value.timeout),
        http1: compileHttpRouteSet(kind.value.http1),
        http2: compileHttpRouteSet(kind.value.http2),
        opaque: compileOpaqueRoutes(kind.value.opaque?.routes ?? []),
      });
    case "http1":
    case "http2":
      return Object.freeze({ kind: kind.$case, ...compileHttpRouteSet(kind.value) });
    case "grpc":
      checkCount("routes", kind.value.routes.length, LIMITS.maxRoutes);
      return Object.freeze({
        kind: "grpc",
        routes: Object.freeze(kind.value.routes.map(compileGrpcRoute)),
        failureAccrual: compileFailureAccrual(kind.value.failureAccrual),
      });
    case "opaque":
      return Object.freeze({ kind: "opaque", routes: compileOpaqueRoutes(kind.value.routes) });
    case "tls":
      checkCount("routes", kind.value.routes.length, LIMITS.maxRoutes);
      return Object.freeze({
        kind: "tls",
        routes: Object.freeze(
          kind.value.routes.map((route) =>
            Object.freeze({
              metadata: metadataFromProto(route.metadata),
              snis: compileHosts(route.snis),
              rules: compileOpaqueRules(route.rules),
            }),
          ),
        ),
      });
  }
}

/**
 * Compiles an `OutboundPolicy` as linkerd `client-policy` does: any invalid part (bad regex, status range
 * outside 1..599, missing backend kind, zero ratio denominator, header injection) rejects the whole
 * message with `MESH_ERR_DESTINATION_INVALID_UPDATE`, and the watch keeps the previous policy.
 */
export function compileOutboundPolicy(message: outbound.OutboundPolicy): OutboundPolicy {
  // Past LIMITS.maxNewRegexesPerMessage a regex is refused, which refuses the whole policy.
  const { value: protocol } = withRegexBudget(() => compileProtocol(message.protocol));
  return Object.freeze({
    kind: "policy",
    metadata: metadataFromProto(message.metadata),
    protocol,
  });
}
