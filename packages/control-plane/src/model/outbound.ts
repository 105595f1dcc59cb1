/**
 * Service authority → io.linkerd.proxy.outbound.OutboundPolicy, as the policy controller builds it
 * (`policy-controller/grpc/src/outbound.rs`, `outbound/http.rs`, `outbound/grpc.rs`,
 * `k8s/index/src/outbound/index.rs`; linkerd-contract.md §7.2, §8.4).
 */

import { parseCidr } from "@inmesh/core";
import { durationFromMs, type grpcRoute, ipAddressToString, type meta, type outbound } from "@inmesh/proto";
import { parseLinkerdDurationMs } from "./durations.js";
import {
  egressFallbackPolicy,
  egressNetworkPolicy,
  isInClusterNetworks,
  resolveEgressNetwork,
} from "./egress.js";
import { DEFAULT_OPAQUE_PORTS, OPAQUE_PORTS_ANNOTATION, parsePortAnnotation } from "./inbound.js";
import { isServiceParent, key, type Model } from "./model.js";
import type { BackendRef, GrpcRouteRes, HttpRouteRes, RouteFilter, ServiceRes } from "./resources.js";
import type { LookupError } from "./types.js";
import { parseWorkload } from "./workload.js";

const DETECT_TIMEOUT_MS = 10_000;
const QUEUE_CAPACITY = 100;
const QUEUE_FAILFAST_MS = 3_000;
const EWMA_DEFAULT_RTT_MS = 30;
const EWMA_DECAY_MS = 10_000;
const RETRY_MAX_REQUEST_BYTES = 64 * 1024;

export interface RouteTimeouts {
  readonly requestMs: number | undefined;
  readonly responseMs: number | undefined;
  readonly idleMs: number | undefined;
}

export interface HttpRetry {
  readonly limit: number;
  readonly timeoutMs: number | undefined;
  readonly statusRanges: ReadonlyArray<{ start: number; end: number }>;
}

export interface GrpcRetry {
  readonly limit: number;
  readonly timeoutMs: number | undefined;
  readonly conditions: ReadonlySet<
    "cancelled" | "deadline-exceeded" | "internal" | "resource-exhausted" | "unavailable"
  >;
}

export interface FailureAccrual {
  readonly maxFailures: number;
  readonly minPenaltyMs: number;
  readonly maxPenaltyMs: number;
  readonly jitter: number;
}

/** Outbound settings from Service, HTTPRoute or GRPCRoute annotations; `errors` lists invalid ones. */
export interface OutboundAnnotations {
  readonly timeouts: RouteTimeouts;
  readonly httpRetry: HttpRetry | undefined;
  readonly grpcRetry: GrpcRetry | undefined;
  readonly accrual: FailureAccrual | undefined;
  readonly errors: ReadonlyArray<{ annotation: string; message: string }>;
}

const GRPC_CONDITIONS = [
  "cancelled",
  "deadline-exceeded",
  "internal",
  "resource-exhausted",
  "unavailable",
] as const;

function statusCode(text: string): number | undefined {
  if (!/^\d+$/.test(text)) return undefined;
  const code = Number(text);
  return code >= 100 && code < 600 ? code : undefined;
}

/**
 * Mirrors `parse_timeouts`, `parse_http_retry`, `parse_grpc_retry` and `parse_accrual_config`. Linkerd logs
 * invalid annotations and ignores the setting; the dev control plane reports them as manifest problems.
 */
