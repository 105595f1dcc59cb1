/**
 * (pod, port) → io.linkerd.proxy.inbound.Server, following the policy controller's index
 * (policy-semantics.md §2–§7).
 */
import { parsePortList, serviceAccountIdentity } from "@inmesh/core";
import {
  durationFromMs,
  type grpcRoute,
  type httpRoute,
  httpTypes,
  type inbound,
  type meta,
} from "@inmesh/proto";
import { authorizationPolicyAuthz, defaultAuthzs, serverAuthorizationAuthz, toAuthz } from "./authz.js";
import { compareServers, key, type Model, type PodModel, serverSelectsPort } from "./model.js";
import { type DefaultPolicyName, isDefaultPolicyName } from "./options.js";
import {
  type GrpcRouteRes,
  type HttpRouteRes,
  type RouteFilter,
  type ServerRes,
  selectorMatches,
} from "./resources.js";
import type { LookupError } from "./types.js";
import { parseWorkload } from "./workload.js";

export const DEFAULT_POLICY_ANNOTATION = "config.linkerd.io/default-inbound-policy";
export const OPAQUE_PORTS_ANNOTATION = "config.linkerd.io/opaque-ports";
export const REQUIRE_IDENTITY_PORTS_ANNOTATION = "config.linkerd.io/proxy-require-identity-inbound-ports";
/** Chart `proxy.opaquePorts`, which the injector intersects with the pod's container ports. */
export const DEFAULT_OPAQUE_PORTS: ReadonlySet<number> = new Set([
  25, 587, 3306, 4444, 5432, 6379, 9300, 11211,
]);
const DETECT_TIMEOUT_MS = 10_000;

/** The injector copies namespace config annotations onto the pod unless the pod already has the key. */
export function podConfigAnnotation(model: Model, pod: PodModel, name: string): string | undefined {
  return (
    pod.res.meta.annotations[name] ?? model.namespaces.get(pod.res.meta.namespace)?.meta.annotations[name]
  );
}

/** Any parse error makes the whole list empty (`policy-controller/k8s/index/src/ports.rs`). */
export function parsePortAnnotation(value: string | undefined): ReadonlySet<number> {
  if (value === undefined) return new Set();
  try {
    return parsePortList("annotation", value);
  } catch {
    return new Set();
  }
}

/** Pod value if valid; an invalid value (the pod's own, or one copied from the namespace) means the cluster default. */
export function effectiveDefaultPolicy(model: Model, pod: PodModel): DefaultPolicyName {
  const value = podConfigAnnotation(model, pod, DEFAULT_POLICY_ANNOTATION);
  return isDefaultPolicyName(value) ? value : model.options.defaultPolicy;
}

export function podOpaquePorts(model: Model, pod: PodModel): ReadonlySet<number> {
  const annotated = podConfigAnnotation(model, pod, OPAQUE_PORTS_ANNOTATION);
  if (annotated !== undefined) return parsePortAnnotation(annotated);
  // Neither pod nor namespace annotated: the injector writes the container ports among the defaults.
  const ports = new Set<number>();
  for (const container of pod.res.containers) {
    for (const port of container.ports)
      if (DEFAULT_OPAQUE_PORTS.has(port.containerPort)) ports.add(port.containerPort);
  }
  return ports;
}

function probePaths(pod: PodModel, port: number): string[] {
  const paths = new Set<string>();
  for (const container of [...pod.res.containers, ...pod.res.initContainers]) {
    for (const probe of container.probes) {
      const probePort =
        typeof probe.port === "number"
          ? probe.port
          : container.ports.find(
              (p) => p.protocol === "TCP" && p.name?.toLowerCase() === (probe.port as string).toLowerCase(),
            )?.containerPort;
      if (probePort === port) paths.add(probe.path);
    }
  }
  return [...paths].sort();
}

const GET: httpRoute.HttpRouteMatch["method"] = {
  type: { $case: "registered", value: httpTypes.HttpMethod_Registered.GET },
};

