import { debuglog } from "node:util";
import {
  createMeshChannelSubscription,
  type DecisionSummary,
  type InboundCallMessage,
  isLoopbackHost,
  MeshChannel,
  type MeshChannelMessages,
  MeshError,
  MeshErrorCode,
  type OutboundAttemptMessage,
  type OutboundCallMessage,
  type PeerIdentity,
  type ResourceLabels,
  type TcpAuthzMessage,
  type TcpConnectionMessage,
} from "@inmesh/core";
import {
  classification,
  clientTlsLabels,
  discoveryLabels,
  errnoLabel,
  errorLabel,
  grpcStatusLabel,
  resourceLabels,
  serverTlsLabels,
  splitAddress,
  statusCodeLabel,
  targetLabels,
} from "./labels.js";
import { renderProcessMetrics } from "./process-metrics.js";
import {
  createFamily,
  createPartTable,
  type Family,
  type FamilyDefinition,
  type LabelPairs,
  type LabelPart,
  type LabelText,
  type Parts,
  renderLabels,
  type Series,
} from "./registry.js";
import {
  backendLabels,
  grpcStatusName,
  httpStatusValue,
  type ParentRef,
  parentRef,
  routeErrorValue,
  routeLabels,
} from "./route-labels.js";

const log = debuglog("mesh");

/** linkerd2-proxy's `response_latency_ms` buckets ([LC] §9.2). */
export const RESPONSE_LATENCY_BUCKETS_MS: readonly number[] = Object.freeze([
  1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000, 2000, 3000, 4000, 5000, 10000, 20000,
  30000, 40000, 50000,
]);

/** Name of the counter of observations that went to an overflow series. */
export const SERIES_DROPPED_METRIC = "inmesh_metrics_series_dropped_total";

export interface MeshMetricsOptions {
  /**
   * Most series one metric family may hold, overflow series included. Label sets past the cap are merged
   * into an overflow series (`overflow="true"`) and counted in `inmesh_metrics_series_dropped_total`.
   * @default 2000
   */
  maxSeriesPerFamily?: number;
  /** Longer label values are truncated. @default 256 */
  maxLabelValueLength?: number;
  /**
   * Series not recorded into for this long are dropped (Linkerd's `LINKERD2_PROXY_METRICS_RETAIN_IDLE`),
   * so departed endpoints and peers free their room under the cap. @default 600000 (10 minutes)
   */
  retainIdleMs?: number;
  /**
   * Read at every scrape: when the current certificate expires (Unix ms), for callers that hold the
   * identity state directly instead of (or as well as) publishing `mesh:identity:changed`.
   */
  certificateExpiresAtMs?: () => number | undefined;
  /** Clock for idle eviction and the refresh timestamp. @default Date.now */
  nowMs?: () => number;
  /** Append the `process_*` families (start time, CPU, memory, fds) to `render()`. @default true */
  processMetrics?: boolean;
}

export interface MeshMetrics {
  /** Starts recording from the `mesh:*` channels. Idempotent. */
  subscribe(): void;
  /** Stops recording; what was recorded stays. Idempotent. */
  unsubscribe(): void;
  readonly subscribed: boolean;
  /** The Prometheus text exposition (format 0.0.4). */
  render(): string;
  /** Series currently held by one family, or by all families when no name is given. */
  seriesCount(family?: string): number;
}

interface ResolvedOptions {
  readonly maxSeriesPerFamily: number;
  readonly maxLabelValueLength: number;
  readonly retainIdleMs: number;
  readonly certificateExpiresAtMs: (() => number | undefined) | undefined;
  readonly nowMs: () => number;
  readonly processMetrics: boolean;
}

function positiveInteger(name: string, value: unknown, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max)
    throw new MeshError(MeshErrorCode.INVALID_ARG, `${name} must be an integer from ${min} to ${max}`, {
      details: { option: name, value },
    });
  return value;
}

function optionalFunction<T>(name: string, value: T | undefined): T | undefined {
  if (value !== undefined && typeof value !== "function")
    throw new MeshError(MeshErrorCode.INVALID_ARG, `${name} must be a function`, {
      details: { option: name },
    });
  return value;
}