export function parseOutboundAnnotations(annotations: Readonly<Record<string, string>>): OutboundAnnotations {
  const errors: Array<{ annotation: string; message: string }> = [];
  const duration = (annotation: string): number | undefined => {
    const text = annotations[annotation];
    if (text === undefined) return undefined;
    const ms = parseLinkerdDurationMs(text);
    if (ms === undefined)
      errors.push({ annotation, message: `${JSON.stringify(text)} is not a duration like 100ms, 10s or 1m` });
    return ms;
  };
  const timeouts: RouteTimeouts = {
    requestMs: duration("timeout.linkerd.io/request"),
    responseMs: duration("timeout.linkerd.io/response"),
    idleMs: duration("timeout.linkerd.io/idle"),
  };

  let limit: number | undefined;
  const limitText = annotations["retry.linkerd.io/limit"];
  if (limitText !== undefined) {
    if (!/^\d+$/.test(limitText) || Number(limitText) > 65535) {
      errors.push({
        annotation: "retry.linkerd.io/limit",
        message: `${JSON.stringify(limitText)} is not a number 0-65535`,
      });
    } else if (Number(limitText) !== 0) {
      limit = Number(limitText);
    }
  }
  let retryTimeoutMs = duration("retry.linkerd.io/timeout");
  if (retryTimeoutMs === 0) retryTimeoutMs = undefined;

  let statusRanges: Array<{ start: number; end: number }> | undefined;
  const httpText = annotations["retry.linkerd.io/http"];
  if (httpText !== undefined) {
    statusRanges = [];
    for (const condition of httpText.split(",")) {
      const lower = condition.toLowerCase();
      const single = statusCode(condition);
      const range = condition.split("-");
      if (lower === "5xx") statusRanges.push({ start: 500, end: 599 });
      else if (lower === "gateway-error") statusRanges.push({ start: 502, end: 504 });
      else if (single !== undefined) statusRanges.push({ start: single, end: single });
      else if (
        range.length === 2 &&
        statusCode(range[0] as string) !== undefined &&
        statusCode(range[1] as string) !== undefined
      ) {
        const start = statusCode(range[0] as string) as number;
        const end = statusCode(range[1] as string) as number;
        if (start <= end) statusRanges.push({ start, end });
        else
          errors.push({
            annotation: "retry.linkerd.io/http",
            message: `invalid range ${JSON.stringify(condition)}`,
          });
      } else {
        errors.push({
          annotation: "retry.linkerd.io/http",
          message: `invalid retry condition ${JSON.stringify(condition)}: use 5xx, gateway-error, NNN or NNN-MMM, comma-separated without spaces`,
        });
      }
    }
  }
  let grpcConditions: Set<GrpcRetry["conditions"] extends ReadonlySet<infer T> ? T : never> | undefined;
  const grpcText = annotations["retry.linkerd.io/grpc"];
  if (grpcText !== undefined) {
    grpcConditions = new Set();
    for (const condition of grpcText.split(",")) {
      const known = GRPC_CONDITIONS.find((c) => c === condition.toLowerCase());
      if (known) grpcConditions.add(known);
      else {
        errors.push({
          annotation: "retry.linkerd.io/grpc",
          message: `unknown gRPC retry condition ${JSON.stringify(condition)}: use ${GRPC_CONDITIONS.join(", ")}`,
        });
      }
    }
  }
  const anyRetry = limit !== undefined || retryTimeoutMs !== undefined;
  const httpRetry: HttpRetry | undefined =
    anyRetry || statusRanges !== undefined
      ? { limit: limit ?? 1, timeoutMs: retryTimeoutMs, statusRanges: statusRanges ?? [] }
      : undefined;
  const grpcRetry: GrpcRetry | undefined =
    anyRetry || grpcConditions !== undefined
      ? { limit: limit ?? 1, timeoutMs: retryTimeoutMs, conditions: grpcConditions ?? new Set() }
      : undefined;

  let accrual: FailureAccrual | undefined;
  const mode = annotations["balancer.linkerd.io/failure-accrual"];
  if (mode !== undefined) {
    if (mode !== "consecutive") {
      errors.push({
        annotation: "balancer.linkerd.io/failure-accrual",
        message: `unsupported failure accrual mode ${JSON.stringify(mode)}; use consecutive`,
      });
    } else {
      const prefix = "balancer.linkerd.io/failure-accrual-consecutive-";
      const maxText = annotations[`${prefix}max-failures`];
      let maxFailures = 7;
      if (maxText !== undefined) {
        if (/^\d+$/.test(maxText) && Number(maxText) <= 4_294_967_295) maxFailures = Number(maxText);
        else
          errors.push({
            annotation: `${prefix}max-failures`,
            message: `${JSON.stringify(maxText)} is not a number`,
          });
      }
      const maxPenaltyMs = duration(`${prefix}max-penalty`) ?? 60_000;
      const minPenaltyMs = duration(`${prefix}min-penalty`) ?? 1_000;
      const jitterText = annotations[`${prefix}jitter-ratio`];
      let jitter = 0.5;
      if (jitterText !== undefined) {
        const value = Number(jitterText);
        if (jitterText.trim() === "" || !Number.isFinite(value) || value < 0 || value > 100) {
          errors.push({
            annotation: `${prefix}jitter-ratio`,
            message: `${JSON.stringify(jitterText)} is not a number between 0 and 100`,
          });
        } else jitter = value;
      }
      if (minPenaltyMs > maxPenaltyMs)
        errors.push({ annotation: `${prefix}min-penalty`, message: "cannot exceed max-penalty" });
      if (maxPenaltyMs === 0) errors.push({ annotation: `${prefix}max-penalty`, message: "cannot be zero" });
      accrual = { maxFailures, minPenaltyMs, maxPenaltyMs, jitter };
    }
  }
  return { timeouts, httpRetry, grpcRetry, accrual, errors };
}

