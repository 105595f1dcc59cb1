import { debuglog } from "node:util";
import {
  createMeshChannelSubscription,
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
  });
}

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
  retries: {
    name: "outbound_http_route_retry_requests_total",
    help: "Retry attempts sent for outbound HTTP route requests.",
    type: "counter",
  },
  grpcRetries: {
    name: "outbound_grpc_route_retry_requests_total",
    help: "Retry attempts sent for outbound gRPC route requests.",
    type: "counter",
  },
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
  certExpiration: {
    name: "control_identity_cert_expiration_timestamp_seconds",
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
  const targets = boundedCache<LabelPart>(256);
  const target = (address: string | undefined, port: number | undefined) =>
    targets(`${address}|${port}`, () => part(targetLabels(address, port)));
  const ports = boundedCache<LabelPart>(256);
  const srvPort = (port: number) => ports(`srv|${port}`, () => part([["srv_port", String(port)]]));
  const targetPort = (port: number) => ports(`target|${port}`, () => part([["target_port", String(port)]]));
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
  const statuses = new Map<string, LabelPart>();
  const status = (statusCode: number | undefined): LabelPart => {
    const label = statusCodeLabel(statusCode) ?? "";
    let cached = statuses.get(label);
    if (!cached) {
      cached = part([["status_code", label === "" ? undefined : label]]);
      statuses.set(label, cached);
    }
    return cached;
  };
  const outcomes = new Map<string, LabelPart>();
  const outcome = (
    protocol: "http" | "grpc",
    statusCode: number | undefined,
    grpcStatus: number | undefined,
    error: unknown,
  ) => {
    const cls = classification(protocol, statusCode, grpcStatus, error);
    const grpc = protocol === "grpc" ? grpcStatusLabel(grpcStatus) : undefined;
    const err = errorLabel(error);
    const key = `${cls}|${grpc}|${err}`;
    let cached = outcomes.get(key);
    if (!cached) {
      cached = part([
        ["classification", cls],
        ["grpc_status", grpc],
        ["error", err],
      ]);
      outcomes.set(key, cached);
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
    families.responseTotal.inc([
      ...endpointParts,
      statusPart,
      outcome(protocol, result.statusCode, result.grpcStatus, result.error),
    ]);
    const duration = result.durationMs;
    if (typeof duration === "number" && Number.isFinite(duration) && duration >= 0)
      families.responseLatency.observe([...endpointParts, statusPart], duration);
  };

  const inboundEnd = (message: InboundCallMessage) => {
    const decision = message.decision;
    const targetPart = target(message.targetAddress, message.port);
    const tls = serverTls(message.peer);
    const server = decision?.server ? resource("srv", decision.server) : EMPTY;
    const port = decision?.server ? srvPort(message.port) : EMPTY;
    const route = resource("route", decision?.route);
    const authz = decision?.allowed ? resource("authz", decision.authz) : EMPTY;

    recordCall([INBOUND, targetPart, tls, server, port, route, authz], message.protocol, message);

    if (!decision) return;
    if (decision.allowed) families.httpAuthzAllow.inc([targetPart, server, port, route, authz, tls]);
    else if (decision.reason === "route-not-found")
      families.httpRouteNotFound.inc([targetPart, server, port, tls]);
    else families.httpAuthzDeny.inc([targetPart, server, port, route, tls]);
  };

  const attemptStart = (message: OutboundAttemptMessage) => {
    callsWithAttempts.add(message.call);
    if (message.attempt <= 1) return;
    const call = message.call;
    const family = call.protocol === "grpc" ? families.grpcRetries : families.retries;
    family.inc([authority(call.authority), resource("route", call.route)]);
  };

  // Egress calls only (a handful of EgressNetworks), so the cache stays small.
  const parents = boundedCache<LabelPart>(64);
  const parent = (value: OutboundCallMessage["parent"]) =>
    value
      ? parents(`${value.group}|${value.kind}|${value.namespace}|${value.name}`, () =>
          part([
            ["parent_group", value.group],
            ["parent_kind", value.kind],
            ["parent_name", value.name],
            ["parent_namespace", value.namespace],
          ]),
        )
      : EMPTY;

  const attemptEnd = (message: OutboundAttemptMessage) => {
    callsWithAttempts.add(message.call);
    recordCall(
      [OUTBOUND, authority(message.call.authority), parent(message.call.parent), endpoint(message)],
      message.call.protocol,
      message,
    );
  };

  const outboundEnd = (message: OutboundCallMessage) => {
    // Calls that failed before any attempt (no endpoints, closed client) would otherwise be invisible.
    if (callsWithAttempts.has(message)) return;
    recordCall([OUTBOUND, authority(message.authority), parent(message.parent)], message.protocol, message);
  };

  /** Parts shared by the tcp_* families; the inbound TCP authorization counters drop the first one. */
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
    if (message.direction !== "inbound") return;
    const authzParts = parts.slice(1);
    if (message.denied) families.tcpAuthzDeny.inc(authzParts);
    else families.tcpAuthzAllow.inc(authzParts);
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
      if (typeof expiresAtMs === "number" && Number.isFinite(expiresAtMs))
        families.certExpiration.set(NO_PARTS, Math.floor(expiresAtMs / 1000));
      const out: string[] = [];
      const nowMs = config.nowMs();
      for (const family of Object.values(families)) {
        family.evictIdle(nowMs);
        family.render(out);
      }
      out.push("");
      return out.join("\n");
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

function isCount(value: unknown): value is number {
  return typeof value === "number" && Number.isFinite(value) && value > 0;
}
