/** Small builders for inbound.Server messages and requests, shared by the policy tests. */
import type { PeerIdentity } from "@inmesh/core";
import { type grpcRoute, type httpRoute, inbound, ipNetworkFromString } from "@inmesh/proto";
import { clientFacts } from "../src/client.js";
import type { HttpRequestFacts } from "../src/types.js";
import type { RefClient, RefRequest } from "./reference-evaluator.js";

export type Authn =
  | "unauthenticated"
  | "tls-unauthenticated"
  | { identities?: string[]; suffixes?: string[][] }
  | undefined;

export function authz(options: {
  networks?: (string | { cidr: string; except?: string[] })[];
  authn?: Authn;
  name?: string;
  kind?: string;
  defaultName?: string;
}): inbound.Authz {
  const networks = (options.networks ?? ["0.0.0.0/0", "::/0"]).map((n) =>
    typeof n === "string"
      ? { net: ipNetworkFromString(n), except: [] }
      : { net: ipNetworkFromString(n.cidr), except: (n.except ?? []).map(ipNetworkFromString) },
  );
  const authn = "authn" in options ? options.authn : "unauthenticated";
  let authentication: inbound.Authn | undefined;
  if (authn === "unauthenticated") authentication = { permit: { $case: "unauthenticated", value: {} } };
  else if (authn === "tls-unauthenticated") {
    authentication = {
      permit: { $case: "meshTLS", value: { clients: { $case: "unauthenticated", value: {} } } },
    };
  } else if (authn !== undefined) {
    authentication = {
      permit: {
        $case: "meshTLS",
        value: {
          clients: {
            $case: "identities",
            value: {
              identities: (authn.identities ?? []).map((name) => ({ name })),
              suffixes: (authn.suffixes ?? []).map((parts) => ({ parts })),
            },
          },
        },
      },
    };
  }
  return inbound.Authz.fromPartial({
    networks,
    authentication,
    metadata:
      options.defaultName !== undefined
        ? { kind: { $case: "default", value: options.defaultName } }
        : {
            kind: {
              $case: "resource",
              value: {
                group: "policy.linkerd.io",
                kind: options.kind ?? "authorizationpolicy",
                name: options.name ?? "authz",
              },
            },
          },
  });
}

export function pathPrefix(value: string): httpRoute.HttpRouteMatch {
  return { path: { kind: { $case: "prefix", value } }, headers: [], queryParams: [], method: undefined };
}
export function pathExact(value: string): httpRoute.HttpRouteMatch {
  return { path: { kind: { $case: "exact", value } }, headers: [], queryParams: [], method: undefined };
}
export function pathRegex(value: string): httpRoute.HttpRouteMatch {
  return { path: { kind: { $case: "regex", value } }, headers: [], queryParams: [], method: undefined };
}

export function exactHost(value: string): httpRoute.HostMatch {
  return { match: { $case: "exact", value } };
}
export function suffixHost(pattern: string): httpRoute.HostMatch {
  return {
    match: { $case: "suffix", value: { reverseLabels: pattern.replace(/^\*\./, "").split(".").reverse() } },
  };
}

export function httpRouteMsg(options: {
  name: string;
  hosts?: httpRoute.HostMatch[];
  authorizations?: inbound.Authz[];
  rules?: { matches?: httpRoute.HttpRouteMatch[]; filters?: inbound.HttpRoute_Filter[] }[];
  defaultName?: boolean;
}): inbound.HttpRoute {
  return inbound.HttpRoute.fromPartial({
    metadata: options.defaultName
      ? { kind: { $case: "default", value: options.name } }
      : {
          kind: {
            $case: "resource",
            value: { group: "policy.linkerd.io", kind: "HTTPRoute", name: options.name },
          },
        },
    hosts: options.hosts ?? [],
    authorizations: options.authorizations ?? [],
    rules: (options.rules ?? [{ matches: [pathPrefix("/")] }]).map((r) => ({
      matches: r.matches ?? [],
      filters: r.filters ?? [],
    })),
  });
}

