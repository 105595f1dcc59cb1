import { type destination, durationFromMs, tcpAddressFromString } from "@inmesh/proto";
import { describe, expect, it } from "vitest";
import { buildClusterState } from "../../src/model/index.js";
import { build, endpointSet, profileOf } from "./helpers.js";

const state = build(["outbound.yaml"]);
const transparent = build(["outbound.yaml"], { outboundTransportMode: "transparent" });
const MESHED_H2: destination.Http2ClientParams = {
  flowControl: undefined,
  keepAlive: { interval: durationFromMs(10_000), timeout: durationFromMs(3_000), whileIdle: true },
  internals: undefined,
};
const tls = (name: string): destination.TlsIdentity => ({
  strategy: { $case: "dnsLikeIdentity", value: { name } },
  serverName: { name },
});

describe("Destination.Get endpoints (linkerd-contract.md §8.3)", () => {
  const set = endpointSet(state, "api.shop.svc.cluster.local:80");

  it("set-level labels name the Service", () => {
    expect(set.metricLabels).toEqual({ namespace: "shop", service: "api" });
  });

  it("selects ready pods and resolves the named targetPort per pod (pods without it are left out)", () => {
    // api-4 names its port "web", api-done has completed and api-unready is not Ready.
    expect(set.addrs.map((a) => a.metricLabels.pod)).toEqual(["api-1", "api-2", "api-3"]);
    expect(set.addrs.map((a) => a.addr)).toEqual([
      tcpAddressFromString("10.1.0.1", 8080),
      tcpAddressFromString("10.1.0.2", 8081),
      tcpAddressFromString("10.1.0.3", 8080),
    ]);
  });

  it("a meshed pod: TLS identity, H2 hint with opaque transport (transport-header mode), meshed HTTP/2 params, weight 10000", () => {
    expect(set.addrs[0]).toEqual({
      addr: tcpAddressFromString("10.1.0.1", 8080),
      weight: 10000,
      metricLabels: {
        deployment: "api",
        pod: "api-1",
        serviceaccount: "api",
        control_plane_ns: "linkerd",
        pod_template_hash: "5d9f",
        zone: "",
      },
      tlsIdentity: tls("api.shop.serviceaccount.identity.linkerd.cluster.local"),
      // No linkerd-proxy container and no annotation: the dev default inbound port.
      protocolHint: { protocol: { $case: "h2", value: {} }, opaqueTransport: { inboundPort: 4143 } },
      authorityOverride: undefined,
      http2: MESHED_H2,
      resourceRef: undefined,
    });
  });

  it("an unmeshed pod: address, weight and labels only", () => {
    expect(set.addrs[1]).toEqual({
      addr: tcpAddressFromString("10.1.0.2", 8081),
      weight: 10000,
      metricLabels: { pod: "api-2", serviceaccount: "default", zone: "" },
      tlsIdentity: undefined,
      protocolHint: undefined,
      authorityOverride: undefined,
      http2: undefined,
      resourceRef: undefined,
    });
  });

  it("a pod of another control plane gets the hint but no identity", () => {
    expect(set.addrs[2]?.protocolHint?.protocol?.$case).toBe("h2");
    expect(set.addrs[2]?.tlsIdentity).toBeUndefined();
    expect(set.addrs[2]?.metricLabels.control_plane_ns).toBe("linkerd-other");
  });

  it("transparent mode: no opaque transport for HTTP ports; unmeshed pods never get it", () => {
    const [meshed, unmeshed] = endpointSet(transparent, "api.shop.svc.cluster.local:80").addrs;
    expect(meshed?.protocolHint).toEqual({
      protocol: { $case: "h2", value: {} },
      opaqueTransport: undefined,
    });
    expect(unmeshed?.protocolHint).toBeUndefined();
  });

  it("inmesh.dev/inbound-port names the inbound port; inject annotation counts as meshed", () => {
    const v2 = endpointSet(state, "api-v2.shop.svc.cluster.local");
    const api4 = v2.addrs.find((a) => a.metricLabels.pod === "api-4");
    expect(api4?.protocolHint).toEqual({
      protocol: { $case: "h2", value: {} },
      opaqueTransport: { inboundPort: 4143 },
    });
    const custom = buildClusterState(
      [
        {
          path: "p.yaml",
          text: `
apiVersion: v1
kind: Pod
metadata:
  name: p
  namespace: ns
  labels: { app: p, linkerd.io/control-plane-ns: linkerd }
  annotations: { inmesh.dev/inbound-port: "24143" }
spec: { containers: [{ name: c, ports: [{ containerPort: 8080 }] }] }
---
apiVersion: v1
kind: Service
metadata: { name: s, namespace: ns }
spec: { selector: { app: p }, ports: [{ port: 8080 }] }
`,
        },
      ],
      { proxyInboundPort: 5143 },
    );
    expect(
      endpointSet(custom, "s.ns.svc.cluster.local:8080").addrs[0]?.protocolHint?.opaqueTransport,
    ).toEqual({
      inboundPort: 24143,
    });
    expect(custom.findPod("ns", "p")?.inboundPort).toBe(24143);
    expect(api4?.tlsIdentity).toEqual(tls("default.shop.serviceaccount.identity.linkerd.cluster.local"));
    // A numeric targetPort is used as-is, declared or not.
    expect(v2.addrs.map((a) => a.addr)).toEqual(
      ["10.1.0.2", "10.1.0.3", "10.1.0.4"].map((ip) => tcpAddressFromString(ip, 8080)),
    );
  });

  it("an opaque port: Opaque hint, and opaque_transport from a linkerd-proxy container's env", () => {
    const [addr] = endpointSet(state, "plain.shop.svc.cluster.local:3306").addrs;
    expect(addr?.protocolHint).toEqual({
      protocol: { $case: "opaque", value: {} },
      opaqueTransport: { inboundPort: 4143 },
    });
    const [http] = endpointSet(state, "plain.shop.svc.cluster.local:8080").addrs;
    expect(http?.protocolHint).toEqual({
      protocol: { $case: "h2", value: {} },
      opaqueTransport: { inboundPort: 4143 },
    });
    const [opaqueTransparent] = endpointSet(transparent, "plain.shop.svc.cluster.local:3306").addrs;
    expect(opaqueTransparent?.protocolHint?.opaqueTransport).toEqual({ inboundPort: 4143 });
    const [httpTransparent] = endpointSet(transparent, "plain.shop.svc.cluster.local:8080").addrs;
    expect(httpTransparent?.protocolHint?.opaqueTransport).toBeUndefined();
  });

  it("a Service without selector, or a port it does not define, has no endpoints but exists", () => {
    expect(endpointSet(state, "headless.shop.svc.cluster.local:80").addrs).toEqual([]);
    expect(endpointSet(state, "api.shop.svc.cluster.local:81").addrs).toEqual([]);
  });

  it("skip-inbound-ports leaves an endpoint unmeshed on that port", () => {
    const text = `
apiVersion: v1
kind: Pod
metadata:
  name: p
  namespace: ns
  labels: { app: p, linkerd.io/control-plane-ns: linkerd }
  annotations: { config.linkerd.io/skip-inbound-ports: "8080" }
spec: { containers: [{ name: c, ports: [{ containerPort: 8080 }, { containerPort: 8081 }] }] }
---
apiVersion: v1
kind: Service
metadata: { name: s, namespace: ns }
spec: { selector: { app: p }, ports: [{ name: a, port: 8080 }, { name: b, port: 8081 }] }
`;
    const s = buildClusterState([{ path: "s.yaml", text }]);
    expect(endpointSet(s, "s.ns.svc.cluster.local:8080").addrs[0]?.tlsIdentity).toBeUndefined();
    expect(endpointSet(s, "s.ns.svc.cluster.local:8081").addrs[0]?.tlsIdentity).toBeDefined();
  });

  it("errors: IP paths and foreign names are InvalidArgument, unknown Services NotFound", () => {
    expect(state.endpoints("10.1.0.1:80", "")).toMatchObject({ ok: false, code: "InvalidArgument" });
    expect(state.endpoints("api.shop:80", "")).toMatchObject({ ok: false, code: "InvalidArgument" });
    expect(state.endpoints("api.shop.svc.example.org:80", "")).toMatchObject({
      ok: false,
      code: "InvalidArgument",
    });
    expect(state.endpoints("api.shop.svc.cluster.local:0", "")).toMatchObject({
      ok: false,
      code: "InvalidArgument",
    });
    expect(state.endpoints("nope.shop.svc.cluster.local:80", "")).toMatchObject({
      ok: false,
      code: "NotFound",
    });
  });
});

