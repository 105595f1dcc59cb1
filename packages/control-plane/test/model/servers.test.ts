import { durationFromMs, type inbound } from "@inmesh/proto";
import { describe, expect, it } from "vitest";
import { buildClusterState } from "../../src/model/index.js";
import {
  ALL,
  authzName,
  build,
  CLUSTER,
  fixture,
  httpRoutesOf,
  network,
  networksOf,
  routeName,
  server,
} from "./helpers.js";

const state = build(["servers.yaml"]);
const identities = (names: string[], suffixes: string[][] = []): inbound.Authn => ({
  permit: {
    $case: "meshTLS",
    value: {
      clients: {
        $case: "identities",
        value: {
          identities: names.map((name) => ({ name })),
          suffixes: suffixes.map((parts) => ({ parts })),
        },
      },
    },
  },
});
const WEB = "web.shop.serviceaccount.identity.linkerd.cluster.local";
const OPS_SUFFIX = ["ops", "serviceaccount", "identity", "linkerd", "cluster", "local"];

describe("Server → InboundServer (policy-semantics.md §4)", () => {
  it("a Server selecting a port by name rules it, with its protocol and labels", () => {
    const s = server(state, "shop", "api", 8080);
    expect(s.labels).toEqual({ group: "policy.linkerd.io", kind: "server", name: "api-http" });
    expect(s.protocol?.kind?.$case).toBe("http1");
  });

  it("maps every proxyProtocol", () => {
    expect(server(state, "shop", "api", 9990).protocol?.kind).toEqual({
      $case: "detect",
      value: expect.objectContaining({ timeout: durationFromMs(10_000) }),
    });
    expect(server(state, "shop", "api", 9000).protocol?.kind?.$case).toBe("grpc");
    expect(server(state, "shop", "api", 7000).protocol).toEqual({ kind: { $case: "opaque", value: {} } });
    const manifest = (protocol: string) => `
apiVersion: v1
kind: Pod
metadata: { name: p, namespace: ns, labels: { app: p, linkerd.io/control-plane-ns: linkerd } }
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: { name: s, namespace: ns }
spec: { podSelector: { matchLabels: { app: p } }, port: 80, proxyProtocol: ${protocol} }
`;
    const cases: Record<string, string> = {
      unknown: "detect",
      "HTTP/1": "http1",
      "HTTP/2": "http2",
      gRPC: "grpc",
      opaque: "opaque",
      TLS: "tls",
    };
    for (const [protocol, expected] of Object.entries(cases)) {
      const s = server(buildClusterState([{ path: "p.yaml", text: manifest(protocol) }]), "ns", "p", 80);
      expect(s.protocol?.kind?.$case).toBe(expected);
    }
  });

  it("a Server with no authorizations denies everything (surprise 1)", () => {
    expect(server(state, "shop", "api", 9000).authorizations).toEqual([]);
  });

  it("ports of the pod no Server selects keep the default server", () => {
    expect(server(state, "shop", "api", 8888).labels).toEqual({
      group: "",
      kind: "default",
      name: "all-unauthenticated",
    });
  });

  it("accessPolicy adds a default authorization (audit)", () => {
    const s = server(state, "shop", "api", 7100);
    expect(s.labels.name).toBe("api-audit");
    expect(s.authorizations).toEqual([
      {
        networks: ALL,
        authentication: { permit: { $case: "unauthenticated", value: {} } },
        labels: { group: "", kind: "default", name: "audit" },
        metadata: { kind: { $case: "default", value: "audit" } },
      },
    ]);
  });

  it("the oldest of two Servers selecting a port wins and the other is reported as a warning", () => {
    const text = `
apiVersion: v1
kind: Pod
metadata: { name: p, namespace: ns, labels: { app: p, linkerd.io/control-plane-ns: linkerd } }
spec: { containers: [{ name: c, ports: [{ name: web, containerPort: 80 }] }] }
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: { name: a-newer, namespace: ns, creationTimestamp: "2024-02-01T00:00:00Z" }
spec: { podSelector: { matchLabels: { app: p } }, port: 80 }
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: { name: z-older, namespace: ns, creationTimestamp: "2024-01-01T00:00:00Z" }
spec: { podSelector: { matchLabels: { app: p } }, port: web }
`;
    const s2 = buildClusterState([{ path: "two.yaml", text }]);
    expect(server(s2, "ns", "p", 80).labels.name).toBe("z-older");
    expect(s2.warnings).toEqual([
      expect.objectContaining({
        file: "two.yaml",
        document: 1,
        kind: "Server",
        name: "a-newer",
        field: "spec.port",
      }),
    ]);
  });
});