function defaultHttpRoutes(model: Model, pod: PodModel, port: number): inbound.HttpRoute[] {
  const routes: inbound.HttpRoute[] = [
    {
      metadata: { kind: { $case: "default", value: "default" } },
      hosts: [],
      authorizations: [],
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
        },
      ],
    },
  ];
  const paths = probePaths(pod, port);
  const probeNetworks = model.options.probeNetworks;
  if (paths.length > 0 && probeNetworks.length > 0) {
    routes.push({
      metadata: { kind: { $case: "default", value: "probe" } },
      hosts: [],
      authorizations: [
        toAuthz(
          { kind: "default", name: "probe" },
          probeNetworks.map((net) => ({ net, except: [] })),
          { kind: "unauthenticated" },
          model.options.clusterNetworks,
        ),
      ],
      rules: [
        {
          matches: paths.map((path) => ({
            path: { kind: { $case: "exact", value: path } },
            headers: [],
            queryParams: [],
            method: GET,
          })),
          filters: [],
        },
      ],
    });
  }
  return routes;
}

function defaultGrpcRoute(): inbound.GrpcRoute {
  return {
    metadata: { kind: { $case: "default", value: "default" } },
    hosts: [],
    authorizations: [],
    rules: [{ matches: [{ rpc: { service: "", method: "" }, headers: [] }], filters: [] }],
  };
}

function serverLabels(name: string, isDefault: boolean): Record<string, string> {
  return isDefault
    ? { group: "", kind: "default", name }
    : { group: "policy.linkerd.io", kind: "server", name };
}

function defaultServer(model: Model, pod: PodModel, port: number): inbound.Server {
  let policy = effectiveDefaultPolicy(model, pod);
  const requireIdentity = parsePortAnnotation(
    podConfigAnnotation(model, pod, REQUIRE_IDENTITY_PORTS_ANNOTATION),
  );
  if (requireIdentity.has(port)) {
    if (policy === "all-unauthenticated") policy = "all-authenticated";
    else if (policy === "cluster-unauthenticated") policy = "cluster-authenticated";
  }
  const opaque = podOpaquePorts(model, pod).has(port);
  const protocol: inbound.ProxyProtocol = opaque
    ? { kind: { $case: "opaque", value: {} } }
    : {
        kind: {
          $case: "detect",
          value: {
            timeout: durationFromMs(DETECT_TIMEOUT_MS),
            httpRoutes: defaultHttpRoutes(model, pod, port),
            httpLocalRateLimit: undefined,
          },
        },
      };
  return {
    protocol,
    serverIps: [],
    authorizations: defaultAuthzs(policy, model),
    labels: serverLabels(policy, true),
  };
}

function serverAuthzs(model: Model, server: ServerRes): inbound.Authz[] {
  const ns = server.meta.namespace;
  const result: inbound.Authz[] = [];
  // The controller iterates a hash map here (order unspecified); we use kind, then name.
  const serverAuthorizations = model.resources.serverAuthorizations
    .filter(
      (a) =>
        a.meta.namespace === ns &&
        (a.serverName === server.meta.name ||
          (a.serverSelector !== undefined && selectorMatches(a.serverSelector, server.meta.labels))),
    )
    .sort((a, b) => a.meta.name.localeCompare(b.meta.name));
  for (const authz of serverAuthorizations) result.push(serverAuthorizationAuthz(authz, model));
  const policies = model.resources.authorizationPolicies
    .filter(
      (p) =>
        p.meta.namespace === ns &&
        ((p.target.kind === "server" && p.target.name === server.meta.name) || p.target.kind === "namespace"),
    )
    .sort((a, b) => a.meta.name.localeCompare(b.meta.name));
  for (const policy of policies) result.push(authorizationPolicyAuthz(policy, model));
  if (server.accessPolicy !== undefined) result.push(...defaultAuthzs(server.accessPolicy, model));
  return result;
}