function ms(value: number | undefined) {
  return value === undefined ? undefined : durationFromMs(value);
}

function serviceMeta(name: string, namespace: string, port: number): meta.Metadata {
  return {
    kind: {
      $case: "resource",
      value: { group: "core", kind: "Service", name, namespace, section: "", port },
    },
  };
}

export function serviceAuthority(model: Model, name: string, namespace: string, port: number): string {
  return `${name}.${namespace}.svc.${model.options.clusterDomain}:${port}`;
}

function balancedBackend(model: Model, name: string, namespace: string, port: number): outbound.Backend {
  return {
    metadata: serviceMeta(name, namespace, port),
    queue: { capacity: QUEUE_CAPACITY, failfastTimeout: durationFromMs(QUEUE_FAILFAST_MS) },
    kind: {
      $case: "balancer",
      value: {
        discovery: {
          kind: { $case: "dst", value: { path: serviceAuthority(model, name, namespace, port) } },
        },
        load: {
          $case: "peakEwma",
          value: { defaultRtt: durationFromMs(EWMA_DEFAULT_RTT_MS), decay: durationFromMs(EWMA_DECAY_MS) },
        },
      },
    },
  };
}

function toTimeouts(timeouts: RouteTimeouts) {
  return { request: ms(timeouts.requestMs), response: ms(timeouts.responseMs), idle: ms(timeouts.idleMs) };
}

function backoff(): outbound.ExponentialBackoff {
  return {
    minBackoff: durationFromMs(25),
    maxBackoff: durationFromMs(250),
    jitterRatio: 1,
    respectRetryAfterHint: false,
  };
}

function toHttpRetry(retry: HttpRetry | undefined): outbound.HttpRoute_Retry | undefined {
  if (!retry) return undefined;
  return {
    maxRetries: retry.limit,
    maxRequestBytes: RETRY_MAX_REQUEST_BYTES,
    conditions: { statusRanges: retry.statusRanges.map((r) => ({ ...r })) },
    timeout: ms(retry.timeoutMs),
    backoff: backoff(),
  };
}

function toGrpcRetry(retry: GrpcRetry | undefined): outbound.GrpcRoute_Retry | undefined {
  if (!retry) return undefined;
  const has = (c: GrpcRetry["conditions"] extends ReadonlySet<infer T> ? T : never) =>
    retry.conditions.has(c);
  return {
    maxRetries: retry.limit,
    maxRequestBytes: RETRY_MAX_REQUEST_BYTES,
    conditions: {
      cancelled: has("cancelled"),
      deadineExceeded: has("deadline-exceeded"),
      resourceExhausted: has("resource-exhausted"),
      internal: has("internal"),
      unavailable: has("unavailable"),
    },
    timeout: ms(retry.timeoutMs),
    backoff: backoff(),
  };
}

function toAccrual(accrual: FailureAccrual | undefined): outbound.FailureAccrual | undefined {
  if (!accrual) return undefined;
  return {
    kind: {
      $case: "consecutiveFailures",
      value: {
        maxFailures: accrual.maxFailures,
        backoff: {
          minBackoff: durationFromMs(accrual.minPenaltyMs),
          maxBackoff: durationFromMs(accrual.maxPenaltyMs),
          jitterRatio: Math.fround(accrual.jitter),
          respectRetryAfterHint: false,
        },
      },
    },
    ejection: undefined,
  };
}

function httpFilters(filters: readonly RouteFilter[]): outbound.HttpRoute_Filter[] {
  return filters.map((filter): outbound.HttpRoute_Filter => {
    if (filter.kind === "requestHeaderModifier")
      return { kind: { $case: "requestHeaderModifier", value: filter.value } };
    if (filter.kind === "responseHeaderModifier")
      return { kind: { $case: "responseHeaderModifier", value: filter.value } };
    return { kind: { $case: "redirect", value: filter.value } };
  });
}

/** gRPC routes carry only failure injectors and request header modifiers; the rest is dropped. */
function grpcFilters(filters: readonly RouteFilter[]): outbound.GrpcRoute_Filter[] {
  return filters.flatMap((filter): outbound.GrpcRoute_Filter[] =>
    filter.kind === "requestHeaderModifier"
      ? [{ kind: { $case: "requestHeaderModifier", value: filter.value } }]
      : [],
  );
}

