import { isIP } from "node:net";
import { type Cidr, ConfigError, isDnsName } from "@inmesh/core";
import { DEFAULT_MAX_REQUEST_BYTES } from "@inmesh/destination";
import type { IdentityProvider } from "@inmesh/identity";
import type { Dispatcher } from "undici";
import type { MeshDiscovery } from "./targets.js";

export interface MeshDispatcherOptions {
  /**
   * Our workload identity: its current client SecureContext is presented to meshed endpoints. Without
   * it only endpoints that discovery gives no TLS identity (unmeshed pods) can be reached.
   */
  identity?: IdentityProvider;
  /** Destination watches, usually `createDiscovery({ destinationClient, policyClient, contextToken, sourceWorkload })`. */
  discovery: MeshDiscovery;
  /** Requests to `http://<name>.svc.<clusterDomain>[:port]` go through discovery. @default "cluster.local" */
  clusterDomain?: string;
  /**
   * The caller's namespace: short names resolve as a pod's resolver would (`books` →
   * `books.<ns>.svc.<clusterDomain>`, `books.bookshop` → `books.bookshop.svc.<clusterDomain>`). Without it
   * only full names are meshed. `createMesh` sets it from the workload.
   */
  searchNamespace?: string;
  /**
   * IP addresses whose ServiceProfile is looked up, as `LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS`
   * (a pod IP's identity comes from its profile); `createMesh` passes the cluster networks.
   * @default every address
   */
  profileNetworks?: readonly Cidr[];
  /**
   * Where requests go that are not meshed: loopback, non-HTTP, and `https:` (the application's own TLS,
   * after the outbound policy of its address allowed it). Plain-HTTP egress the policy forwards as
   * addressed goes through the mesh's own pools, with its metrics. @default a plain undici `Agent`
   */
  fallbackDispatcher?: Dispatcher;
  /**
   * Request bodies up to this size are buffered so a retry can replay them; larger or still-streaming
   * bodies are sent once and never retried. A route's own limit applies when it is smaller.
   * @default 65536 (Linkerd's)
   */
  maxRetryBodyBytes?: number;
  /** Deadline of every request, retries included; a route's `timeouts.request` wins when shorter. @default none */
  requestTimeoutMs?: number;
  /** Time to response headers of each try but the last, when the route sets none. @default none */
  perTryTimeoutMs?: number;
  /** Longest wait for the first discovery answer about a target. @default 3000 */
  discoveryTimeoutMs?: number;
  /** Longest wait for a ready endpoint (Linkerd's queue fail-fast timeout). @default 3000 */
  failFastTimeoutMs?: number;
  /** TCP + TLS handshake limit. @default 10000 */
  connectTimeoutMs?: number;
  /**
   * Source address of connections to endpoints, normally the pod IP, which the kernel picks itself.
   * Set it where several workloads share one host (the dev control plane gives each local pod its own
   * 127.0.0.x): Linkerd authorizes 127.0.0.1 unconditionally, so calls from it would always pass policy.
   * @default the operating system's choice
   */
  localAddress?: string;
  /** Idle keep-alive of pooled connections. @default undici's (4 s, or the server's hint) */
  keepAliveTimeoutMs?: number;
  /**
   * Connections per endpoint. An HTTP/2 connection carries up to 100 requests at once; past that,
   * requests wait for a stream or, with a higher cap, open another connection.
   * @default 1 to endpoints spoken to in HTTP/2 (meshed ones, as linkerd2-proxy does), unlimited in HTTP/1
   */
  maxConnectionsPerEndpoint?: number;
  /** Connect to an endpoint's inbound port with a transport header when discovery advertises `opaque_transport`. @default true */
  useTransportHeader?: boolean;
  /**
   * Speak prior-knowledge HTTP/2 (no ALPN) to endpoints hinted `h2`, sending HTTP/1 requests with
   * `l5d-orig-proto`, as linkerd2-proxy does. Off: HTTP/1.1 everywhere, which the contract allows.
   * @default true
   */
  http2PriorKnowledge?: boolean;
  /** Watch ServiceProfiles and OutboundPolicies for routes, retries and timeouts. @default true */
  useRoutes?: boolean;
  /**
   * Answer a timeout, fail-fast or endpoint failure that happens before the response starts as
   * linkerd2-proxy answers its application: HTTP 504 or 502 with `l5d-proxy-error` (gRPC: HTTP 200 with
   * `grpc-status` 4 or 14). Off: the call rejects with the typed MeshError instead (`MESH_ERR_DEADLINE`,
   * `MESH_ERR_DESTINATION_NO_ENDPOINTS`…). Errors after the headers always end the response body.
   * @default true
   */
  proxyErrorResponses?: boolean;
  /** Most authorities and discovery paths tracked at once. @default 512 */
  maxTargets?: number;
  /** A target unused this long releases its watches and pools. @default 600000 */
  targetIdleTimeoutMs?: number;
  /**
   * Extra undici interceptors, outermost first (index 0 sees the request first), run before the mesh's
   * own `[rescue, telemetry, route, timeout, retry, redistribute, streamTimeouts, balance, identityHeaders]`.
   */
  interceptors?: readonly Dispatcher.DispatcherComposeInterceptor[];
}