describe("ServerAuthorization (policy-semantics.md §5.1)", () => {
  const authzs = server(state, "shop", "api", 8080).authorizations;

  it("by mesh identity, exact and suffix, without networks → the cluster networks", () => {
    const byIdentity = authzs.find((a) => authzName(a) === "serverauthorization:by-identity");
    expect(byIdentity).toEqual({
      networks: CLUSTER,
      authentication: identities([WEB], [OPS_SUFFIX]),
      labels: { group: "policy.linkerd.io", kind: "serverauthorization", name: "by-identity" },
      metadata: {
        kind: {
          $case: "resource",
          value: {
            group: "policy.linkerd.io",
            kind: "serverauthorization",
            name: "by-identity",
            namespace: "",
            section: "",
            port: 0,
          },
        },
      },
    });
  });

  it("by service account (namespace defaults to the authorization's), selected by Server labels, with except", () => {
    const bySa = authzs.find((a) => authzName(a) === "serverauthorization:by-service-account");
    expect(bySa?.authentication).toEqual(
      identities([WEB, "batch.jobs.serviceaccount.identity.linkerd.cluster.local"]),
    );
    expect(bySa?.networks).toEqual([network("10.0.0.0/8", ["10.1.0.0/16"])]);
  });

  it("by network, unauthenticated, a bare IP becoming a /32", () => {
    const s = server(state, "shop", "api", 9990);
    expect(s.authorizations.map(authzName)).toEqual(["serverauthorization:by-network"]);
    expect(networksOf(s.authorizations[0] as inbound.Authz)).toEqual(["192.168.1.10/32"]);
    expect(s.authorizations[0]?.authentication).toEqual({ permit: { $case: "unauthenticated", value: {} } });
  });

  it("unauthenticatedTLS permits any mesh TLS client, on the cluster networks", () => {
    const [authz] = server(state, "shop", "api", 7000).authorizations;
    expect(authz?.authentication).toEqual({
      permit: { $case: "meshTLS", value: { clients: { $case: "unauthenticated", value: {} } } },
    });
    expect(authz?.networks).toEqual(CLUSTER);
  });

  it("the cluster networks option is what an authorization without networks gets", () => {
    const custom = build(["servers.yaml"], { clusterNetworks: ["10.42.0.0/16"] });
    const byIdentity = server(custom, "shop", "api", 8080).authorizations[0];
    expect(byIdentity?.networks).toEqual([network("10.42.0.0/16")]);
  });
});