function resolveOptions(options: MeshMetricsOptions): ResolvedOptions {
  return Object.freeze({
    maxSeriesPerFamily: positiveInteger(
      "maxSeriesPerFamily",
      options.maxSeriesPerFamily,
      2000,
      16,
      1_000_000,
    ),
    maxLabelValueLength: positiveInteger("maxLabelValueLength", options.maxLabelValueLength, 256, 16, 4096),
    retainIdleMs: positiveInteger("retainIdleMs", options.retainIdleMs, 600_000, 1000, 7 * 24 * 3_600_000),
    certificateExpiresAtMs: optionalFunction("certificateExpiresAtMs", options.certificateExpiresAtMs),
    nowMs: optionalFunction("nowMs", options.nowMs) ?? Date.now,
    processMetrics: options.processMetrics !== false,
  });
}

/** linkerd2-proxy's `RouteMetrics` request and backend response histogram buckets, in seconds. */
export const ROUTE_REQUEST_BUCKETS_SECONDS: readonly number[] = Object.freeze([0.05, 0.5, 1, 10]);
export const ROUTE_BACKEND_BUCKETS_SECONDS: readonly number[] = Object.freeze([
  0.025, 0.05, 0.1, 0.25, 0.5, 1, 10,
]);

/** The `outbound_<protocol>_route_*` families linkerd-viz's `stat-outbound` reads. */
function routeFamilies<P extends "http" | "grpc">(protocol: P) {
  const prefix = `outbound_${protocol}_route`;
  const p = protocol === "http" ? "Http" : "Grpc";
  return {
    [`route${p}RequestDuration`]: {
      name: `${prefix}_request_duration_seconds`,
      help: "The time between request initialization and response completion.",
      type: "histogram",
      buckets: ROUTE_REQUEST_BUCKETS_SECONDS,
    },
    [`route${p}RequestStatuses`]: {
      name: `${prefix}_request_statuses_total`,
      help: "Completed request-response streams.",
      type: "counter",
    },
    [`route${p}BackendRequests`]: {
      name: `${prefix}_backend_requests_total`,
      help: "The total number of requests dispatched.",
      type: "counter",
    },
    [`route${p}BackendDuration`]: {
      name: `${prefix}_backend_response_duration_seconds`,
      help: "The time between request completion and response completion.",
      type: "histogram",
      buckets: ROUTE_BACKEND_BUCKETS_SECONDS,
    },
    [`route${p}BackendStatuses`]: {
      name: `${prefix}_backend_response_statuses_total`,
      help: "Completed responses.",
      type: "counter",
    },
    [`route${p}Retries`]: {
      name: `${prefix}_retry_requests_total`,
      help: "Retry requests emitted.",
      type: "counter",
    },
  } as Record<`route${typeof p}${RouteFamilySuffix}`, FamilyDefinition>;
}

type RouteFamilySuffix =
  | "RequestDuration"
  | "RequestStatuses"
  | "BackendRequests"
  | "BackendDuration"
  | "BackendStatuses"
  | "Retries";

const DIRECTIONS = ["inbound", "outbound"];
const keepDirection = { direction: DIRECTIONS };