function routeAuthzs(model: Model, route: HttpRouteRes | GrpcRouteRes): inbound.Authz[] {
  const kind = route.kind === "HTTPRoute" ? "httproute" : "grpcroute";
  return model.resources.authorizationPolicies
    .filter(
      (p) =>
        p.meta.namespace === route.meta.namespace &&
        p.target.kind === kind &&
        p.target.name === route.meta.name &&
        p.target.group === route.group,
    )
    .sort((a, b) => a.meta.name.localeCompare(b.meta.name))
    .map((p) => authorizationPolicyAuthz(p, model));
}

/**
 * The Server's HTTPLocalRateLimitPolicy (oldest first, then by name, when several target it), with each
 * override's ServiceAccounts turned into identities.
 */
function serverRateLimit(model: Model, server: ServerRes): inbound.HttpLocalRateLimit | undefined {
  const policy = model.resources.rateLimitPolicies
    .filter((p) => p.meta.namespace === server.meta.namespace && p.serverName === server.meta.name)
    .sort(
      (a, b) =>
        (a.meta.creationTimestampMs ?? Number.POSITIVE_INFINITY) -
          (b.meta.creationTimestampMs ?? Number.POSITIVE_INFINITY) || a.meta.name.localeCompare(b.meta.name),
    )[0];
  if (policy === undefined) return undefined;
  const { controlPlaneNamespace, trustDomain } = model.options;
  const limit = (rps: number | undefined) => (rps === undefined ? undefined : { requestsPerSecond: rps });
  return {
    metadata: {
      kind: {
        $case: "resource",
        value: {
          group: "policy.linkerd.io",
          kind: "HTTPLocalRateLimitPolicy",
          name: policy.meta.name,
          namespace: "",
          section: "",
          port: 0,
        },
      },
    },
    total: limit(policy.totalRps),
    identity: limit(policy.identityRps),
    overrides: policy.overrides.map((override) => ({
      limit: { requestsPerSecond: override.rps },
      clients: {
        identities: override.serviceAccounts.map((sa) => ({
          name: serviceAccountIdentity(sa.name, sa.namespace, controlPlaneNamespace, trustDomain),
        })),
      },
    })),
  };
}

function routeMetadata(route: HttpRouteRes | GrpcRouteRes): meta.Metadata {
  return {
    kind: {
      $case: "resource",
      value: {
        group: route.group,
        kind: route.kind,
        name: route.meta.name,
        namespace: "",
        section: "",
        port: 0,
      },
    },
  };
}

/** policy-semantics.md §6.4: timestamped routes first (oldest first), then by name, group, kind. */
export function compareRoutes(a: HttpRouteRes | GrpcRouteRes, b: HttpRouteRes | GrpcRouteRes): number {
  const at = a.meta.creationTimestampMs;
  const bt = b.meta.creationTimestampMs;
  if (at !== undefined && bt === undefined) return -1;
  if (at === undefined && bt !== undefined) return 1;
  if (at !== undefined && bt !== undefined && at !== bt) return at - bt;
  for (const [x, y] of [
    [a.meta.name, b.meta.name],
    [a.group, b.group],
    [a.kind, b.kind],
  ] as const) {
    if (x !== y) return x < y ? -1 : 1;
  }
  return 0;
}

function inboundHttpFilters(filters: readonly RouteFilter[]): inbound.HttpRoute_Filter[] {
  const result: inbound.HttpRoute_Filter[] = [];
  for (const filter of filters) {
    // ResponseHeaderModifier is accepted but never sent to the inbound proxy.
    if (filter.kind === "requestHeaderModifier")
      result.push({ kind: { $case: "requestHeaderModifier", value: filter.value } });
    else if (filter.kind === "redirect") result.push({ kind: { $case: "redirect", value: filter.value } });
  }
  return result;
}

function toInboundHttpRoute(model: Model, route: HttpRouteRes): inbound.HttpRoute {
  return {
    metadata: routeMetadata(route),
    hosts: [...route.hostnames],
    authorizations: routeAuthzs(model, route),
    rules: route.rules.map((rule) => ({
      matches: [...rule.matches],
      filters: inboundHttpFilters(rule.filters),
    })),
  };
}