describe("AuthorizationPolicy (policy-semantics.md §5.2–5.5)", () => {
  it("targeting a Server: MeshTLSAuthentication (ServiceAccount + Namespace refs) and NetworkAuthentication", () => {
    const authz = server(state, "shop", "api", 8080).authorizations.find(
      (a) => authzName(a) === "authorizationpolicy:api-http-web",
    );
    expect(authz).toEqual({
      networks: [network("172.16.0.0/12"), network("fd00::/8", ["fd00::1/128"])],
      authentication: identities([WEB], [OPS_SUFFIX]),
      labels: { group: "policy.linkerd.io", kind: "authorizationpolicy", name: "api-http-web" },
      metadata: {
        kind: {
          $case: "resource",
          value: {
            group: "policy.linkerd.io",
            kind: "authorizationpolicy",
            name: "api-http-web",
            namespace: "",
            section: "",
            port: 0,
          },
        },
      },
    });
  });

  it("server-level order is ServerAuthorizations then AuthorizationPolicies, each by name", () => {
    expect(server(state, "shop", "api", 8080).authorizations.map(authzName)).toEqual([
      "serverauthorization:by-identity",
      "serverauthorization:by-service-account",
      "authorizationpolicy:api-http-web",
    ]);
  });

  it("identity strings: * is every identity, *.a.b a suffix, SPIFFE URIs exact; custom trust domain in refs", () => {
    const text = `
apiVersion: v1
kind: Pod
metadata: { name: p, namespace: ns, labels: { app: p, linkerd.io/control-plane-ns: mesh } }
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: { name: s, namespace: ns }
spec: { podSelector: { matchLabels: { app: p } }, port: 80 }
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: { name: ids, namespace: ns }
spec:
  identities: ["*", "*.example.org", "spiffe://example.org/ns/a/sa/b"]
  identityRefs: [{ kind: ServiceAccount, name: sa, namespace: other }, { kind: Namespace, name: ops }]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: { name: ap, namespace: ns }
spec:
  targetRef: { group: policy.linkerd.io, kind: Server, name: s }
  requiredAuthenticationRefs: [{ group: policy.linkerd.io, kind: MeshTLSAuthentication, name: ids }]
`;
    const custom = buildClusterState([{ path: "ids.yaml", text }], {
      controlPlaneNamespace: "mesh",
      trustDomain: "corp.example",
    });
    expect(custom.warnings).toEqual([]);
    expect(server(custom, "ns", "p", 80).authorizations[0]?.authentication).toEqual(
      identities(
        ["spiffe://example.org/ns/a/sa/b", "sa.other.serviceaccount.identity.mesh.corp.example"],
        [[], ["example", "org"], ["ops", "serviceaccount", "identity", "mesh", "corp", "example"]],
      ),
    );
  });

  it("targeting a Namespace: every Server of the namespace, everyone from everywhere with no refs", () => {
    const s = server(state, "corp", "corp-api", 8080);
    expect(s.authorizations).toEqual([
      expect.objectContaining({
        networks: ALL,
        authentication: { permit: { $case: "unauthenticated", value: {} } },
        labels: { group: "policy.linkerd.io", kind: "authorizationpolicy", name: "everyone" },
      }),
    ]);
  });

  it("a Namespace-targeted policy does not touch ports without a Server (surprise 11)", () => {
    expect(server(state, "corp", "corp-api", 8081).authorizations.map(authzName)).toEqual([
      "default:all-unauthenticated",
    ]);
  });

  it("targeting an HTTPRoute: a route-level authorization (ServiceAccount → exact identity, everywhere)", () => {
    const items = httpRoutesOf(server(state, "shop", "api", 8080)).find(
      (r) => routeName(r) === "policy.linkerd.io/HTTPRoute:items",
    );
    expect(items?.authorizations).toEqual([
      expect.objectContaining({
        networks: ALL,
        authentication: identities([WEB]),
        metadata: expect.objectContaining({ kind: expect.objectContaining({ $case: "resource" }) }),
      }),
    ]);
    expect(items?.authorizations.map(authzName)).toEqual(["authorizationpolicy:items-route"]);
    // Route-level authorizations add to the server-level list; the server list is unchanged.
    expect(server(state, "shop", "api", 8080).authorizations.map(authzName)).not.toContain(
      "authorizationpolicy:items-route",
    );
  });

  it("an HTTPRoute target must match the route's group", () => {
    const health = httpRoutesOf(server(state, "shop", "api", 8080)).find((r) =>
      routeName(r).endsWith(":health"),
    );
    expect(health?.authorizations).toEqual([]);
  });

  it("targeting a GRPCRoute", () => {
    const s = server(state, "shop", "api", 9000);
    const kind = s.protocol?.kind;
    if (kind?.$case !== "grpc") throw new Error("expected grpc");
    expect(kind.value.routes[0]?.authorizations.map(authzName)).toEqual(["authorizationpolicy:rpc-route"]);
    expect(kind.value.routes[0]?.authorizations[0]?.authentication).toEqual({
      permit: { $case: "unauthenticated", value: {} },
    });
    expect(networksOf(kind.value.routes[0]?.authorizations[0] as inbound.Authz)).toEqual([
      "172.16.0.0/12",
      "fd00::/8 except fd00::1/128",
    ]);
  });
});