const definitions = {
  requestTotal: {
    name: "request_total",
    help: "Total count of HTTP requests.",
    type: "counter",
    overflowKeep: keepDirection,
  },
  responseTotal: {
    name: "response_total",
    help: "Total count of HTTP responses.",
    type: "counter",
    overflowKeep: { direction: DIRECTIONS, classification: ["success", "failure"] },
  },
  responseLatency: {
    name: "response_latency_ms",
    help: "Elapsed times between a request's headers being received and its response stream completing.",
    type: "histogram",
    buckets: RESPONSE_LATENCY_BUCKETS_MS,
    overflowKeep: keepDirection,
  },
  ...routeFamilies("http"),
  ...routeFamilies("grpc"),
  httpAuthzAllow: {
    name: "inbound_http_authz_allow_total",
    help: "The total number of inbound HTTP requests that were authorized.",
    type: "counter",
  },
  httpAuthzDeny: {
    name: "inbound_http_authz_deny_total",
    help: "The total number of inbound HTTP requests that could not be processed due to a proxy error.",
    type: "counter",
  },
  httpLocalRateLimit: {
    name: "inbound_http_local_ratelimit_total",
    help: "The total number of inbound HTTP requests refused by a local rate limit.",
    type: "counter",
  },
  httpRouteNotFound: {
    name: "inbound_http_route_not_found_total",
    help: "The number of inbound requests that did not match a route.",
    type: "counter",
  },
  tcpOpenTotal: {
    name: "tcp_open_total",
    help: "Total count of opened connections.",
    type: "counter",
    overflowKeep: keepDirection,
  },
  tcpOpenConnections: {
    name: "tcp_open_connections",
    help: "Number of currently-open connections.",
    type: "gauge",
    overflowKeep: keepDirection,
  },
  tcpReadBytes: {
    name: "tcp_read_bytes_total",
    help: "Total count of bytes read from peers.",
    type: "counter",
    overflowKeep: keepDirection,
  },
  tcpWriteBytes: {
    name: "tcp_write_bytes_total",
    help: "Total count of bytes written to peers.",
    type: "counter",
    overflowKeep: keepDirection,
  },
  tcpCloseTotal: {
    name: "tcp_close_total",
    help: "Total count of closed connections.",
    type: "counter",
    overflowKeep: keepDirection,
  },
  tcpAuthzAllow: {
    name: "inbound_tcp_authz_allow_total",
    help: "The total number of inbound TCP connections that were authorized.",
    type: "counter",
  },
  tcpAuthzDeny: {
    name: "inbound_tcp_authz_deny_total",
    help: "The total number of inbound TCP connections that were denied.",
    type: "counter",
  },
  tcpAuthzTerminate: {
    name: "inbound_tcp_authz_terminate_total",
    help: "The total number of inbound TCP connections that were terminated due to an authorization change.",
    type: "counter",
  },
  certExpiration: {
    name: "control_identity_cert_expiration_timestamp_seconds",
    help: "Time when this proxy's current mTLS identity certificate will expire (in seconds since the UNIX epoch).",
    type: "gauge",
    uncapped: true,
  },
  // The name older proxies used, still read by dashboards and `linkerd check --proxy` of older CLIs.
  certExpirationLegacy: {
    name: "identity_cert_expiration_timestamp_seconds",
    help: "Time when this proxy's current mTLS identity certificate will expire (in seconds since the UNIX epoch).",
    type: "gauge",
    uncapped: true,
  },
  certRefresh: {
    name: "control_identity_cert_refresh_timestamp_seconds",
    help: "Time when this proxy's mTLS identity certificate was last refreshed (in seconds since the UNIX epoch).",
    type: "gauge",
    uncapped: true,
  },
  certRefreshes: {
    name: "control_identity_cert_refreshes_total",
    help: "The total number of identity certificate refreshes, by result.",
    type: "counter",
    uncapped: true,
  },
  seriesDropped: {
    name: SERIES_DROPPED_METRIC,
    help: "Observations recorded into a family's overflow series because the family reached its series cap.",
    type: "counter",
    uncapped: true,
  },
} satisfies Record<string, FamilyDefinition>;

type FamilyKey = keyof typeof definitions;

/** Identity statuses (from `mesh:identity:changed`) that count as a successful or a failed refresh. */
const IDENTITY_OK = new Set(["issued", "refreshed", "ready", "certified", "ok"]);
const IDENTITY_ERROR = /error|fail/i;

const NO_PARTS: Parts = [];

/**
 * `[...parts, first, second?]` written into a scratch array that is reused call after call: families
 * only read the parts they are given (a new series keeps their text, not the array), and recording is
 * synchronous, so one scratch array per use saves an array per call.
 */
function partsWith(scratch: LabelPart[], parts: Parts, first: LabelPart, second?: LabelPart): Parts {
  let length = 0;
  for (const part of parts) scratch[length++] = part;
  scratch[length++] = first;
  if (second !== undefined) scratch[length++] = second;
  scratch.length = length;
  return scratch;
}

/** Bounded caches keyed by strings: cleared when full, since they only save work. */
function boundedCache<TValue>(max: number) {
  const map = new Map<string, TValue>();
  return (key: string, compute: () => TValue): TValue => {
    const cached = map.get(key);
    if (cached !== undefined || map.has(key)) return cached as TValue;
    if (map.size >= max) map.clear();
    const value = compute();
    map.set(key, value);
    return value;
  };
}

/**
 * Records linkerd2-proxy's metrics ([LC] §9) from the `mesh:*` diagnostics channels. Paths are never
 * labels, and every family has a series cap, so attacker-chosen values cannot grow it without bound.
 */