function toInboundGrpcRoute(model: Model, route: GrpcRouteRes): inbound.GrpcRoute {
  return {
    metadata: routeMetadata(route),
    hosts: [...route.hostnames],
    authorizations: routeAuthzs(model, route),
    rules: route.rules.map((rule) => ({
      matches: [...rule.matches] as grpcRoute.GrpcRouteMatch[],
      filters: rule.filters.flatMap((filter): inbound.GrpcRoute_Filter[] =>
        filter.kind === "requestHeaderModifier"
          ? [{ kind: { $case: "requestHeaderModifier", value: filter.value } }]
          : [],
      ),
    })),
  };
}

function selectedServer(model: Model, server: ServerRes, pod: PodModel, port: number): inbound.Server {
  const serverKey = key(server.meta.namespace, server.meta.name);
  const httpRouteResources = [...(model.serverHttpRoutes.get(serverKey) ?? [])].sort(compareRoutes);
  // Attaching any HTTPRoute removes both default routes (and with them the probe route).
  const httpRoutes =
    httpRouteResources.length > 0
      ? httpRouteResources.map((r) => toInboundHttpRoute(model, r))
      : defaultHttpRoutes(model, pod, port);
  const grpcRouteResources = [...(model.serverGrpcRoutes.get(serverKey) ?? [])].sort(compareRoutes);
  const grpcRoutes =
    grpcRouteResources.length > 0
      ? grpcRouteResources.map((r) => toInboundGrpcRoute(model, r))
      : [defaultGrpcRoute()];
  let protocol: inbound.ProxyProtocol;
  switch (server.protocol) {
    case "detect":
      protocol = {
        kind: {
          $case: "detect",
          value: {
            timeout: durationFromMs(DETECT_TIMEOUT_MS),
            httpRoutes,
            httpLocalRateLimit: serverRateLimit(model, server),
          },
        },
      };
      break;
    case "http1":
      protocol = {
        kind: {
          $case: "http1",
          value: { routes: httpRoutes, localRateLimit: serverRateLimit(model, server) },
        },
      };
      break;
    case "http2":
      protocol = {
        kind: {
          $case: "http2",
          value: { routes: httpRoutes, localRateLimit: serverRateLimit(model, server) },
        },
      };
      break;
    case "grpc":
      protocol = { kind: { $case: "grpc", value: { routes: grpcRoutes } } };
      break;
    case "opaque":
      protocol = { kind: { $case: "opaque", value: {} } };
      break;
    case "tls":
      protocol = { kind: { $case: "tls", value: {} } };
      break;
  }
  return {
    protocol,
    serverIps: [],
    authorizations: serverAuthzs(model, server),
    labels: serverLabels(server.meta.name, false),
  };
}

/** The Server (if any) that rules a pod port: oldest first, then by name. */
export function findServer(model: Model, pod: PodModel, port: number): ServerRes | undefined {
  return model.resources.servers
    .filter((server) => serverSelectsPort(server, pod.res, port))
    .sort(compareServers)[0];
}

export function inboundServer(
  model: Model,
  workload: string,
  port: number,
): { ok: true; server: inbound.Server } | LookupError {
  const parsed = parseWorkload(workload);
  if (!parsed.ok) return { ok: false, code: "InvalidArgument", message: parsed.message };
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    return { ok: false, code: "InvalidArgument", message: `invalid port ${port}` };
  }
  const { namespace, pod: podName } = parsed.workload;
  if (podName === undefined)
    return { ok: false, code: "NotFound", message: "unknown server (no ExternalWorkloads)" };
  const pod = model.podsByKey.get(key(namespace, podName));
  // The policy controller indexes only meshed pods.
  if (!pod?.meshed) return { ok: false, code: "NotFound", message: "unknown server" };
  const server = findServer(model, pod, port);
  return {
    ok: true,
    server: server ? selectedServer(model, server, pod, port) : defaultServer(model, pod, port),
  };
}
