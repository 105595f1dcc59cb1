import { durationFromMs, ipAddressFromString, type meta, type outbound } from "@inmesh/proto";
import { describe, expect, it } from "vitest";
import { buildClusterState } from "../../src/model/index.js";
import { build, policy, workload } from "./helpers.js";

const state = build(["outbound.yaml"]);

function serviceMeta(name: string, port: number, namespace = "shop"): meta.Metadata {
  return {
    kind: {
      $case: "resource",
      value: { group: "core", kind: "Service", name, namespace, section: "", port },
    },
  };
}

function backend(name: string, port: number): outbound.Backend {
  return {
    metadata: serviceMeta(name, port),
    queue: { capacity: 100, failfastTimeout: durationFromMs(3_000) },
    kind: {
      $case: "balancer",
      value: {
        discovery: { kind: { $case: "dst", value: { path: `${name}.shop.svc.cluster.local:${port}` } } },
        load: { $case: "peakEwma", value: { defaultRtt: durationFromMs(30), decay: durationFromMs(10_000) } },
      },
    },
  };
}

const BACKOFF: outbound.ExponentialBackoff = {
  minBackoff: durationFromMs(25),
  maxBackoff: durationFromMs(250),
  jitterRatio: 1,
  respectRetryAfterHint: false,
};

function detect(p: outbound.OutboundPolicy): outbound.ProxyProtocol_Detect {
  const kind = p.protocol?.kind;
  if (kind?.$case !== "detect") throw new Error(`expected detect, got ${kind?.$case}`);
  return kind.value;
}

describe("OutboundPolicy for a Service without routes", () => {
  const p = policy(state, "plain.shop.svc.cluster.local:8080");

  it("metadata is the Service resource with the port", () => {
    expect(p.metadata).toEqual(serviceMeta("plain", 8080));
  });

  it("detect with the default http route on http1 and http2 and the opaq route", () => {
    const route: outbound.HttpRoute = {
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
              value: {
                backends: [{ backend: backend("plain", 8080), filters: [], requestTimeout: undefined }],
              },
            },
          },
          requestTimeout: undefined,
          timeouts: { request: undefined, response: undefined, idle: undefined },
          retry: undefined,
          allowL5dRequestHeaders: false,
        },
      ],
    };
    expect(p.protocol).toEqual({
      kind: {
        $case: "detect",
        value: {
          timeout: durationFromMs(10_000),
          opaque: {
            routes: [
              {
                metadata: { kind: { $case: "default", value: "opaq" } },
                rules: [
                  {
                    backends: {
                      kind: {
                        $case: "firstAvailable",
                        value: { backends: [{ backend: backend("plain", 8080), filters: [] }] },
                      },
                    },
                    filters: [],
                  },
                ],
              },
            ],
          },
          http1: { routes: [route], failureAccrual: undefined },
          http2: { routes: [route], failureAccrual: undefined },
        },
      },
    });
  });

  it("a short authority (no cluster domain) and a missing port (80) are accepted", () => {
    expect(policy(state, "plain.shop.svc:8080").metadata).toEqual(serviceMeta("plain", 8080));
    expect(policy(state, "api.shop.svc.cluster.local").metadata).toEqual(serviceMeta("api", 80));
  });

  it("default opaque ports and the Service opaque-ports annotation make an opaque policy", () => {
    for (const [authority, name, port] of [
      ["plain.shop.svc.cluster.local:3306", "plain", 3306],
      ["forced-opaque.shop.svc.cluster.local:8080", "forced-opaque", 8080],
    ] as const) {
      expect(policy(state, authority).protocol).toEqual({
        kind: {
          $case: "opaque",
          value: {
            routes: [
              {
                metadata: { kind: { $case: "default", value: "opaq" } },
                rules: [
                  {
                    backends: {
                      kind: {
                        $case: "firstAvailable",
                        value: { backends: [{ backend: backend(name, port), filters: [] }] },
                      },
                    },
                    filters: [],
                  },
                ],
              },
            ],
          },
        },
      });
    }
  });

  it("a port the Service does not define gets a forbidden opaque route", () => {
    expect(policy(state, "plain.shop.svc.cluster.local:9999").protocol).toEqual({
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
    });
  });
});