function isDefaultTimeouts(timeouts: RouteTimeouts): boolean {
  return (
    timeouts.requestMs === undefined && timeouts.responseMs === undefined && timeouts.idleMs === undefined
  );
}

function routeMeta(route: HttpRouteRes | GrpcRouteRes): meta.Metadata {
  return {
    kind: {
      $case: "resource",
      value: {
        group: route.group,
        kind: route.kind,
        name: route.meta.name,
        namespace: route.meta.namespace,
        section: "",
        port: 0,
      },
    },
  };
}

function weightedBackends(model: Model, refs: readonly BackendRef[]) {
  return refs.map((ref) => ({
    weight: ref.weight,
    backend: balancedBackend(model, ref.name, ref.namespace, ref.port),
    filters: ref.filters,
  }));
}

interface ServicePolicyContext {
  readonly model: Model;
  readonly service: ServiceRes;
  readonly port: number;
  readonly backend: outbound.Backend;
  readonly annotations: OutboundAnnotations;
}

function httpRoute(ctx: ServicePolicyContext, route: HttpRouteRes): outbound.HttpRoute {
  const routeAnnotations = parseOutboundAnnotations(route.meta.annotations);
  return {
    metadata: routeMeta(route),
    hosts: [...route.hostnames],
    rules: route.rules.map((rule): outbound.HttpRoute_Rule => {
      let timeouts = routeAnnotations.timeouts;
      if (timeouts.requestMs === undefined && rule.requestTimeoutMs !== undefined)
        timeouts = { ...timeouts, requestMs: rule.requestTimeoutMs };
      if (isDefaultTimeouts(timeouts)) timeouts = ctx.annotations.timeouts;
      const retry = routeAnnotations.httpRetry ?? ctx.annotations.httpRetry;
      const backends: outbound.HttpRoute_Distribution =
        rule.backendRefs.length === 0
          ? {
              kind: {
                $case: "firstAvailable",
                value: { backends: [{ backend: ctx.backend, filters: [], requestTimeout: undefined }] },
              },
            }
          : {
              kind: {
                $case: "randomAvailable",
                value: {
                  backends: weightedBackends(ctx.model, rule.backendRefs).map((b) => ({
                    weight: b.weight,
                    backend: {
                      backend: b.backend,
                      filters: httpFilters(b.filters),
                      requestTimeout: undefined,
                    },
                  })),
                },
              },
            };
      return {
        matches: [...rule.matches],
        filters: httpFilters(rule.filters),
        backends,
        requestTimeout: ms(timeouts.requestMs),
        timeouts: toTimeouts(timeouts),
        retry: toHttpRetry(retry),
        allowL5dRequestHeaders: ctx.model.options.allowL5dRequestHeaders,
      };
    }),
  };
}

function grpcRouteProto(ctx: ServicePolicyContext, route: GrpcRouteRes): outbound.GrpcRoute {
  const routeAnnotations = parseOutboundAnnotations(route.meta.annotations);
  return {
    metadata: routeMeta(route),
    hosts: [...route.hostnames],
    rules: route.rules.map((rule): outbound.GrpcRoute_Rule => {
      const timeouts = isDefaultTimeouts(routeAnnotations.timeouts)
        ? ctx.annotations.timeouts
        : routeAnnotations.timeouts;
      const retry = routeAnnotations.grpcRetry ?? ctx.annotations.grpcRetry;
      const backends: outbound.GrpcRoute_Distribution =
        rule.backendRefs.length === 0
          ? {
              kind: {
                $case: "firstAvailable",
                value: { backends: [{ backend: ctx.backend, filters: [], requestTimeout: undefined }] },
              },
            }
          : {
              kind: {
                $case: "randomAvailable",
                value: {
                  backends: weightedBackends(ctx.model, rule.backendRefs).map((b) => ({
                    weight: b.weight,
                    backend: {
                      backend: b.backend,
                      filters: grpcFilters(b.filters),
                      requestTimeout: undefined,
                    },
                  })),
                },
              },
            };
      return {
        matches: [...rule.matches] as grpcRoute.GrpcRouteMatch[],
        filters: grpcFilters(rule.filters),
        backends,
        requestTimeout: ms(timeouts.requestMs),
        timeouts: toTimeouts(timeouts),
        retry: toGrpcRetry(retry),
        allowL5dRequestHeaders: ctx.model.options.allowL5dRequestHeaders,
      };
    }),
  };
}

