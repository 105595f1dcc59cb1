import { durationFromMs, type inbound } from "@inmesh/proto";
import { describe, expect, it } from "vitest";
import type { DefaultPolicyName } from "../../src/model/index.js";
import { ALL, build, CLUSTER, httpRoutesOf, network, server, workload } from "./helpers.js";

const ANY_IDENTITY: inbound.Authn = {
  permit: {
    $case: "meshTLS",
    value: { clients: { $case: "identities", value: { identities: [], suffixes: [{ parts: [] }] } } },
  },
};
const UNAUTHENTICATED: inbound.Authn = { permit: { $case: "unauthenticated", value: {} } };

function defaultAuthz(
  name: string,
  networks: inbound.Network[],
  authentication: inbound.Authn,
): inbound.Authz {
  return {
    networks,
    authentication,
    labels: { group: "", kind: "default", name },
    metadata: { kind: { $case: "default", value: name } },
  };
}

describe("default inbound policies (policy-semantics.md §2)", () => {
  const expected: Record<DefaultPolicyName, inbound.Authz[]> = {
    "all-unauthenticated": [defaultAuthz("all-unauthenticated", ALL, UNAUTHENTICATED)],
    "all-authenticated": [defaultAuthz("all-authenticated", ALL, ANY_IDENTITY)],
    "cluster-unauthenticated": [defaultAuthz("cluster-unauthenticated", CLUSTER, UNAUTHENTICATED)],
    "cluster-authenticated": [defaultAuthz("cluster-authenticated", CLUSTER, ANY_IDENTITY)],
    deny: [],
    audit: [defaultAuthz("audit", ALL, UNAUTHENTICATED)],
  };

  for (const [policy, authorizations] of Object.entries(expected) as Array<
    [DefaultPolicyName, inbound.Authz[]]
  >) {
    it(`cluster default ${policy}`, () => {
      const state = build(["defaults.yaml"], { defaultPolicy: policy });
      const s = server(state, "plain", "web", 9090);
      expect(s.authorizations).toEqual(authorizations);
      expect(s.labels).toEqual({ group: "", kind: "default", name: policy });
      expect(s.serverIps).toEqual([]);
      expect(s.protocol?.kind?.$case).toBe("detect");
    });
  }

  it("without options the cluster default is all-unauthenticated", () => {
    const s = server(build(["defaults.yaml"]), "plain", "web", 9090);
    expect(s.authorizations).toEqual(expected["all-unauthenticated"]);
  });

  it("custom cluster networks feed the cluster-* policies", () => {
    const state = build(["defaults.yaml"], {
      defaultPolicy: "cluster-authenticated",
      clusterNetworks: ["10.0.0.0/16", "fd12::/16"],
    });
    expect(server(state, "plain", "web", 9090).authorizations[0]?.networks).toEqual([
      network("10.0.0.0/16"),
      network("fd12::/16"),
    ]);
  });

  it("a detect server carries the 10 s timeout, the default route and the probe route", () => {
    const s = server(build(["defaults.yaml"]), "plain", "web", 8080);
    expect(s.protocol).toEqual({
      kind: {
        $case: "detect",
        value: {
          timeout: durationFromMs(10_000),
          httpLocalRateLimit: undefined,
          httpRoutes: [
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
            {
              metadata: { kind: { $case: "default", value: "probe" } },
              hosts: [],
              authorizations: [defaultAuthz("probe", ALL, UNAUTHENTICATED)],
              rules: [
                {
                  // Sorted, query dropped, the named port resolved in the same container only.
                  matches: ["/live", "/ready"].map((path) => ({
                    path: { kind: { $case: "exact", value: path } },
                    headers: [],
                    queryParams: [],
                    method: { type: { $case: "registered", value: 0 } },
                  })),
                  filters: [],
                },
              ],
            },
          ],
        },
      },
    });
  });

  it("probe routes follow the probe networks option and vanish when it is empty", () => {
    const custom = server(build(["defaults.yaml"], { probeNetworks: ["10.0.0.1/32"] }), "plain", "web", 8080);
    expect(httpRoutesOf(custom)[1]?.authorizations[0]?.networks).toEqual([network("10.0.0.1/32")]);
    const none = server(build(["defaults.yaml"], { probeNetworks: [] }), "plain", "web", 8080);
    expect(httpRoutesOf(none).map((r) => r.metadata?.kind?.value)).toEqual(["default"]);
  });

  it("a port without probes gets only the default route", () => {
    expect(httpRoutesOf(server(build(["defaults.yaml"]), "plain", "web", 9100)).length).toBe(1);
  });
});

describe("default policy precedence: pod > namespace > cluster", () => {
  const state = build(["defaults.yaml"], { defaultPolicy: "cluster-unauthenticated" });
  const policyOf = (ns: string, pod: string) => server(state, ns, pod, 8080).labels.name;

  it("the pod annotation wins", () => {
    expect(policyOf("plain", "pod-deny")).toBe("deny");
    expect(server(state, "plain", "pod-deny", 8080).authorizations).toEqual([]);
    expect(policyOf("strict", "overrides")).toBe("all-authenticated");
  });

  it("the namespace annotation applies to pods without one", () => {
    expect(policyOf("strict", "inherits")).toBe("deny");
  });

  it("the cluster default applies when neither is set", () => {
    expect(policyOf("plain", "web")).toBe("cluster-unauthenticated");
  });

  it("an invalid pod value falls back to the cluster default, masking the namespace", () => {
    expect(policyOf("plain", "pod-bogus")).toBe("cluster-unauthenticated");
    // "Deny" is not "deny": the namespace's deny is hidden, the cluster default applies.
    expect(policyOf("strict", "masks")).toBe("cluster-unauthenticated");
  });
});