export interface ResolvedDispatcherOptions {
  readonly identity: IdentityProvider | undefined;
  readonly discovery: MeshDiscovery;
  readonly clusterSuffix: string;
  readonly clusterDomain: string;
  readonly searchNamespace: string | undefined;
  readonly profileNetworks: readonly Cidr[] | undefined;
  readonly maxRetryBodyBytes: number;
  readonly requestTimeoutMs: number | undefined;
  readonly perTryTimeoutMs: number | undefined;
  readonly discoveryTimeoutMs: number;
  readonly failFastTimeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly localAddress: string | undefined;
  readonly keepAliveTimeoutMs: number | undefined;
  readonly maxConnectionsPerEndpoint: number | undefined;
  readonly useTransportHeader: boolean;
  readonly http2PriorKnowledge: boolean;
  readonly useRoutes: boolean;
  readonly proxyErrorResponses: boolean;
  readonly maxTargets: number;
  readonly targetIdleTimeoutMs: number;
  readonly interceptors: readonly Dispatcher.DispatcherComposeInterceptor[];
}

function ipAddress(name: string, value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  if (isIP(value) === 0) {
    throw new ConfigError(`${name} must be an IP address, got ${JSON.stringify(value)}`, {
      details: { variable: name },
    });
  }
  return value;
}

function positive(name: string, value: number | undefined, fallback: number): number;
function positive(name: string, value: number | undefined, fallback: undefined): number | undefined;
function positive(name: string, value: number | undefined, fallback: number | undefined): number | undefined {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) {
    throw new ConfigError(`${name} must be a positive number, got ${String(value)}`, {
      details: { variable: name },
    });
  }
  return value;
}

function integer(name: string, value: number | undefined, fallback: number): number;
function integer(name: string, value: number | undefined, fallback: undefined): number | undefined;
function integer(name: string, value: number | undefined, fallback: number | undefined): number | undefined {
  const checked = fallback === undefined ? positive(name, value, undefined) : positive(name, value, fallback);
  if (checked !== undefined && !Number.isInteger(checked)) {
    throw new ConfigError(`${name} must be an integer, got ${checked}`, { details: { variable: name } });
  }
  return checked;
}

function namespaceOption(value: string | undefined): string | undefined {
  if (value === undefined || value === "") return undefined;
  if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(value)) {
    throw new ConfigError(`searchNamespace ${JSON.stringify(value)} is not a namespace name`, {
      details: { variable: "searchNamespace" },
    });
  }
  return value;
}