function defaultHttpRoute(ctx: ServicePolicyContext): outbound.HttpRoute {
  const timeouts = ctx.annotations.timeouts;
  return {
    metadata: { kind: { $case: "default", value: "http" } },
    hosts: [],
    rules: [
      {
        matches: [
          {
            path: { kind: { $case: "prefix", value: "/" } },
            headers: [],
            queryParams: [],
            method: undefined,
          },
        ],
        filters: [],
        backends: {
          kind: {
            $case: "firstAvailable",
            value: { backends: [{ backend: ctx.backend, filters: [], requestTimeout: undefined }] },
          },
        },
        requestTimeout: ms(timeouts.requestMs),
        timeouts: toTimeouts(timeouts),
        retry: toHttpRetry(ctx.annotations.httpRetry),
        allowL5dRequestHeaders: ctx.model.options.allowL5dRequestHeaders,
      },
    ],
  };
}

function opaqueRoute(backend: outbound.Backend): outbound.OpaqueRoute {
  return {
    metadata: { kind: { $case: "default", value: "opaq" } },
    rules: [
      {
        backends: { kind: { $case: "firstAvailable", value: { backends: [{ backend, filters: [] }] } } },
        filters: [],
      },
    ],
  };
}

/** Route creation timestamps first (oldest first), then names (`timestamp_then_name`). */
function byTimestampThenName(a: HttpRouteRes | GrpcRouteRes, b: HttpRouteRes | GrpcRouteRes): number {
  const at = a.meta.creationTimestampMs;
  const bt = b.meta.creationTimestampMs;
  if (at !== undefined && bt === undefined) return -1;
  if (at === undefined && bt !== undefined) return 1;
  if (at !== undefined && bt !== undefined && at !== bt) return at - bt;
  return a.meta.name < b.meta.name ? -1 : a.meta.name > b.meta.name ? 1 : 0;
}

/**
 * Producer routes (in the Service's namespace) apply to every client; consumer routes (in another
 * namespace) only to clients of that namespace. A parentRef with a port applies to that port only.
 */
function routesFor<R extends HttpRouteRes | GrpcRouteRes>(
  routes: readonly R[],
  service: ServiceRes,
  port: number,
  sourceNamespace: string,
): R[] {
  return routes
    .filter(
      (route) =>
        (route.meta.namespace === service.meta.namespace || route.meta.namespace === sourceNamespace) &&
        route.parentRefs.some(
          (parent) =>
            isServiceParent(parent) &&
            parent.name === service.meta.name &&
            parent.namespace === service.meta.namespace &&
            (parent.port === undefined || parent.port === port),
        ),
    )
    .sort(byTimestampThenName);
}

export function serviceOpaquePorts(service: ServiceRes): ReadonlySet<number> {
  const annotated = service.meta.annotations[OPAQUE_PORTS_ANNOTATION];
  return annotated === undefined ? DEFAULT_OPAQUE_PORTS : parsePortAnnotation(annotated);
}

export function servicePolicy(
  model: Model,
  service: ServiceRes,
  port: number,
  sourceNamespace: string,
): outbound.OutboundPolicy {
  const name = service.meta.name;
  const namespace = service.meta.namespace;
  const metadata = serviceMeta(name, namespace, port);
  if (!service.ports.some((p) => p.port === port)) {
    // The controller answers a port the Service does not define with a forbidden opaque route.
    return {
      metadata,
      protocol: {
        kind: {
          $case: "opaque",
          value: {
            routes: [
              {
                metadata: { kind: { $case: "default", value: "undefined-port" } },
                rules: [
                  {
                    backends: { kind: { $case: "empty", value: {} } },
                    filters: [{ kind: { $case: "forbidden", value: {} } }],
                  },
                ],
              },
            ],
          },
        },
      },
    };
  }
  const backend = balancedBackend(model, name, namespace, port);
  const ctx: ServicePolicyContext = {
    model,
    service,
    port,
    backend,
    annotations: parseOutboundAnnotations(service.meta.annotations),
  };
  if (serviceOpaquePorts(service).has(port)) {
    return { metadata, protocol: { kind: { $case: "opaque", value: { routes: [opaqueRoute(backend)] } } } };
  }
  const failureAccrual = toAccrual(ctx.annotations.accrual);
  const grpcRoutes = routesFor(model.resources.grpcRoutes, service, port, sourceNamespace);
  if (grpcRoutes.length > 0) {
    return {
      metadata,
      protocol: {
        kind: {
          $case: "grpc",
          value: { routes: grpcRoutes.map((r) => grpcRouteProto(ctx, r)), failureAccrual },
        },
      },
    };
  }
  const httpRoutes = routesFor(model.resources.httpRoutes, service, port, sourceNamespace).map((r) =>
    httpRoute(ctx, r),
  );
  const routes = httpRoutes.length > 0 ? httpRoutes : [defaultHttpRoute(ctx)];
  return {
    metadata,
    protocol: {
      kind: {
        $case: "detect",
        value: {
          timeout: durationFromMs(DETECT_TIMEOUT_MS),
          opaque: { routes: [opaqueRoute(backend)] },
          http1: { routes, failureAccrual },
          http2: { routes, failureAccrual },
        },
      },
    },
  };
}