describe("per-port annotations", () => {
  const state = build(["defaults.yaml"]);

  it("proxy-require-identity-inbound-ports turns an unauthenticated default into its authenticated variant", () => {
    const s = server(state, "plain", "ports", 8080);
    expect(s.labels.name).toBe("all-authenticated");
    expect(s.authorizations[0]?.authentication).toEqual(ANY_IDENTITY);
    expect(server(state, "plain", "ports", 8081).labels.name).toBe("all-unauthenticated");
    const cluster = build(["defaults.yaml"], { defaultPolicy: "cluster-unauthenticated" });
    expect(server(cluster, "plain", "ports", 8443).labels.name).toBe("cluster-authenticated");
    const deny = build(["defaults.yaml"], { defaultPolicy: "deny" });
    expect(server(deny, "plain", "ports", 8443).labels.name).toBe("deny");
    const audit = build(["defaults.yaml"], { defaultPolicy: "audit" });
    expect(server(audit, "plain", "ports", 8443).labels.name).toBe("audit");
  });

  it("opaque-ports (ranges allowed) make the default server opaque, with no routes", () => {
    expect(server(state, "plain", "ports", 7001).protocol).toEqual({ kind: { $case: "opaque", value: {} } });
    expect(server(state, "plain", "ports", 7002).protocol?.kind?.$case).toBe("detect");
    // An annotation replaces the injector's default list: 3306 is not opaque here.
    expect(server(state, "plain", "ports", 3306).protocol?.kind?.$case).toBe("detect");
  });

  it("without the annotation, the pod's container ports among the default opaque ports are opaque", () => {
    expect(server(state, "plain", "web", 3306).protocol?.kind?.$case).toBe("opaque");
    expect(server(state, "plain", "web", 5432).protocol?.kind?.$case).toBe("detect");
  });

  it("an unparsable port list is empty", () => {
    expect(server(state, "plain", "bad-ports", 7000).protocol?.kind?.$case).toBe("detect");
    expect(server(state, "plain", "bad-ports", 3306).protocol?.kind?.$case).toBe("detect");
  });
});

describe("inbound lookups", () => {
  const state = build(["defaults.yaml"]);

  it("accepts JSON with or without the trailing newline, and legacy ns:pod", () => {
    for (const w of ['{"ns":"plain","pod":"web"}', '{"ns":"plain","pod":"web"}\n', "plain:web"]) {
      expect(state.inboundServer(w, 8080).ok).toBe(true);
    }
  });

  it("refuses malformed workloads and ports with InvalidArgument", () => {
    for (const w of ["", "web", "{not json", '{"pod":"web"}', '{"ns":"plain"}', "a:b:c"]) {
      const result = state.inboundServer(w, 8080);
      expect(result).toMatchObject({ ok: false, code: "InvalidArgument" });
    }
    expect(state.inboundServer(workload("plain", "web"), 0)).toMatchObject({
      ok: false,
      code: "InvalidArgument",
    });
    expect(state.inboundServer(workload("plain", "web"), 70000)).toMatchObject({
      ok: false,
      code: "InvalidArgument",
    });
  });

  it("unknown and unmeshed pods are NotFound (the controller indexes meshed pods only)", () => {
    expect(state.inboundServer(workload("plain", "nope"), 8080)).toMatchObject({
      ok: false,
      code: "NotFound",
    });
    expect(state.inboundServer(workload("plain", "unmeshed"), 8080)).toMatchObject({
      ok: false,
      code: "NotFound",
    });
    expect(state.inboundServer('{"ns":"plain","external_workload":"vm"}', 8080)).toMatchObject({
      ok: false,
      code: "NotFound",
    });
  });

  it("linkerd.io/inject: enabled makes a pod meshed (the dev control plane plays the injector)", () => {
    expect(state.inboundServer(workload("plain", "injected"), 8080).ok).toBe(true);
    expect(state.findPod("plain", "injected")?.meshed).toBe(true);
    expect(state.findPod("plain", "unmeshed")?.meshed).toBe(false);
  });

  it("exposes pods with their identity and ports", () => {
    expect(state.findPod("plain", "web")).toEqual({
      name: "web",
      namespace: "plain",
      serviceAccount: "web",
      identity: "web.plain.serviceaccount.identity.linkerd.cluster.local",
      ip: "10.1.0.10",
      labels: { app: "web", "linkerd.io/control-plane-ns": "linkerd" },
      annotations: {},
      containerPorts: [
        { container: "app", containerPort: 8080, name: "http", protocol: "TCP" },
        { container: "app", containerPort: 9090, name: undefined, protocol: "TCP" },
        { container: "app", containerPort: 3306, name: "mysql", protocol: "TCP" },
        { container: "sidecar", containerPort: 9100, name: "metrics", protocol: "TCP" },
      ],
      meshed: true,
      defaultInboundPolicy: "all-unauthenticated",
      // The injector marks the pod's container ports that are default opaque ports (MySQL here).
      opaquePorts: [3306],
      inboundPort: 4143,
    });
    expect(state.findPod("plain", "pod-bogus")?.serviceAccount).toBe("default");
    expect(state.findPod("plain", "pod-bogus")?.ip).toBe("127.0.0.1");
    const custom = build(["defaults.yaml"], { controlPlaneNamespace: "mesh", trustDomain: "example.org" });
    expect(custom.findPod("plain", "web")?.identity).toBe(
      "web.plain.serviceaccount.identity.mesh.example.org",
    );
  });

  it("answers are independent copies", () => {
    const a = server(state, "plain", "web", 8080);
    a.authorizations.length = 0;
    expect(server(state, "plain", "web", 8080).authorizations.length).toBe(1);
  });
});