describe("Destination.GetProfile (linkerd-contract.md §7.1)", () => {
  it("a ServiceProfile: routes, response classes, retryable, timeout, budget, overrides, refs", () => {
    expect(profileOf(state, "api.shop.svc.cluster.local:80")).toEqual({
      fullyQualifiedName: "api.shop.svc.cluster.local",
      opaqueProtocol: false,
      routes: [
        {
          condition: {
            match: {
              $case: "all",
              value: {
                matches: [
                  { match: { $case: "method", value: { type: { $case: "registered", value: 0 } } } },
                  { match: { $case: "path", value: { regex: "/items/[^/]*" } } },
                ],
              },
            },
          },
          responseClasses: [
            { condition: { match: { $case: "status", value: { min: 500, max: 599 } } }, isFailure: true },
            {
              condition: {
                match: {
                  $case: "all",
                  value: {
                    matches: [
                      { match: { $case: "status", value: { min: 400, max: 499 } } },
                      {
                        match: {
                          $case: "not",
                          value: { match: { $case: "status", value: { min: 404, max: 404 } } },
                        },
                      },
                    ],
                  },
                },
              },
              isFailure: true,
            },
          ],
          metricsLabels: { route: "GET /items/{id}" },
          isRetryable: true,
          timeout: durationFromMs(250),
        },
        {
          condition: {
            match: {
              $case: "any",
              value: {
                matches: [
                  { match: { $case: "path", value: { regex: "/a.*" } } },
                  {
                    match: {
                      $case: "not",
                      value: {
                        match: { $case: "method", value: { type: { $case: "registered", value: 1 } } },
                      },
                    },
                  },
                ],
              },
            },
          },
          responseClasses: [],
          metricsLabels: { route: "anything-else" },
          isRetryable: false,
          timeout: undefined,
        },
      ],
      retryBudget: { retryRatio: 0.5, minRetriesPerSecond: 5, ttl: durationFromMs(90_000) },
      dstOverrides: [
        { authority: "api.shop.svc.cluster.local:80", weight: 9000, backendRef: undefined },
        { authority: "api-v2.shop.svc.cluster.local:80", weight: 1000, backendRef: undefined },
      ],
      endpoint: undefined,
      parentRef: {
        kind: {
          $case: "resource",
          value: { group: "core", kind: "Service", name: "api", namespace: "shop", section: "", port: 80 },
        },
      },
      profileRef: {
        kind: {
          $case: "resource",
          value: {
            group: "linkerd.io",
            kind: "ServiceProfile",
            name: "api.shop.svc.cluster.local",
            namespace: "shop",
            section: "",
            port: 0,
          },
        },
      },
    });
  });

  it("a retry budget the proxy would refuse is sent as written, with a warning", () => {
    expect(state.warnings).toEqual([
      expect.objectContaining({
        kind: "ServiceProfile",
        name: "api.shop.svc.cluster.local",
        field: "spec.retryBudget.ttl",
      }),
    ]);
  });

  it("the client namespace from the context token is preferred", () => {
    const p = profileOf(
      state,
      "api.shop.svc.cluster.local:80",
      '{"ns":"client-ns","nodeName":"n1","pod":"c"}',
    );
    expect(p.routes.map((r) => r.metricsLabels.route)).toEqual(["client-view"]);
    expect(p.profileRef?.kind?.$case === "resource" && p.profileRef.kind.value.namespace).toBe("client-ns");
    // The legacy token form works too; an unknown namespace falls back to the server's.
    expect(
      profileOf(state, "api.shop.svc.cluster.local:80", "ns:client-ns").routes[0]?.metricsLabels.route,
    ).toBe("client-view");
    expect(profileOf(state, "api.shop.svc.cluster.local:80", '{"ns":"other"}').routes).toHaveLength(2);
    expect(profileOf(state, "api.shop.svc.cluster.local:80", "garbage").routes).toHaveLength(2);
  });

  it("without a ServiceProfile: the default budget and the name only", () => {
    expect(profileOf(state, "plain.shop.svc.cluster.local:8080")).toEqual({
      fullyQualifiedName: "plain.shop.svc.cluster.local",
      opaqueProtocol: false,
      routes: [],
      retryBudget: { retryRatio: Math.fround(0.2), minRetriesPerSecond: 10, ttl: durationFromMs(10_000) },
      dstOverrides: [],
      endpoint: undefined,
      parentRef: undefined,
      profileRef: undefined,
    });
    // The Service need not exist for a profile.
    expect(profileOf(state, "ghost.shop.svc.cluster.local").fullyQualifiedName).toBe(
      "ghost.shop.svc.cluster.local",
    );
  });

  it("opaque_protocol for opaque Service ports", () => {
    expect(profileOf(state, "plain.shop.svc.cluster.local:3306").opaqueProtocol).toBe(true);
    expect(profileOf(state, "forced-opaque.shop.svc.cluster.local:8080").opaqueProtocol).toBe(true);
  });

  it("an IP path: a cluster IP gives the Service profile, a pod IP the endpoint, anything else a bare endpoint", () => {
    expect(profileOf(state, "10.96.0.10:80").fullyQualifiedName).toBe("api.shop.svc.cluster.local");
    const pod = profileOf(state, "10.1.0.1:8080");
    expect(pod.fullyQualifiedName).toBe("");
    expect(pod.endpoint?.tlsIdentity).toEqual(tls("api.shop.serviceaccount.identity.linkerd.cluster.local"));
    expect(pod.endpoint?.metricLabels.namespace).toBe("shop");
    expect(pod.retryBudget).toEqual({
      retryRatio: Math.fround(0.2),
      minRetriesPerSecond: 10,
      ttl: durationFromMs(10_000),
    });
    expect(profileOf(state, "10.1.0.20:3306").opaqueProtocol).toBe(true);
    expect(profileOf(state, "10.9.9.9:8080").endpoint).toEqual({
      addr: tcpAddressFromString("10.9.9.9", 8080),
      weight: 10000,
      metricLabels: {},
      tlsIdentity: undefined,
      protocolHint: undefined,
      authorityOverride: undefined,
      http2: undefined,
      resourceRef: undefined,
    });
  });

  it("errors are InvalidArgument", () => {
    expect(state.profile("api.shop:80", "")).toMatchObject({ ok: false, code: "InvalidArgument" });
    expect(state.profile("api.shop.svc.cluster.local:x", "")).toMatchObject({
      ok: false,
      code: "InvalidArgument",
    });
  });
});
