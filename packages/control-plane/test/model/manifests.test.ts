import { hasMeshErrorCode, isMeshError, MeshErrorCode } from "@inmesh/core";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { stringify } from "yaml";
import {
  buildClusterState,
  ManifestError,
  type ManifestFile,
  type ManifestProblem,
} from "../../src/model/index.js";
import { build, fixture, server } from "./helpers.js";

function problems(files: ManifestFile[]): ManifestProblem[] {
  try {
    buildClusterState(files);
  } catch (error) {
    if (error instanceof ManifestError) return error.problems;
    throw error;
  }
  throw new Error("expected a ManifestError");
}

const p = (
  file: string,
  document: number,
  kind: string | undefined,
  name: string | undefined,
  field: string | undefined,
  message: string | RegExp,
) => {
  const expected: Record<string, unknown> = {
    file,
    document,
    message: typeof message === "string" ? message : expect.stringMatching(message),
  };
  if (kind !== undefined) expected.kind = kind;
  if (name !== undefined) expected.name = name;
  if (field !== undefined) expected.field = field;
  return expect.objectContaining(expected);
};

describe("ManifestError", () => {
  it("is a MeshError with code MESH_ERR_MANIFEST_INVALID, listing every problem in its message", () => {
    let caught: unknown;
    try {
      buildClusterState([fixture("defaults.yaml"), fixture("bad/types.yaml")]);
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(ManifestError);
    expect(isMeshError(caught)).toBe(true);
    expect(hasMeshErrorCode(caught, MeshErrorCode.MANIFEST_INVALID)).toBe(true);
    const error = caught as ManifestError;
    expect(error.problems).toHaveLength(9);
    expect(error.message).toContain("9 problems");
    expect(error.message).toContain(
      "bad/types.yaml:1 (document 0) Service/svc spec.ports[0].port: must be an integer",
    );
    expect(error.problems[1]).toMatchObject({ document: 1, line: 8 });
    expect(error.details?.problems).toBe(error.problems);
  });

  it("one bad document among good files builds nothing", () => {
    const bad = {
      path: "one.yaml",
      text: "apiVersion: v1\nkind: Pod\nmetadata: { name: x, labels: { a: 1 } }\n",
    };
    expect(() => buildClusterState([fixture("defaults.yaml"), fixture("servers.yaml"), bad])).toThrow(
      ManifestError,
    );
  });

  it("refuses invalid options with a ConfigError naming the setting", () => {
    expect(() => buildClusterState([], { clusterNetworks: ["10.0.0.0/40"] })).toThrow(
      expect.objectContaining({ code: "MESH_ERR_INVALID_CONFIG", details: { variable: "clusterNetworks" } }),
    );
    expect(() => buildClusterState([], { defaultPolicy: "allow" as never })).toThrow(
      expect.objectContaining({ code: "MESH_ERR_INVALID_CONFIG" }),
    );
    expect(() => buildClusterState([], { clusterDomain: "Cluster.Local" })).toThrow(
      expect.objectContaining({ code: "MESH_ERR_INVALID_CONFIG" }),
    );
  });
});

describe("bad manifests: file, document index and field for every problem", () => {
  it("unknown groups, kinds and versions; missing fields; YAML errors", () => {
    expect(problems([fixture("bad/kinds.yaml")])).toEqual([
      p(
        "bad/kinds.yaml",
        0,
        "Widget",
        undefined,
        "apiVersion",
        'unknown API group "widgets.example.com" (apiVersion "widgets.example.com/v1")',
      ),
      p(
        "bad/kinds.yaml",
        1,
        "Servr",
        undefined,
        "kind",
        /^unknown kind "Servr" for apiVersion "policy.linkerd.io\/v1beta3"; supported: Server,/,
      ),
      p(
        "bad/kinds.yaml",
        2,
        "Server",
        undefined,
        "apiVersion",
        /^Server is not served as "policy.linkerd.io\/v9"/,
      ),
      p("bad/kinds.yaml", 3, "Deployment", undefined, "kind", /write the Pods themselves/),
      p("bad/kinds.yaml", 4, "Pod", undefined, "apiVersion", "is required"),
      p(
        "bad/kinds.yaml",
        5,
        undefined,
        undefined,
        undefined,
        "a manifest must be a mapping with apiVersion and kind, got a list",
      ),
      p("bad/kinds.yaml", 6, "Pod", undefined, "metadata.name", "is required"),
      p(
        "bad/kinds.yaml",
        7,
        "Pod",
        "Web",
        "metadata.name",
        '"Web" is not a valid name (lower-case RFC 1123)',
      ),
      p(
        "bad/kinds.yaml",
        8,
        "Secret",
        undefined,
        "items[1].kind",
        /^unknown kind "Secret" for apiVersion "v1"/,
      ),
      p("bad/kinds.yaml", 9, undefined, undefined, undefined, /^YAML syntax error: .* at line 43, column 1$/),
    ]);
  });

  it("wrong types and values", () => {
    const f = "bad/types.yaml";
    expect(problems([fixture(f)])).toEqual([
      p(f, 0, "Service", "svc", "spec.ports[0].port", 'must be an integer, got the string "abc"'),
      p(f, 1, "Pod", "p", "metadata.labels.version", "must be a string, got number 2 (quote it)"),
      p(
        f,
        1,
        "Pod",
        "p",
        "spec.containers[0].ports[0].containerPort",
        "must be between 1 and 65535, got 70000",
      ),
      p(f, 2, "Server", "quoted", "spec.port", 'must be a port number or a port name, got the string "8080"'),
      p(f, 3, "Server", "bad-protocol", "spec.proxyProtocol", /got "HTTP\/3"$/),
      p(f, 4, "Server", "bad-access", "spec.accessPolicy", '"allow-all" is not a default policy name'),
      p(f, 5, "Server", "bad-selector", "spec.podSelector.matchExpressions[0].operator", /got "Like"$/),
      p(f, 6, "Server", "stamp", "metadata.creationTimestamp", '"yesterday" is not an RFC 3339 timestamp'),
      p(f, 7, "Pod", "ip", "status.podIP", '"10.0.0.300" is not an IP address'),
    ]);
  });

  it("dangling references: only the resource that does not resolve is ignored, and reported by name", () => {
    const f = "bad/references.yaml";
    const text = fixture(f).text;
    // The route with a missing backend is wrong in itself (outbound has nothing to send to): still refused.
    expect(problems([fixture(f)])).toEqual([
      p(
        f,
        7,
        "HTTPRoute",
        "missing-backend",
        "spec.rules[0].backendRefs[0].name",
        'Service "ghost" does not exist in namespace "shop"',
      ),
    ]);
    const docs = text.split(/^---$/m);
    const withoutBackend = [...docs.slice(0, 7), ...docs.slice(8)].join("---");
    const pod = `---
apiVersion: v1
kind: Pod
metadata: { name: web-1, namespace: shop, labels: { linkerd.io/control-plane-ns: linkerd } }
spec:
  containers: [{ name: app, image: app, ports: [{ containerPort: 80 }] }]
status: { podIP: 10.0.0.9 }
`;
    const state = buildClusterState([{ path: f, text: withoutBackend + pod }]);
    const ignored = (document: number, kind: string, name: string, field: string, message: string | RegExp) =>
      p(
        f,
        document,
        kind,
        name,
        field,
        typeof message === "string" ? `${message}; this ${kind} is ignored` : message,
      );
    expect(state.warnings).toEqual([
      ignored(
        0,
        "ServerAuthorization",
        "orphan",
        "spec.server.name",
        'Server "missing-server" does not exist in namespace "shop"',
      ),
      ignored(
        1,
        "AuthorizationPolicy",
        "no-mtls",
        "spec.requiredAuthenticationRefs[0].name",
        'MeshTLSAuthentication "missing-ids" does not exist in namespace "shop"',
      ),
      ignored(
        2,
        "AuthorizationPolicy",
        "no-net",
        "spec.requiredAuthenticationRefs[0].name",
        'NetworkAuthentication "missing-net" does not exist in namespace "other"',
      ),
      ignored(
        3,
        "AuthorizationPolicy",
        "no-server",
        "spec.targetRef.name",
        'Server "missing-server" does not exist in namespace "shop"',
      ),
      ignored(
        4,
        "AuthorizationPolicy",
        "no-route",
        "spec.targetRef.name",
        /^HTTPRoute "missing-route" \(group gateway.networking.k8s.io\) does not exist.*; this AuthorizationPolicy is ignored$/,
      ),
      ignored(
        5,
        "HTTPRoute",
        "orphan-route",
        "spec.parentRefs[0].name",
        'Server "missing-server" does not exist in namespace "shop"',
      ),
      ignored(
        6,
        "HTTPRoute",
        "port-on-server",
        "spec.parentRefs[0].port",
        "a Server parent must not set port",
      ),
    ]);
    // Everything else is served: the Server "web" exists with none of the ignored authorizations or routes
    // (so it denies all but localhost, failing closed), and its HTTP routes are the defaults.
    const web = server(state, "shop", "web-1", 80);
    expect(web.labels).toMatchObject({ kind: "server", name: "web" });
    expect(web.authorizations).toEqual([]);
    const routes = web.protocol?.kind?.$case === "detect" ? web.protocol.kind.value.httpRoutes : [];
    expect(
      routes.map((r) => (r.metadata?.kind?.$case === "default" ? r.metadata.kind.value : "resource")),
    ).toEqual(["default"]);
  });

  it("duplicate names (same kind, namespace and name), across files", () => {
    expect(problems([fixture("bad/duplicates-a.yaml"), fixture("bad/duplicates-b.yaml")])).toEqual([
      p(
        "bad/duplicates-a.yaml",
        1,
        "Pod",
        "twin",
        "metadata.name",
        "duplicate Pod shop/twin (first defined in bad/duplicates-a.yaml:1 (document 0))",
      ),
      p(
        "bad/duplicates-b.yaml",
        0,
        "Server",
        "twin",
        "metadata.name",
        "duplicate Server shop/twin (first defined in bad/duplicates-a.yaml:13 (document 3))",
      ),
    ]);
  });

  it("invalid CIDRs and identities, contradictory or empty authentication, unsupported targets", () => {
    const f = "bad/networks.yaml";
    expect(problems([fixture(f)])).toEqual([
      p(
        f,
        0,
        "ServerAuthorization",
        "wide-prefix",
        "spec.client.networks[0].cidr",
        'invalid network "10.0.0.0/33": prefix length must be 0..32',
      ),
      p(
        f,
        1,
        "ServerAuthorization",
        "outside",
        "spec.client.networks[0].except[0]",
        "10.1.0.0/24 is not inside 10.0.0.0/16",
      ),
      p(
        f,
        2,
        "ServerAuthorization",
        "covers",
        "spec.client.networks[0].except[0]",
        "10.0.0.0/16 excludes all of 10.0.0.0/16",
      ),
      p(
        f,
        3,
        "NetworkAuthentication",
        "not-ip",
        "spec.networks[0].cidr",
        'invalid network "not-an-ip": not an IP address',
      ),
      p(f, 4, "NetworkAuthentication", "empty", "spec.networks", "needs at least one network"),
      p(f, 5, "MeshTLSAuthentication", "upper", "spec.identities[0]", /is not a valid identity/),
      p(
        f,
        6,
        "MeshTLSAuthentication",
        "bad-wildcard",
        "spec.identities[0]",
        '"*.bad domain" is not a valid identity suffix',
      ),
      p(f, 7, "MeshTLSAuthentication", "nothing", "spec", "needs at least one of identities or identityRefs"),
      p(
        f,
        8,
        "ServerAuthorization",
        "both",
        "spec.client.meshTLS",
        "must not be set together with unauthenticated: true",
      ),
      p(f, 9, "AuthorizationPolicy", "pod-target", "spec.targetRef", /^unsupported target core\/Pod/),
    ]);
  });

  it("route matches and filters, gRPC regex methods, outbound annotations, ServiceProfiles", () => {
    const f = "bad/routes.yaml";
    expect(problems([fixture(f)])).toEqual([
      p(f, 0, "HTTPRoute", "r", "spec.rules[0].matches[0].path.value", 'must start with "/", got "no-slash"'),
      p(f, 0, "HTTPRoute", "r", "spec.rules[0].matches[1].path.value", /^invalid regular expression/),
      p(f, 0, "HTTPRoute", "r", "spec.rules[0].matches[2].method", /got "FETCH"$/),
      p(
        f,
        0,
        "HTTPRoute",
        "r",
        "spec.rules[0].matches[3].headers[0].name",
        '"bad header" is not a valid header name',
      ),
      p(
        f,
        0,
        "HTTPRoute",
        "r",
        "spec.rules[0].filters[0].type",
        'filter "URLRewrite" is not supported by Linkerd',
      ),
      p(f, 1, "GRPCRoute", "g", "spec.rules[0].matches[0].method.type", /^only Exact gRPC method matches/),
      p(
        f,
        2,
        "Service",
        "annotated",
        'metadata.annotations["timeout.linkerd.io/request"]',
        '"10 seconds" is not a duration like 100ms, 10s or 1m',
      ),
      p(
        f,
        2,
        "Service",
        "annotated",
        'metadata.annotations["retry.linkerd.io/limit"]',
        '"many" is not a number 0-65535',
      ),
      p(
        f,
        2,
        "Service",
        "annotated",
        'metadata.annotations["retry.linkerd.io/http"]',
        /^invalid retry condition " 502"/,
      ),
      p(
        f,
        2,
        "Service",
        "annotated",
        'metadata.annotations["balancer.linkerd.io/failure-accrual"]',
        /^unsupported failure accrual mode "unified"/,
      ),
      p(
        f,
        3,
        "ServiceProfile",
        "annotated.shop.svc.cluster.local",
        "spec.routes[0].condition",
        "is required",
      ),
      p(
        f,
        3,
        "ServiceProfile",
        "annotated.shop.svc.cluster.local",
        "spec.routes[1].timeout",
        '"soon" is not a Go duration like 300ms or 1m30s',
      ),
      p(
        f,
        3,
        "ServiceProfile",
        "annotated.shop.svc.cluster.local",
        "spec.retryBudget.ttl",
        "must be a string, got number 10",
      ),
    ]);
  });

  it("smaller checks", () => {
    const one = (text: string) => problems([{ path: "x.yaml", text }]);
    expect(one("apiVersion: v1\nkind: Pod\nmetadata: { name: a, namespace: Bad_NS }\n")).toEqual([
      p("x.yaml", 0, "Pod", "a", "metadata.namespace", '"Bad_NS" is not a valid namespace name'),
    ]);
    expect(one("apiVersion: v1\nkind: Namespace\nmetadata: { name: a, namespace: b }\n")).toEqual([
      p(
        "x.yaml",
        0,
        "Namespace",
        "a",
        "metadata.namespace",
        "Namespace is cluster-scoped and takes no namespace",
      ),
    ]);
    expect(
      one("apiVersion: v1\nkind: List\nitems:\n  - apiVersion: v1\n    kind: List\n    items: []\n"),
    ).toEqual([p("x.yaml", 0, "List", undefined, "items[0].kind", "a List inside a List is not supported")]);
    expect(one("apiVersion: v1\nkind: Pod\nmetadata: { name: a, name: b }\n")[0]).toEqual(
      p("x.yaml", 0, undefined, undefined, undefined, /^YAML syntax error: Map keys must be unique/),
    );
    expect(
      one(
        "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: { name: s }\nspec: { podSelector: {}, externalWorkloadSelector: {}, port: 80 }\n",
      ),
    ).toEqual([
      p(
        "x.yaml",
        0,
        "Server",
        "s",
        "spec",
        "podSelector and externalWorkloadSelector are mutually exclusive",
      ),
    ]);
    expect(
      one(
        "apiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: { name: a, namespace: x }\nspec:\n  targetRef: { kind: Namespace, name: y }\n  requiredAuthenticationRefs: []\n",
      ),
    ).toEqual([
      p(
        "x.yaml",
        0,
        "AuthorizationPolicy",
        "a",
        "spec.targetRef.name",
        'a Namespace target must be the policy\'s own namespace "x"',
      ),
    ]);
  });
});

describe("kubectl get -o yaml output", () => {
  const state = build(["kubectl-list.yaml"]);

  it("reads a kind: List, ignoring status noise, managedFields and unknown fields", () => {
    expect(state.pods).toHaveLength(1);
    expect(state.findPod("emojivoto", "emoji-7f9c8d6b5-x2x9z")).toMatchObject({
      serviceAccount: "emoji",
      identity: "emoji.emojivoto.serviceaccount.identity.linkerd.cluster.local",
      ip: "10.244.0.17",
      meshed: true,
    });
    expect(state.services).toEqual([
      {
        name: "emoji-svc",
        namespace: "emojivoto",
        selector: { app: "emoji-svc" },
        ports: [
          { name: "grpc", port: 8080, targetPort: 8080, protocol: "TCP" },
          { name: "prom", port: 8801, targetPort: 8801, protocol: "TCP" },
        ],
        clusterIP: "10.96.120.7",
        annotations: {},
      },
    ]);
    expect(state.warnings).toEqual([]);
  });

  it("the listed Server rules the pod's gRPC port; endpoints carry the owner labels", () => {
    const s = server(state, "emojivoto", "emoji-7f9c8d6b5-x2x9z", 8080);
    expect(s.labels).toEqual({ group: "policy.linkerd.io", kind: "server", name: "emoji-grpc" });
    expect(s.protocol?.kind?.$case).toBe("grpc");
    const result = state.endpoints("emoji-svc.emojivoto.svc.cluster.local:8080", "");
    expect(result.ok && result.set.addrs[0]?.metricLabels).toEqual({
      deployment: "emoji",
      pod: "emoji-7f9c8d6b5-x2x9z",
      serviceaccount: "emoji",
      control_plane_ns: "linkerd",
      pod_template_hash: "7f9c8d6b5",
      zone: "",
    });
  });

  it("problems inside a List name the item", () => {
    const text =
      "apiVersion: v1\nkind: List\nitems:\n  - apiVersion: v1\n    kind: Pod\n    metadata: { name: ok }\n  - apiVersion: v1\n    kind: Service\n    metadata: { name: s }\n    spec: { ports: [{ port: 0 }] }\n";
    expect(problems([{ path: "l.yaml", text }])).toEqual([
      p("l.yaml", 0, "Service", "s", "items[1].spec.ports[0].port", "must be between 1 and 65535, got 0"),
    ]);
  });
});

describe("multi-document files and defaults", () => {
  it("skips empty documents and keeps document indices", () => {
    // A leading "---" opens document 0; the empty document 0 is skipped.
    const text =
      "---\n---\napiVersion: v1\nkind: Pod\nmetadata: { name: a }\n---\napiVersion: v1\nkind: Pod\nmetadata: { name: a }\n";
    expect(problems([{ path: "m.yaml", text }])).toEqual([
      p(
        "m.yaml",
        2,
        "Pod",
        "a",
        "metadata.name",
        "duplicate Pod default/a (first defined in m.yaml:3 (document 1))",
      ),
    ]);
  });

  it("an empty file set is a valid, empty cluster", () => {
    const empty = buildClusterState([]);
    expect(empty.pods).toEqual([]);
    expect(empty.options).toEqual({
      clusterDomain: "cluster.local",
      trustDomain: "cluster.local",
      controlPlaneNamespace: "linkerd",
      defaultPolicy: "all-unauthenticated",
      outboundTransportMode: "transport-header",
      proxyInboundPort: 4143,
      allowL5dRequestHeaders: false,
      clusterNetworks: ["10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8"],
      probeNetworks: ["0.0.0.0/0", "::/0"],
    });
  });

  it("warns about things Linkerd silently ignores", () => {
    const text = `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: gw, namespace: ns }
spec: { parentRefs: [{ name: my-gateway }] }
---
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: { name: api, namespace: ns }
spec: { routes: [] }
`;
    expect(buildClusterState([{ path: "w.yaml", text }]).warnings).toEqual([
      p("w.yaml", 0, "HTTPRoute", "gw", "spec.parentRefs[0]", /is ignored/),
      p(
        "w.yaml",
        1,
        "ServiceProfile",
        "api",
        "metadata.name",
        /named <service>.<namespace>.svc.cluster.local$/,
      ),
    ]);
  });
});

describe("robustness", () => {
  const KINDS = [
    ["v1", "Pod"],
    ["v1", "Service"],
    ["v1", "Namespace"],
    ["v1", "List"],
    ["policy.linkerd.io/v1beta3", "Server"],
    ["policy.linkerd.io/v1beta1", "ServerAuthorization"],
    ["policy.linkerd.io/v1alpha1", "AuthorizationPolicy"],
    ["policy.linkerd.io/v1alpha1", "MeshTLSAuthentication"],
    ["policy.linkerd.io/v1alpha1", "NetworkAuthentication"],
    ["policy.linkerd.io/v1beta3", "HTTPRoute"],
    ["gateway.networking.k8s.io/v1", "HTTPRoute"],
    ["gateway.networking.k8s.io/v1", "GRPCRoute"],
    ["linkerd.io/v1alpha2", "ServiceProfile"],
  ] as const;

  it("any document shape yields a state or a ManifestError, never a crash", () => {
    const value = fc.jsonValue({ maxDepth: 4 });
    const doc = fc.record({
      kind: fc.constantFrom(...KINDS),
      metadata: fc.oneof(
        value,
        fc.record({ name: fc.constantFrom("a", "b"), namespace: fc.constantFrom("ns", "x"), labels: value }),
      ),
      spec: fc.oneof(
        value,
        fc.dictionary(
          fc.constantFrom(
            "port",
            "podSelector",
            "client",
            "rules",
            "routes",
            "parentRefs",
            "networks",
            "targetRef",
            "ports",
            "containers",
            "selector",
            "identities",
          ),
          value,
        ),
      ),
      items: value,
      status: value,
    });
    fc.assert(
      fc.property(fc.array(doc, { maxLength: 6 }), (docs) => {
        const text = docs
          .map((d) =>
            stringify({
              apiVersion: d.kind[0],
              kind: d.kind[1],
              metadata: d.metadata,
              spec: d.spec,
              items: d.items,
              status: d.status,
            }),
          )
          .join("---\n");
        try {
          const state = buildClusterState([{ path: "f.yaml", text }]);
          for (const pod of state.pods) state.inboundServer(`${pod.namespace}:${pod.name}`, 80);
        } catch (error) {
          if (!(error instanceof ManifestError)) throw error;
          for (const problem of error.problems) expect(problem.file).toBe("f.yaml");
        }
      }),
      { numRuns: 300 },
    );
  });
});