describe("retries, timeouts and failure accrual from annotations (linkerd-contract.md §7.2, §8.4)", () => {
  it("Service annotations apply to routes without their own; route annotations replace them", () => {
    const routes = detect(policy(state, "api.shop.svc.cluster.local:80")).http1?.routes ?? [];
    const split = routes[0]?.rules[0];
    // api-split: route-level retry (limit defaults to 1) and timeouts replace the Service's.
    expect(split?.retry).toEqual({
      maxRetries: 1,
      maxRequestBytes: 65536,
      conditions: {
        statusRanges: [
          { start: 502, end: 504 },
          { start: 429, end: 429 },
        ],
      },
      timeout: undefined,
      backoff: BACKOFF,
    });
    expect(split?.timeouts).toEqual({ request: undefined, response: durationFromMs(2_000), idle: undefined });
    expect(split?.requestTimeout).toBeUndefined();
    // api-timeouts: the rule's timeouts.request; retries inherited from the Service.
    const slow = routes[1]?.rules[0];
    expect(slow?.timeouts).toEqual({ request: durationFromMs(30_000), response: undefined, idle: undefined });
    expect(slow?.requestTimeout).toEqual(durationFromMs(30_000));
    expect(slow?.retry).toEqual({
      maxRetries: 3,
      maxRequestBytes: 65536,
      conditions: { statusRanges: [{ start: 500, end: 599 }] },
      timeout: durationFromMs(300),
      backoff: BACKOFF,
    });
  });

  it("the default route carries the Service's retry and timeouts", () => {
    const text = `
apiVersion: v1
kind: Service
metadata:
  name: s
  namespace: ns
  annotations:
    retry.linkerd.io/http: "500-503,418"
    timeout.linkerd.io/request: 2s
    timeout.linkerd.io/idle: 1m
spec: { ports: [{ port: 80 }] }
`;
    const p = policy(buildClusterState([{ path: "s.yaml", text }]), "s.ns.svc.cluster.local:80", "ns");
    const rule = detect(p).http2?.routes[0]?.rules[0];
    expect(rule?.retry).toEqual({
      maxRetries: 1,
      maxRequestBytes: 65536,
      conditions: {
        statusRanges: [
          { start: 500, end: 503 },
          { start: 418, end: 418 },
        ],
      },
      timeout: undefined,
      backoff: BACKOFF,
    });
    expect(rule?.timeouts).toEqual({
      request: durationFromMs(2_000),
      response: undefined,
      idle: durationFromMs(60_000),
    });
    expect(rule?.requestTimeout).toEqual(durationFromMs(2_000));
    expect(detect(p).http2?.failureAccrual).toBeUndefined();
  });

  it("failure accrual from balancer.linkerd.io annotations, on http1 and http2", () => {
    const accrual: outbound.FailureAccrual = {
      kind: {
        $case: "consecutiveFailures",
        value: {
          maxFailures: 5,
          backoff: {
            minBackoff: durationFromMs(1_000),
            maxBackoff: durationFromMs(60_000),
            jitterRatio: 0.5,
            respectRetryAfterHint: false,
          },
        },
      },
      ejection: undefined,
    };
    const d = detect(policy(state, "api.shop.svc.cluster.local:80"));
    expect(d.http1?.failureAccrual).toEqual(accrual);
    expect(d.http2?.failureAccrual).toEqual(accrual);
  });
});

describe("HTTPRoutes attached to a Service", () => {
  const routes = detect(policy(state, "api.shop.svc.cluster.local:80")).http1?.routes ?? [];

  it("producer routes, by creation time; the default route disappears", () => {
    expect(
      routes.map((r) => (r.metadata?.kind?.$case === "resource" ? r.metadata.kind.value.name : "default")),
    ).toEqual(["api-split", "api-timeouts"]);
    expect(routes[0]?.metadata).toEqual({
      kind: {
        $case: "resource",
        value: {
          group: "gateway.networking.k8s.io",
          kind: "HTTPRoute",
          name: "api-split",
          namespace: "shop",
          section: "",
          port: 0,
        },
      },
    });
    expect(routes[0]?.hosts).toEqual([{ match: { $case: "exact", value: "api.shop" } }]);
  });

  it("backendRefs become a weighted random distribution with per-backend filters", () => {
    expect(routes[0]?.rules[0]?.backends).toEqual({
      kind: {
        $case: "randomAvailable",
        value: {
          backends: [
            {
              weight: 10,
              backend: { backend: backend("api-v2", 80), filters: [], requestTimeout: undefined },
            },
            {
              weight: 90,
              backend: {
                backend: backend("api", 80),
                filters: [
                  {
                    kind: {
                      $case: "requestHeaderModifier",
                      value: {
                        add: { headers: [] },
                        set: { headers: [{ name: "x-split", value: Buffer.from("v1") }] },
                        remove: [],
                      },
                    },
                  },
                ],
                requestTimeout: undefined,
              },
            },
          ],
        },
      },
    });
    // Without backendRefs, the parent Service is the only backend.
    expect(routes[1]?.rules[0]?.backends).toEqual({
      kind: {
        $case: "firstAvailable",
        value: { backends: [{ backend: backend("api", 80), filters: [], requestTimeout: undefined }] },
      },
    });
  });

  it("outbound routes keep ResponseHeaderModifier", () => {
    expect(routes[0]?.rules[1]?.filters).toEqual([
      {
        kind: {
          $case: "responseHeaderModifier",
          value: {
            add: { headers: [{ name: "x-from", value: Buffer.from("route") }] },
            set: { headers: [] },
            remove: [],
          },
        },
      },
    ]);
  });

  it("a consumer route (another namespace) applies only to clients of that namespace", () => {
    const names = (ns: string) =>
      (detect(policy(state, "api.shop.svc.cluster.local:80", ns)).http1?.routes ?? []).map((r) =>
        r.metadata?.kind?.$case === "resource" ? r.metadata.kind.value.name : "default",
      );
    expect(names("client-ns")).toEqual(["api-split", "api-timeouts", "consumer-route"]);
    expect(names("elsewhere")).toEqual(["api-split", "api-timeouts"]);
  });

  it("a parentRef with a port applies to that port only", () => {
    const other = buildClusterState([
      {
        path: "p.yaml",
        text: `
apiVersion: v1
kind: Service
metadata: { name: s, namespace: ns }
spec: { ports: [{ port: 80 }, { port: 81 }] }
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: only-80, namespace: ns }
spec: { parentRefs: [{ kind: Service, group: "", name: s, port: 80 }] }
`,
      },
    ]);
    expect(
      detect(policy(other, "s.ns.svc.cluster.local:80", "ns")).http1?.routes[0]?.metadata?.kind?.$case,
    ).toBe("resource");
    expect(detect(policy(other, "s.ns.svc.cluster.local:81", "ns")).http1?.routes[0]?.metadata).toEqual({
      kind: { $case: "default", value: "http" },
    });
  });
});