export function createMeshMetrics(options: MeshMetricsOptions = {}): MeshMetrics {
  const config = resolveOptions(options);
  const limits = {
    maxSeriesPerFamily: config.maxSeriesPerFamily,
    maxLabelValueLength: config.maxLabelValueLength,
    retainIdleMs: config.retainIdleMs,
    nowMs: config.nowMs,
  };
  const table = createPartTable(Math.max(1024, config.maxSeriesPerFamily * 8));
  const families = {} as Record<FamilyKey, Family>;
  // The dropped counter is itself uncapped; its only label is a family name from the fixed table.
  const droppedParts = new Map<string, Parts>();
  const onOverflow = (family: string) => {
    let parts = droppedParts.get(family);
    if (!parts) {
      parts = [table.part(`family="${family}"`)];
      droppedParts.set(family, parts);
    }
    families.seriesDropped.inc(parts);
  };
  for (const key of Object.keys(definitions) as FamilyKey[])
    families[key] = createFamily(definitions[key], limits, onOverflow);

  // State kept per message, so the end of a call or connection updates what its start created.
  const openConnections = new WeakMap<TcpConnectionMessage, Series>();
  const callsWithAttempts = new WeakSet<OutboundCallMessage>();
  let certificateExpiresAtMs: number | undefined;

  // Subscribers run inside the request path, so the label fragments that repeat (a connection's peer,
  // a policy's resources, a local target, a status) are rendered and interned once and then reused.
  const maxLength = config.maxLabelValueLength;
  const render = (pairs: LabelPairs): LabelText => renderLabels(pairs, maxLength);
  const part = (pairs: LabelPairs) => table.part(render(pairs));

  const INBOUND = table.part('direction="inbound"');
  const OUTBOUND = table.part('direction="outbound"');
  const TCP_INBOUND = table.part('direction="inbound",peer="src"');
  const TCP_OUTBOUND = table.part('direction="outbound",peer="dst"');
  const EMPTY = table.part("");
  const RESULT_OK: Parts = [table.part('result="ok"')];
  const RESULT_ERROR: Parts = [table.part('result="error"')];
  // Scratch arrays for the label parts of one call (see partsWith).
  const inboundScratch: LabelPart[] = [EMPTY, EMPTY, EMPTY, EMPTY, EMPTY, EMPTY, EMPTY];
  const responseScratch: LabelPart[] = [];
  const latencyScratch: LabelPart[] = [];

  const peerParts = new WeakMap<PeerIdentity, LabelPart>();
  const serverTls = (peer: PeerIdentity | undefined): LabelPart => {
    if (!peer) return EMPTY;
    const cached = peerParts.get(peer);
    if (cached) return cached;
    const value = part(serverTlsLabels(peer));
    peerParts.set(peer, value);
    return value;
  };
  const resourceParts = {
    srv: new WeakMap<ResourceLabels, LabelPart>(),
    route: new WeakMap<ResourceLabels, LabelPart>(),
    authz: new WeakMap<ResourceLabels, LabelPart>(),
  };
  const resource = (prefix: "srv" | "route" | "authz", value: ResourceLabels | undefined) => {
    if (!value) return EMPTY;
    const cache = resourceParts[prefix];
    const cached = cache.get(value);
    if (cached) return cached;
    const created = part(resourceLabels(prefix, value));
    cache.set(value, created);
    return created;
  };
  // Looked up for every call: maps keyed by the values themselves, so a known target costs no key string
  // or closure per call (what metrics allocated per request counted towards the young generation: S8).
  const targets = new Map<number | undefined, Map<string | undefined, LabelPart>>();
  let targetCount = 0;
  const target = (address: string | undefined, port: number | undefined): LabelPart => {
    let byAddress = targets.get(port);
    const cached = byAddress?.get(address);
    if (cached) return cached;
    if (targetCount >= 256) {
      targets.clear();
      targetCount = 0;
      byAddress = undefined;
    }
    if (!byAddress) {
      byAddress = new Map();
      targets.set(port, byAddress);
    }
    const created = part(targetLabels(address, port));
    byAddress.set(address, created);
    targetCount += 1;
    return created;
  };
  const portPart = (name: "srv_port" | "target_port") => {
    const byPort = new Map<number, LabelPart>();
    return (port: number): LabelPart => {
      const cached = byPort.get(port);
      if (cached) return cached;
      if (byPort.size >= 256) byPort.clear();
      const created = part([[name, String(port)]]);
      byPort.set(port, created);
      return created;
    };
  };
  const srvPort = portPart("srv_port");
  const targetPort = portPart("target_port");
  const authorities = boundedCache<LabelPart>(1024);
  const authority = (value: string) => authorities(value, () => part([["authority", value]]));
  const labelObjects = new WeakMap<object, number>();
  let endpointObjectIds = 0;
  const endpoints = boundedCache<LabelPart>(1024);
  const endpoint = (message: OutboundAttemptMessage) => {
    const address = message.endpointAddress;
    if (!address) return EMPTY;
    // Discovery hands out one labels object per endpoint update, so its identity stands for its content.
    let labelsId = 0;
    const labels = message.endpointLabels;
    if (labels) {
      labelsId = labelObjects.get(labels) ?? 0;
      if (labelsId === 0) {
        endpointObjectIds += 1;
        labelsId = endpointObjectIds;
        labelObjects.set(labels, labelsId);
      }
    }
    return endpoints(`${address}|${message.serverIdentity ?? ""}|${labelsId}`, () =>
      part([
        ...targetLabels(address, undefined),
        ...clientTlsLabels(message.serverIdentity, isLoopbackHost(splitAddress(address).ip ?? "")),
        ...discoveryLabels(message.endpointLabels),
      ]),
    );
  };
  // Status and outcome fragments come from small fixed sets once mapped, so they are constants.
  // Keyed by the numbers themselves (every out-of-range value shares one key), so no label string is
  // built per call once a status has been seen.
  const statuses = new Map<number, LabelPart>();
  const status = (statusCode: number | undefined): LabelPart => {
    // statusCodeLabel's ranges: a valid code is its own key, every invalid one shares -2.
    const key =
      statusCode === undefined
        ? -1
        : Number.isInteger(statusCode) && statusCode >= 100 && statusCode <= 599
          ? statusCode
          : -2;
    let cached = statuses.get(key);
    if (!cached) {
      cached = part([["status_code", statusCodeLabel(statusCode)]]);
      statuses.set(key, cached);
    }
    return cached;
  };
  const outcomes = new Map<string, Map<number, Map<string | undefined, LabelPart>>>();
  const outcome = (
    protocol: "http" | "grpc",
    statusCode: number | undefined,
    grpcStatus: number | undefined,
    error: unknown,
  ): LabelPart => {
    const cls = classification(protocol, statusCode, grpcStatus, error);
    // grpcStatusLabel's ranges, as for status codes.
    const grpcKey =
      protocol !== "grpc" || grpcStatus === undefined
        ? -1
        : Number.isInteger(grpcStatus) && grpcStatus >= 0 && grpcStatus <= 16
          ? grpcStatus
          : -2;
    const err = errorLabel(error);
    let byGrpc = outcomes.get(cls);
    if (!byGrpc) {
      byGrpc = new Map();
      outcomes.set(cls, byGrpc);
    }
    let byError = byGrpc.get(grpcKey);
    if (!byError) {
      byError = new Map();
      byGrpc.set(grpcKey, byError);
    }
    let cached = byError.get(err);
    if (!cached) {
      cached = part([
        ["classification", cls],
        ["grpc_status", protocol === "grpc" ? grpcStatusLabel(grpcStatus) : undefined],
        ["error", err],
      ]);
      byError.set(err, cached);
    }
    return cached;
  };
  const errnos = new Map<string, LabelPart>();
  const errno = (value: string | undefined): LabelPart => {
    const label = errnoLabel(value);
    let cached = errnos.get(label);
    if (!cached) {
      cached = part([["errno", label]]);
      errnos.set(label, cached);
    }
    return cached;
  };

  const recordCall = (
    endpointParts: Parts,
    protocol: "http" | "grpc",
    result: {
      statusCode: number | undefined;
      grpcStatus: number | undefined;
      error: unknown;
      durationMs: number | undefined;
    },
  ) => {
    const statusPart = status(result.statusCode);
    families.requestTotal.inc(endpointParts);
    const outcomePart = outcome(protocol, result.statusCode, result.grpcStatus, result.error);
    families.responseTotal.inc(partsWith(responseScratch, endpointParts, statusPart, outcomePart));
    const duration = result.durationMs;
    if (typeof duration === "number" && Number.isFinite(duration) && duration >= 0)
      families.responseLatency.observe(partsWith(latencyScratch, endpointParts, statusPart), duration);
  };

  const rateLimitParts = new WeakMap<object, Map<string, LabelPart>>();
  const NO_RATELIMIT_META = {};
  const rateLimitPart = (rateLimit: NonNullable<DecisionSummary["rateLimit"]>): LabelPart => {
    const key = rateLimit.meta ?? NO_RATELIMIT_META;
    let byScope = rateLimitParts.get(key);
    if (!byScope) {
      byScope = new Map();
      rateLimitParts.set(key, byScope);
    }
    let cached = byScope.get(rateLimit.scope);
    if (!cached) {
      const meta = rateLimit.meta;
      cached = part([
        ...(meta
          ? ([
              ["ratelimit_group", meta.group],
              ["ratelimit_kind", meta.kind],
              ["ratelimit_name", meta.name],
            ] as const)
          : []),
        ["ratelimit_scope", rateLimit.scope],
      ]);
      byScope.set(rateLimit.scope, cached);
    }
    return cached;
  };

  const inboundEnd = (message: InboundCallMessage) => {
    const decision = message.decision;
    const targetPart = target(message.targetAddress, message.port);
    const tls = serverTls(message.peer);
    const server = decision?.server ? resource("srv", decision.server) : EMPTY;
    const port = decision?.server ? srvPort(message.port) : EMPTY;
    const route = resource("route", decision?.route);
    const authz = decision?.allowed ? resource("authz", decision.authz) : EMPTY;

    const endpointParts = inboundScratch;
    endpointParts[0] = INBOUND;
    endpointParts[1] = targetPart;
    endpointParts[2] = tls;
    endpointParts[3] = server;
    endpointParts[4] = port;
    endpointParts[5] = route;
    endpointParts[6] = authz;
    recordCall(endpointParts, message.protocol, message);

    if (!decision) return;
    if (decision.allowed) families.httpAuthzAllow.inc([targetPart, server, port, route, authz, tls]);
    else if (decision.rateLimit) {
      // Authorized first (counted as an allow, as the proxy does), then refused by the rate limit.
      families.httpAuthzAllow.inc([targetPart, server, port, route, resource("authz", decision.authz), tls]);
      families.httpLocalRateLimit.inc([targetPart, server, port, rateLimitPart(decision.rateLimit), tls]);
    } else if (decision.reason === "route-not-found")
      families.httpRouteNotFound.inc([targetPart, server, port, tls]);
    else families.httpAuthzDeny.inc([targetPart, server, port, route, tls]);
  };

  // Route families: the parent and route of a call are rendered once per (authority, route) pair.
  const parents = boundedCache<ParentRef>(1024);
  const routeParts = boundedCache<{ parent: ParentRef; route: LabelPart; withHost: LabelPart }>(1024);
  const routeOf = (call: OutboundCallMessage) => {
    const route = call.route;
    const routeNamespace = (route as { namespace?: unknown } | undefined)?.namespace;
    return routeParts(
      `${call.protocol}|${call.authority}|${route?.group}|${route?.kind}|${route?.name}|${String(routeNamespace)}`,
      () => {
        const parent = parents(call.authority, () => parentRef(call.authority));
        const labels = [...parent.labels, ...routeLabels(route, parent.namespace, call.protocol)];
        return {
          parent,
          route: part(labels),
          withHost: part([...labels, ["hostname", parent.hostname]]),
        };
      },
    );
  };
  const backends = boundedCache<LabelPart>(1024);
  const backendOf = (message: OutboundAttemptMessage, parent: ParentRef): LabelPart => {
    const labels = message.endpointLabels;
    const service = labels?.service ?? "";
    const namespace = labels?.namespace ?? "";
    return backends(`${parent.hostname}|${parent.port}|${service}|${namespace}`, () =>
      part(backendLabels(labels, parent)),
    );
  };
  const routeStatuses = boundedCache<LabelPart>(256);
  const routeStatus = (protocol: "http" | "grpc", result: RouteResult): LabelPart => {
    const statusValue =
      protocol === "grpc" ? grpcStatusName(result.grpcStatus) : httpStatusValue(result.statusCode);
    const errorValue = routeErrorValue(result.error);
    return routeStatuses(`${protocol}|${statusValue}|${errorValue}`, () =>
      part([
        [protocol === "grpc" ? "grpc_status" : "http_status", statusValue],
        ["error", errorValue],
      ]),
    );
  };
  const seconds = (durationMs: number | undefined) =>
    typeof durationMs === "number" && Number.isFinite(durationMs) && durationMs >= 0
      ? durationMs / 1000
      : undefined;
  const routeFamiliesFor = (protocol: "http" | "grpc") =>
    protocol === "grpc"
      ? {
          requestDuration: families.routeGrpcRequestDuration,
          requestStatuses: families.routeGrpcRequestStatuses,
          backendRequests: families.routeGrpcBackendRequests,
          backendDuration: families.routeGrpcBackendDuration,
          backendStatuses: families.routeGrpcBackendStatuses,
          retries: families.routeGrpcRetries,
        }
      : {
          requestDuration: families.routeHttpRequestDuration,
          requestStatuses: families.routeHttpRequestStatuses,
          backendRequests: families.routeHttpBackendRequests,
          backendDuration: families.routeHttpBackendDuration,
          backendStatuses: families.routeHttpBackendStatuses,
          retries: families.routeHttpRetries,
        };

  const attemptStart = (message: OutboundAttemptMessage) => {
    callsWithAttempts.add(message.call);
    if (message.attempt <= 1) return;
    const call = message.call;
    routeFamiliesFor(call.protocol).retries.inc([routeOf(call).withHost]);
  };

  // Egress calls only (a handful of EgressNetworks), so the cache stays small.
  const egressParents = boundedCache<LabelPart>(64);
  const egressParent = (value: OutboundCallMessage["parent"]) =>
    value
      ? egressParents(`${value.group}|${value.kind}|${value.namespace}|${value.name}`, () =>
          part([
            ["parent_group", value.group],
            ["parent_kind", value.kind],
            ["parent_name", value.name],
            ["parent_namespace", value.namespace],
          ]),
        )
      : EMPTY;

  const attemptEnd = (message: OutboundAttemptMessage) => {
    const call = message.call;
    callsWithAttempts.add(call);
    recordCall(
      [OUTBOUND, authority(call.authority), egressParent(call.parent), endpoint(message)],
      call.protocol,
      message,
    );
    const route = routeOf(call);
    const backend = backendOf(message, route.parent);
    const routeFamilySet = routeFamiliesFor(call.protocol);
    routeFamilySet.backendRequests.inc([route.route, backend]);
    routeFamilySet.backendStatuses.inc([route.route, backend, routeStatus(call.protocol, message)]);
    const duration = seconds(message.durationMs);
    if (duration !== undefined) routeFamilySet.backendDuration.observe([route.route, backend], duration);
  };

  const outboundEnd = (message: OutboundCallMessage) => {
    const route = routeOf(message);
    const routeFamilySet = routeFamiliesFor(message.protocol);
    routeFamilySet.requestStatuses.inc([route.withHost, routeStatus(message.protocol, message)]);
    const duration = seconds(message.durationMs);
    if (duration !== undefined) routeFamilySet.requestDuration.observe([route.withHost], duration);
    // Calls that failed before any attempt (no endpoints, closed client) would otherwise be invisible.
    if (callsWithAttempts.has(message)) return;
    recordCall(
      [OUTBOUND, authority(message.authority), egressParent(message.parent)],
      message.protocol,
      message,
    );
  };

  /** Parts shared by the tcp_* families. */
  const tcpParts = (message: TcpConnectionMessage): Parts => {
    if (message.direction === "inbound")
      return [TCP_INBOUND, targetPort(message.port), serverTls(message.peer)];
    const peer = message.peer;
    const tls =
      peer?.kind === "mesh"
        ? part(clientTlsLabels(peer.name))
        : part(clientTlsLabels(undefined, peer?.kind === "none" && peer.reason === "loopback"));
    return [TCP_OUTBOUND, targetPort(message.port), tls];
  };

  const tcpOpen = (message: TcpConnectionMessage) => {
    const parts = tcpParts(message);
    families.tcpOpenTotal.inc(parts);
    const gauge = families.tcpOpenConnections.series(parts);
    gauge.value += 1;
    openConnections.set(message, gauge);
  };

  const tcpClose = (message: TcpConnectionMessage) => {
    const parts = tcpParts(message);
    const gauge = openConnections.get(message);
    if (gauge) {
      gauge.value -= 1;
      openConnections.delete(message);
    }
    if (isCount(message.bytesRead)) families.tcpReadBytes.inc(parts, message.bytesRead);
    if (isCount(message.bytesWritten)) families.tcpWriteBytes.inc(parts, message.bytesWritten);
    families.tcpCloseTotal.inc([...parts, errno(message.errno)]);
  };

  // Connection-level authorizations only: HTTP connections are authorized per request (inbound_http_*).
  const tcpAuthz = (message: TcpAuthzMessage) => {
    const decision = message.decision;
    const targetPart = target(message.targetAddress, message.port);
    const server = decision.server ? resource("srv", decision.server) : EMPTY;
    const port = decision.server ? srvPort(message.port) : EMPTY;
    const tls = serverTls(message.peer);
    if (message.terminated) families.tcpAuthzTerminate.inc([targetPart, server, port, tls]);
    else if (decision.allowed)
      families.tcpAuthzAllow.inc([targetPart, server, port, resource("authz", decision.authz), tls]);
    else families.tcpAuthzDeny.inc([targetPart, server, port, tls]);
  };

  const identityChanged = (message: MeshChannelMessages[typeof MeshChannel.identityChanged]) => {
    if (typeof message.expiresAtMs === "number" && Number.isFinite(message.expiresAtMs))
      certificateExpiresAtMs = message.expiresAtMs;
    if (IDENTITY_OK.has(message.status)) {
      families.certRefreshes.inc(RESULT_OK);
      families.certRefresh.set(NO_PARTS, config.nowMs() / 1000);
    } else if (IDENTITY_ERROR.test(message.status)) {
      families.certRefreshes.inc(RESULT_ERROR);
    }
  };

  const channels = createMeshChannelSubscription(
    {
      [MeshChannel.inboundCallEnd]: inboundEnd,
      [MeshChannel.outboundAttemptStart]: attemptStart,
      [MeshChannel.outboundAttemptEnd]: attemptEnd,
      [MeshChannel.outboundCallEnd]: outboundEnd,
      [MeshChannel.tcpOpen]: tcpOpen,
      [MeshChannel.tcpClose]: tcpClose,
      [MeshChannel.inboundTcpAuthz]: tcpAuthz,
      [MeshChannel.identityChanged]: identityChanged,
    },
    (name, error) => log("metrics handler for %s failed: %o", name, error),
  );

  return {
    subscribe() {
      channels.subscribe();
    },
    unsubscribe() {
      channels.unsubscribe();
    },
    get subscribed() {
      return channels.active;
    },
    render() {
      let expiresAtMs = certificateExpiresAtMs;
      if (config.certificateExpiresAtMs) {
        try {
          expiresAtMs = config.certificateExpiresAtMs() ?? expiresAtMs;
        } catch (error) {
          log("certificateExpiresAtMs failed: %o", error);
        }
      }
      if (typeof expiresAtMs === "number" && Number.isFinite(expiresAtMs)) {
        families.certExpiration.set(NO_PARTS, Math.floor(expiresAtMs / 1000));
        families.certExpirationLegacy.set(NO_PARTS, Math.floor(expiresAtMs / 1000));
      }
      const out: string[] = [];
      const nowMs = config.nowMs();
      for (const family of Object.values(families)) {
        family.evictIdle(nowMs);
        family.render(out);
      }
      out.push("");
      const text = out.join("\n");
      return config.processMetrics ? text + renderProcessMetrics() : text;
    },
    seriesCount(name) {
      let total = 0;
      for (const family of Object.values(families)) {
        if (name === undefined || family.definition.name === name) total += family.size;
      }
      return total;
    },
  };
}

interface RouteResult {
  readonly statusCode: number | undefined;
  readonly grpcStatus: number | undefined;
  readonly error: unknown;
}

function isCount(value: unknown): value is number {
  return typeof value === "number" && Number.isFinite(value) && value > 0;
}