describe("inbound HTTPRoutes (policy-semantics.md §6.2, §6.4)", () => {
  const routes = httpRoutesOf(server(state, "shop", "api", 8080));

  it("timestamped routes come first, oldest first, then the others by name; no default or probe route", () => {
    expect(routes.map(routeName)).toEqual([
      "gateway.networking.k8s.io/HTTPRoute:health",
      "policy.linkerd.io/HTTPRoute:items",
      "gateway.networking.k8s.io/HTTPRoute:untimed",
    ]);
  });

  it("route metadata names group, kind HTTPRoute and name", () => {
    expect(routes[1]?.metadata).toEqual({
      kind: {
        $case: "resource",
        value: {
          group: "policy.linkerd.io",
          kind: "HTTPRoute",
          name: "items",
          namespace: "",
          section: "",
          port: 0,
        },
      },
    });
  });

  it("hostnames: exact and wildcard suffix (reversed labels)", () => {
    expect(routes[1]?.hosts).toEqual([
      { match: { $case: "exact", value: "api.example.com" } },
      { match: { $case: "suffix", value: { reverseLabels: ["org", "example"] } } },
    ]);
  });

  it("matches: path types, headers, query params, method; a match without path is PathPrefix /", () => {
    expect(routes[1]?.rules[0]?.matches).toEqual([
      {
        path: { kind: { $case: "exact", value: "/v1/items" } },
        headers: [
          { name: "x-tenant", value: { $case: "exact", value: Buffer.from("acme") } },
          { name: "x-trace", value: { $case: "regex", value: "[0-9a-f]+" } },
        ],
        queryParams: [
          { name: "page", value: { $case: "exact", value: "1" } },
          { name: "sort", value: { $case: "regex", value: "asc|desc" } },
        ],
        method: { type: { $case: "registered", value: 0 } },
      },
      {
        path: { kind: { $case: "regex", value: "/v1/items/[0-9]+" } },
        headers: [],
        queryParams: [],
        method: undefined,
      },
      {
        path: { kind: { $case: "prefix", value: "/" } },
        headers: [{ name: "x-any", value: { $case: "exact", value: Buffer.from("yes") } }],
        queryParams: [],
        method: undefined,
      },
    ]);
    expect(routes[0]?.rules[0]?.matches[0]?.path).toEqual({ kind: { $case: "prefix", value: "/healthz" } });
  });

  it("filters: request header modifier sent, response header modifier not sent", () => {
    expect(routes[1]?.rules[0]?.filters).toEqual([
      {
        kind: {
          $case: "requestHeaderModifier",
          value: {
            add: { headers: [{ name: "x-added", value: Buffer.from("1") }] },
            set: { headers: [{ name: "x-route", value: Buffer.from("items") }] },
            remove: ["x-secret"],
          },
        },
      },
    ]);
  });

  it("filters: redirect with scheme, host, prefix rewrite, port and status; status defaults to 302", () => {
    expect(routes[1]?.rules[1]?.filters).toEqual([
      {
        kind: {
          $case: "redirect",
          value: {
            scheme: { type: { $case: "unregistered", value: "https" } },
            host: "new.example.com",
            path: { replace: { $case: "prefix", value: "/new" } },
            port: 8443,
            status: 301,
          },
        },
      },
    ]);
    // A rule without matches gets the CRD default match.
    expect(routes[1]?.rules[2]).toEqual({
      matches: [
        { path: { kind: { $case: "prefix", value: "/" } }, headers: [], queryParams: [], method: undefined },
      ],
      filters: [
        {
          kind: {
            $case: "redirect",
            value: {
              scheme: undefined,
              host: "",
              path: { replace: { $case: "full", value: "/moved" } },
              port: 0,
              status: 302,
            },
          },
        },
      ],
    });
  });
});