export function grpcRouteMsg(options: {
  name: string;
  hosts?: httpRoute.HostMatch[];
  authorizations?: inbound.Authz[];
  rules?: { matches?: grpcRoute.GrpcRouteMatch[]; filters?: inbound.GrpcRoute_Filter[] }[];
}): inbound.GrpcRoute {
  return inbound.GrpcRoute.fromPartial({
    metadata: {
      kind: {
        $case: "resource",
        value: { group: "gateway.networking.k8s.io", kind: "GRPCRoute", name: options.name },
      },
    },
    hosts: options.hosts ?? [],
    authorizations: options.authorizations ?? [],
    rules: (options.rules ?? [{ matches: [] }]).map((r) => ({
      matches: r.matches ?? [],
      filters: r.filters ?? [],
    })),
  });
}

export function rpc(service: string, method: string): grpcRoute.GrpcRouteMatch {
  return { rpc: { service, method }, headers: [] };
}

export type ProtocolSpec =
  | { kind: "detect"; routes?: inbound.HttpRoute[] }
  | { kind: "http1" | "http2"; routes?: inbound.HttpRoute[] }
  | { kind: "grpc"; routes?: inbound.GrpcRoute[] }
  | { kind: "opaque" | "tls" };

export function serverMsg(options: {
  protocol?: ProtocolSpec;
  authorizations?: inbound.Authz[];
  name?: string;
  labels?: Record<string, string>;
}): inbound.Server {
  const p = options.protocol ?? { kind: "detect" };
  let protocol: inbound.ProxyProtocol;
  switch (p.kind) {
    case "detect":
      protocol = {
        kind: {
          $case: "detect",
          value: {
            timeout: { seconds: 10n, nanos: 0 },
            httpRoutes: p.routes ?? [],
            httpLocalRateLimit: undefined,
          },
        },
      };
      break;
    case "http1":
      protocol = { kind: { $case: "http1", value: { routes: p.routes ?? [], localRateLimit: undefined } } };
      break;
    case "http2":
      protocol = { kind: { $case: "http2", value: { routes: p.routes ?? [], localRateLimit: undefined } } };
      break;
    case "grpc":
      protocol = { kind: { $case: "grpc", value: { routes: p.routes ?? [] } } };
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
    authorizations: options.authorizations ?? [],
    labels: options.labels ?? { group: "policy.linkerd.io", kind: "server", name: options.name ?? "web" },
  };
}

export function peer(client: RefClient): PeerIdentity {
  if (client.tls === "none") return { kind: "none", reason: "no_tls_from_remote" };
  if (client.identity === undefined) return { kind: "tls-anonymous", tls: "established" };
  return { kind: "mesh", name: client.identity, tls: "established" };
}

export const PLAIN = (address: string): RefClient => ({ address, tls: "none" });
export const MESH = (address: string, identity: string): RefClient => ({
  address,
  tls: "established",
  identity,
});
export const ANON_TLS = (address: string): RefClient => ({ address, tls: "established" });

export function request(options: Partial<RefRequest> & { client?: RefClient }): RefRequest {
  return {
    method: options.method ?? "GET",
    ...(options.authority === undefined ? {} : { authority: options.authority }),
    path: options.path ?? "/",
    query: options.query ?? "",
    headers: options.headers ?? {},
    client: options.client ?? PLAIN("10.0.0.1"),
  };
}

/** The compiled evaluator's view of a reference request. */
export function facts(req: RefRequest): HttpRequestFacts {
  return {
    method: req.method,
    authority: req.authority,
    path: req.path,
    query: req.query,
    headers: req.headers,
    client: clientFacts(req.client.address, peer(req.client)),
  };
}

export const SA = (name: string, ns = "default") =>
  `${name}.${ns}.serviceaccount.identity.linkerd.cluster.local`;

/**
 * The same request as Node's HTTP parser hands it over: repeated headers joined with ", " in the header
 * object, every line in `rawHeaders` (names in another case than the object's).
 */
export function nodeFacts(req: RefRequest): HttpRequestFacts {
  const headers: Record<string, string> = {};
  const rawHeaders: string[] = [];
  for (const [name, value] of Object.entries(req.headers)) {
    const values = Array.isArray(value) ? value : [value];
    headers[name] = values.join(", ");
    for (const item of values) rawHeaders.push(name.toUpperCase(), item);
  }
  return { ...facts(req), headers, rawHeaders };
}