describe("GRPCRoutes attached to a Service", () => {
  it("make the protocol grpc with gRPC retry conditions and the Service timeouts", () => {
    const p = policy(state, "api.shop.svc.cluster.local:9000");
    const kind = p.protocol?.kind;
    if (kind?.$case !== "grpc") throw new Error("expected grpc");
    expect(kind.value.routes).toHaveLength(1);
    expect(kind.value.routes[0]?.rules[0]).toEqual({
      matches: [{ rpc: { service: "shop.Items", method: "List" }, headers: [] }],
      filters: [],
      backends: {
        kind: {
          $case: "firstAvailable",
          value: { backends: [{ backend: backend("api", 9000), filters: [], requestTimeout: undefined }] },
        },
      },
      requestTimeout: durationFromMs(5_000),
      timeouts: { request: durationFromMs(5_000), response: durationFromMs(4_000), idle: undefined },
      retry: {
        maxRetries: 2,
        maxRequestBytes: 65536,
        conditions: {
          cancelled: false,
          deadineExceeded: true,
          resourceExhausted: false,
          internal: false,
          unavailable: true,
        },
        timeout: undefined,
        backoff: BACKOFF,
      },
      allowL5dRequestHeaders: false,
    });
    expect(kind.value.failureAccrual?.kind?.$case).toBe("consecutiveFailures");
  });
});

describe("OutboundPolicies lookups", () => {
  it("an IP target matching a Service cluster IP gets that Service's policy", () => {
    const result = state.outboundPolicy({
      sourceWorkload: workload("shop", "c"),
      target: { $case: "addr", value: { ip: ipAddressFromString("10.96.0.10"), port: 80 } },
    });
    expect(result.ok && result.policy.metadata).toEqual(serviceMeta("api", 80));
  });

  it("errors", () => {
    const authority = (value: string, source = workload("shop", "c")) =>
      state.outboundPolicy({ sourceWorkload: source, target: { $case: "authority", value } });
    expect(authority("nope.shop.svc.cluster.local:80")).toMatchObject({ ok: false, code: "NotFound" });
    expect(authority("example.com:80")).toMatchObject({ ok: false, code: "NotFound" });
    expect(authority(":80")).toMatchObject({ ok: false, code: "InvalidArgument" });
    expect(authority("api.shop.svc.cluster.local:80", "garbage")).toMatchObject({
      ok: false,
      code: "InvalidArgument",
    });
    expect(state.outboundPolicy({ sourceWorkload: workload("shop", "c"), target: undefined })).toMatchObject({
      ok: false,
      code: "InvalidArgument",
    });
    const addr = (ip: string, port: number) =>
      state.outboundPolicy({
        sourceWorkload: workload("shop", "c"),
        target: { $case: "addr", value: { ip: ipAddressFromString(ip), port } },
      });
    expect(addr("10.96.0.10", 0)).toMatchObject({ ok: false, code: "InvalidArgument" });
    expect(addr("10.96.0.10", 70000)).toMatchObject({ ok: false, code: "InvalidArgument" });
    expect(addr("10.1.0.1", 8080)).toMatchObject({ ok: false, code: "NotFound" });
    expect(
      state.outboundPolicy({
        sourceWorkload: workload("shop", "c"),
        target: { $case: "addr", value: { ip: undefined, port: 80 } },
      }),
    ).toMatchObject({ ok: false, code: "InvalidArgument" });
  });
});

describe("allowL5dRequestHeaders (the controller's --allow-l5d-request-headers)", () => {
  it("is off by default and, when on, marks every HTTP route rule, the default route's too", () => {
    const off = detect(policy(state, "plain.shop.svc.cluster.local:8080"));
    expect(off.http1?.routes.every((r) => r.rules.every((rule) => !rule.allowL5dRequestHeaders))).toBe(true);
    const allowing = build(["outbound.yaml"], { allowL5dRequestHeaders: true });
    const on = detect(policy(allowing, "plain.shop.svc.cluster.local:8080"));
    const rules = on.http1?.routes.flatMap((r) => r.rules) ?? [];
    expect(rules.length).toBeGreaterThan(0);
    expect(rules.every((rule) => rule.allowL5dRequestHeaders)).toBe(true);
  });
});