export function resolveDispatcherOptions(options: MeshDispatcherOptions): ResolvedDispatcherOptions {
  if (!options || typeof options !== "object")
    throw new ConfigError("createMeshDispatcher needs an options object", {
      details: { variable: "options" },
    });
  const discovery = options.discovery;
  if (!discovery || typeof discovery.watchEndpoints !== "function") {
    throw new ConfigError(
      "createMeshDispatcher needs `discovery` (createDiscovery from @inmesh/destination)",
      {
        details: { variable: "discovery" },
      },
    );
  }
  const clusterDomain = (options.clusterDomain ?? "cluster.local").toLowerCase().replace(/\.$/, "");
  if (!isDnsName(clusterDomain)) {
    throw new ConfigError(`clusterDomain ${JSON.stringify(options.clusterDomain)} is not a DNS name`, {
      details: { variable: "clusterDomain" },
    });
  }
  const maxRetryBodyBytes = options.maxRetryBodyBytes ?? DEFAULT_MAX_REQUEST_BYTES;
  if (!Number.isInteger(maxRetryBodyBytes) || maxRetryBodyBytes < 0 || maxRetryBodyBytes > 64 * 1024 * 1024) {
    throw new ConfigError(
      `maxRetryBodyBytes must be an integer in 0..67108864, got ${String(maxRetryBodyBytes)}`,
      {
        details: { variable: "maxRetryBodyBytes" },
      },
    );
  }
  const interceptors = options.interceptors ?? [];
  if (!Array.isArray(interceptors) || interceptors.some((i) => typeof i !== "function")) {
    throw new ConfigError("interceptors must be an array of undici interceptors", {
      details: { variable: "interceptors" },
    });
  }
  return Object.freeze({
    identity: options.identity,
    discovery,
    clusterSuffix: `.svc.${clusterDomain}`,
    clusterDomain,
    searchNamespace: namespaceOption(options.searchNamespace),
    profileNetworks: options.profileNetworks ? Object.freeze([...options.profileNetworks]) : undefined,
    maxRetryBodyBytes,
    requestTimeoutMs: positive("requestTimeoutMs", options.requestTimeoutMs, undefined),
    perTryTimeoutMs: positive("perTryTimeoutMs", options.perTryTimeoutMs, undefined),
    discoveryTimeoutMs: positive("discoveryTimeoutMs", options.discoveryTimeoutMs, 3000),
    failFastTimeoutMs: positive("failFastTimeoutMs", options.failFastTimeoutMs, 3000),
    connectTimeoutMs: positive("connectTimeoutMs", options.connectTimeoutMs, 10_000),
    localAddress: ipAddress("localAddress", options.localAddress),
    keepAliveTimeoutMs: positive("keepAliveTimeoutMs", options.keepAliveTimeoutMs, undefined),
    maxConnectionsPerEndpoint: integer(
      "maxConnectionsPerEndpoint",
      options.maxConnectionsPerEndpoint,
      undefined,
    ),
    useTransportHeader: options.useTransportHeader ?? true,
    http2PriorKnowledge: options.http2PriorKnowledge ?? true,
    useRoutes: options.useRoutes ?? true,
    proxyErrorResponses: options.proxyErrorResponses ?? true,
    maxTargets: integer("maxTargets", options.maxTargets, 512),
    targetIdleTimeoutMs: positive("targetIdleTimeoutMs", options.targetIdleTimeoutMs, 600_000),
    interceptors: Object.freeze([...interceptors]),
  });
}

/**
 * `host:port` when `origin` is an `http:` URL whose host is a cluster service name
 * (`<svc>.<ns>.svc.<clusterDomain>`, or a StatefulSet `<pod>.<svc>.<ns>.svc…`); undefined otherwise.
 */
export function meshAuthority(origin: unknown, clusterSuffix: string): string | undefined {
  let url: URL;
  if (origin instanceof URL) url = origin;
  else if (typeof origin === "string") {
    try {
      url = new URL(origin);
    } catch {
      return undefined;
    }
  } else return undefined;
  if (url.protocol !== "http:") return undefined;
  const host = url.hostname.toLowerCase().replace(/\.$/, "");
  if (!host.endsWith(clusterSuffix)) return undefined;
  // At least `<svc>.<ns>` before `.svc.<domain>`.
  const labels = host.slice(0, -clusterSuffix.length).split(".");
  if (labels.length < 2 || labels.some((label) => label.length === 0)) return undefined;
  return `${host}:${url.port === "" ? 80 : Number(url.port)}`;
}