describe("probe routes (policy-semantics.md §3)", () => {
  it("a Server without HTTPRoutes keeps the default and probe routes", () => {
    const s = server(state, "shop", "api", 9990);
    expect(httpRoutesOf(s).map(routeName)).toEqual(["default:default", "default:probe"]);
    expect(httpRoutesOf(s)[1]?.rules[0]?.matches.map((m) => m.path?.kind?.value)).toEqual(["/live"]);
  });

  it("attaching an HTTPRoute removes both default routes, probes included (surprise 5)", () => {
    // Port 8080 has a readiness probe on /ready, yet only the attached routes are sent.
    expect(httpRoutesOf(server(state, "shop", "api", 8080)).map(routeName)).not.toContain("default:probe");
  });

  it("gRPC servers get no probe route; without GRPCRoutes they get the default gRPC route", () => {
    const text = `
apiVersion: v1
kind: Pod
metadata: { name: p, namespace: ns, labels: { app: p, linkerd.io/control-plane-ns: linkerd } }
spec:
  containers:
    - name: c
      ports: [{ containerPort: 50051 }]
      readinessProbe: { httpGet: { port: 50051, path: /ready } }
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: { name: s, namespace: ns }
spec: { podSelector: { matchLabels: { app: p } }, port: 50051, proxyProtocol: gRPC }
`;
    const s = server(buildClusterState([{ path: "g.yaml", text }]), "ns", "p", 50051);
    expect(s.protocol).toEqual({
      kind: {
        $case: "grpc",
        value: {
          routes: [
            {
              metadata: { kind: { $case: "default", value: "default" } },
              hosts: [],
              authorizations: [],
              rules: [{ matches: [{ rpc: { service: "", method: "" }, headers: [] }], filters: [] }],
            },
          ],
        },
      },
    });
  });
});

describe("GRPCRoute (policy-semantics.md §6.3)", () => {
  it("on a gRPC Server: rpc matches, headers, request header modifier only", () => {
    const kind = server(state, "shop", "api", 9000).protocol?.kind;
    if (kind?.$case !== "grpc") throw new Error("expected grpc");
    expect(kind.value.routes).toHaveLength(1);
    const route = kind.value.routes[0];
    expect(route?.metadata).toEqual({
      kind: {
        $case: "resource",
        value: {
          group: "gateway.networking.k8s.io",
          kind: "GRPCRoute",
          name: "items-rpc",
          namespace: "",
          section: "",
          port: 0,
        },
      },
    });
    expect(route?.hosts).toEqual([{ match: { $case: "exact", value: "api.shop" } }]);
    expect(route?.rules).toEqual([
      {
        matches: [
          {
            rpc: { service: "shop.Items", method: "Get" },
            headers: [{ name: "x-tenant", value: { $case: "exact", value: Buffer.from("acme") } }],
          },
          { rpc: { service: "shop.Admin", method: "" }, headers: [] },
        ],
        filters: [
          {
            kind: {
              $case: "requestHeaderModifier",
              value: {
                add: { headers: [{ name: "x-rpc", value: Buffer.from("1") }] },
                set: { headers: [] },
                remove: [],
              },
            },
          },
        ],
      },
    ]);
  });

  it("an HTTPRoute sharing a Server with a GRPCRoute is dropped, with a warning (surprise 10)", () => {
    expect(state.warnings).toEqual([
      expect.objectContaining({
        file: "servers.yaml",
        kind: "HTTPRoute",
        name: "grpc-server-http",
        field: "spec.parentRefs",
      }),
    ]);
  });

  it("a GRPCRoute on an HTTP/2 Server is never sent", () => {
    const text = `
apiVersion: v1
kind: Pod
metadata: { name: p, namespace: ns, labels: { app: p, linkerd.io/control-plane-ns: linkerd } }
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: { name: s, namespace: ns }
spec: { podSelector: { matchLabels: { app: p } }, port: 80, proxyProtocol: HTTP/2 }
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: { name: r, namespace: ns }
spec:
  parentRefs: [{ group: policy.linkerd.io, kind: Server, name: s }]
  rules: [{ matches: [{ method: { service: a.B } }] }]
`;
    const s = server(buildClusterState([{ path: "h2.yaml", text }]), "ns", "p", 80);
    expect(s.protocol?.kind?.$case).toBe("http2");
    expect(httpRoutesOf(s).map(routeName)).toEqual(["default:default"]);
  });
});

describe("fixtures load together", () => {
  it("servers.yaml and defaults.yaml in one state", () => {
    const both = buildClusterState([fixture("servers.yaml"), fixture("defaults.yaml")]);
    expect(both.pods.map((p) => `${p.namespace}/${p.name}`)).toContain("shop/api");
    expect(both.pods.map((p) => `${p.namespace}/${p.name}`)).toContain("plain/web");
  });
});