/** `<name>.<namespace>.svc[.<cluster-domain>][:port]`, port 80 when absent (`lookup_authority`). */
function parseAuthority(
  model: Model,
  authority: string,
): { ok: true; name: string; namespace: string; port: number } | LookupError {
  const match = /^([^:[\]/\s]*)(?::(\d{1,5}))?$/.exec(authority);
  if (!match) return { ok: false, code: "InvalidArgument", message: "invalid authority" };
  const host = (match[1] as string).replace(/\.$/, "");
  if (host === "") return { ok: false, code: "InvalidArgument", message: "authority must have a host" };
  let port = match[2] === undefined ? 80 : Number(match[2]);
  if (port > 65535) return { ok: false, code: "InvalidArgument", message: "invalid authority" };
  if (port === 0) port = 80;
  const domain = model.options.clusterDomain;
  const short = host.endsWith(`.svc.${domain}`) ? host.slice(0, -(domain.length + 1)) : host;
  const parts = short.split(".");
  if (parts.length !== 3 || parts[2] !== "svc" || parts[0] === "" || parts[1] === "") {
    return {
      ok: false,
      code: "NotFound",
      message: `authority must be of the form <name>.<namespace>.svc.${domain}`,
    };
  }
  return { ok: true, name: parts[0] as string, namespace: parts[1] as string, port };
}

export function outboundPolicy(
  model: Model,
  spec: outbound.TrafficSpec,
): { ok: true; policy: outbound.OutboundPolicy } | LookupError {
  const target = spec.target;
  if (!target) return { ok: false, code: "InvalidArgument", message: "target is required" };
  const workload = parseWorkload(spec.sourceWorkload);
  if (!workload.ok) return { ok: false, code: "InvalidArgument", message: workload.message };
  const sourceNamespace = workload.workload.namespace;
  if (target.$case === "authority") {
    const parsed = parseAuthority(model, target.value);
    if (!parsed.ok) return parsed;
    const service = model.servicesByKey.get(key(parsed.namespace, parsed.name));
    if (!service) return { ok: false, code: "NotFound", message: "unknown target" };
    return { ok: true, policy: servicePolicy(model, service, parsed.port, sourceNamespace) };
  }
  const port = target.value.port;
  if (port > 65535) return { ok: false, code: "InvalidArgument", message: "port outside valid range" };
  if (port === 0) return { ok: false, code: "InvalidArgument", message: "port cannot be zero" };
  const ip = ipAddressToString(target.value.ip);
  if (ip === undefined)
    return { ok: false, code: "InvalidArgument", message: "traffic target must have an IP" };
  // Only cluster IPs name a Service. Anything else gets NotFound, on which the proxy forwards to the
  // original destination (using the profile endpoint for identity), which is what a pod IP needs.
  const service = model.resources.services.find((s) => s.clusterIPs.includes(ip));
  if (service) return { ok: true, policy: servicePolicy(model, service, port, sourceNamespace) };
  // Not a Service: an EgressNetwork's, else outside the cluster (forwarded as addressed), else a pod IP
  // (NotFound, the proxy then forwards to it with the identity its profile endpoint gives).
  const clusterNetworks = model.options.clusterNetworks.map((text) => parseCidr(text));
  const network = resolveEgressNetwork(model.resources.egressNetworks, clusterNetworks, ip, sourceNamespace);
  if (network) return { ok: true, policy: egressNetworkPolicy(network, ip, port) };
  if (!isInClusterNetworks(clusterNetworks, ip)) return { ok: true, policy: egressFallbackPolicy(ip, port) };
  return { ok: false, code: "NotFound", message: "No such service" };
}
