import { type MeshError, MeshErrorCode } from "@inmesh/core";
import { destination, ipAddressFromString, outbound } from "@inmesh/proto";
import { afterEach, describe, expect, it } from "vitest";
import { createDiscovery, type OutboundPolicyState, type ProfileState } from "../src/index.js";
import { fail, startControlPlane, status, testClients } from "./control-plane-double.js";
import { createFakeClock, seconds, waitFor, weightedAddr } from "./helpers.js";

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(handlers: Parameters<typeof startControlPlane>[0]) {
  const plane = await startControlPlane(handlers);
  cleanups.push(() => plane.kill());
  const clients = testClients(plane.address);
  cleanups.push(() => clients.close());
  const discovery = createDiscovery({
    ...clients,
    sourceWorkload: '{"ns":"client-ns","pod":"client-0"}',
    contextToken: '{"ns":"client-ns"}',
    backoff: { minMs: 10, maxMs: 100 },
    clock: createFakeClock(),
  });
  cleanups.push(() => discovery.close());
  return { plane, discovery };
}

const resource = (kind: string, name: string) => ({
  kind: {
    $case: "resource",
    value: { group: "policy.linkerd.io", kind, name, namespace: "ns", section: "", port: 0 },
  },
});

const FULL_PROFILE = destination.DestinationProfile.fromPartial({
  fullyQualifiedName: "web.ns.svc.cluster.local",
  opaqueProtocol: false,
  retryBudget: { retryRatio: 0.25, minRetriesPerSecond: 5, ttl: seconds(20) },
  routes: [
    {
      condition: {
        match: {
          $case: "all",
          value: {
            matches: [
              { match: { $case: "path", value: { regex: "/books/[0-9]+" } } },
              { match: { $case: "method", value: { type: { $case: "registered", value: 0 } } } },
            ],
          },
        },
      },
      responseClasses: [
        {
          condition: {
            match: {
              $case: "any",
              value: {
                matches: [
                  { match: { $case: "status", value: { min: 500, max: 504 } } },
                  {
                    match: {
                      $case: "not",
                      value: { match: { $case: "status", value: { min: 100, max: 599 } } },
                    },
                  },
                ],
              },
            },
          },
          isFailure: true,
        },
      ],
      metricsLabels: { route: "GET /books/{id}" },
      isRetryable: true,
      timeout: seconds(0.3),
    },
    // Invalid regex: dropped, as linkerd2-proxy does.
    { condition: { match: { $case: "path", value: { regex: "(" } } }, metricsLabels: { route: "broken" } },
    {
      condition: {
        match: {
          $case: "not",
          value: { match: { $case: "method", value: { type: { $case: "unregistered", value: "PURGE" } } } },
        },
      },
      metricsLabels: { route: "not purge" },
    },
  ],
  dstOverrides: [
    { authority: "web-v2.ns.svc.cluster.local:80", weight: 9000, backendRef: resource("Service", "web-v2") },
    { authority: "web-v3.ns.svc.cluster.local:80", weight: 0 },
    { authority: "web.ns.svc.cluster.local:80", weight: 1000 },
  ],
  endpoint: weightedAddr("10.0.0.5:8080"),
  parentRef: resource("Service", "web"),
  profileRef: resource("ServiceProfile", "web.ns.svc.cluster.local"),
} as never);

describe("watchProfile over Destination.GetProfile", () => {
  it("compiles the profile field by field", async () => {
    const { plane, discovery } = await setup({
      getProfile(call) {
        call.write(FULL_PROFILE);
      },
    });
    const watch = discovery.watchProfile("web.ns.svc.cluster.local:80");
    const profile = await watch.ready({ timeoutMs: 5000 });
    expect(plane.profileCalls[0]?.request).toEqual({
      scheme: "",
      path: "web.ns.svc.cluster.local:80",
      contextToken: '{"ns":"client-ns"}',
    });
    if (profile.kind !== "profile") throw new Error("expected a profile");
    expect(profile.fullyQualifiedName).toBe("web.ns.svc.cluster.local");
    expect(profile.opaqueProtocol).toBe(false);
    expect(profile.retryBudgetConfig).toEqual({ retryRatio: 0.25, minRetriesPerSecond: 5, ttlMs: 20_000 });
    expect(profile.retryBudget?.config).toEqual(profile.retryBudgetConfig);
    expect(profile.routes).toHaveLength(2);
    const [books, notPurge] = profile.routes;
    expect(books).toMatchObject({
      condition: {
        kind: "all",
        conditions: [
          { kind: "path", pattern: "/books/[0-9]+" },
          { kind: "method", method: "GET" },
        ],
      },
      responseClasses: [
        {
          isFailure: true,
          condition: {
            kind: "any",
            conditions: [
              { kind: "status", min: 500, max: 504 },
              { kind: "not", condition: { kind: "status", min: 100, max: 599 } },
            ],
          },
        },
      ],
      metricLabels: { route: "GET /books/{id}" },
      isRetryable: true,
      timeoutMs: 300,
    });
    expect(
      books?.condition.kind === "all" &&
        books.condition.conditions[0]?.kind === "path" &&
        books.condition.conditions[0].regex.pattern,
    ).toBe("^/books/[0-9]+$");
    expect(notPurge).toMatchObject({
      condition: { kind: "not", condition: { kind: "method", method: "PURGE" } },
      isRetryable: false,
      metricLabels: { route: "not purge" },
    });
    expect(notPurge?.timeoutMs).toBeUndefined();
    expect(profile.dstOverrides).toEqual([
      {
        authority: "web-v2.ns.svc.cluster.local:80",
        weight: 9000,
        backendRef: {
          isDefault: false,
          group: "policy.linkerd.io",
          kind: "Service",
          name: "web-v2",
          namespace: "ns",
          section: "",
          port: 0,
        },
      },
      { authority: "web.ns.svc.cluster.local:80", weight: 1000 },
    ]);
    expect(profile.endpoint?.address).toBe("10.0.0.5:8080");
    expect(profile.parentRef?.name).toBe("web");
    expect(profile.profileRef?.kind).toBe("ServiceProfile");
  });

  it("replaces the profile on each message and keeps the live budget when unchanged", async () => {
    const { plane, discovery } = await setup({
      getProfile(call) {
        call.write(FULL_PROFILE);
      },
    });
    const watch = discovery.watchProfile("10.0.0.5:8080");
    const values: ProfileState[] = [];
    watch.onUpdate((v) => values.push(v));
    const first = await watch.ready({ timeoutMs: 5000 });
    plane.profileCalls[0]?.write({ ...FULL_PROFILE, opaqueProtocol: true });
    await waitFor(() => values.length === 2, 5000, "second profile");
    const second = values[1];
    expect(second?.kind === "profile" && second.opaqueProtocol).toBe(true);
    expect(
      second?.kind === "profile" && first.kind === "profile" && second.retryBudget === first.retryBudget,
    ).toBe(true);
    expect(plane.profileCalls[0]?.request.path).toBe("10.0.0.5:8080");
  });

  it.each([
    [status.NOT_FOUND, "not-found"],
    [status.INVALID_ARGUMENT, "invalid-argument"],
    [status.UNIMPLEMENTED, "unimplemented"],
  ])("turns gRPC %s into a final 'none' value (%s)", async (code, reason) => {
    const { plane, discovery } = await setup({
      getProfile(call) {
        fail(call, code, "no profile");
      },
    });
    const watch = discovery.watchProfile("web.ns.svc.cluster.local:80");
    expect(await watch.ready({ timeoutMs: 5000 })).toEqual({ kind: "none", reason });
    expect(watch.state().terminated).toBe(true);
    expect(plane.profileCalls).toHaveLength(1);
  });
});

const BALANCER = {
  metadata: resource("Service", "web"),
  kind: {
    $case: "balancer",
    value: {
      discovery: { kind: { $case: "dst", value: { path: "web.ns.svc.cluster.local:80" } } },
      load: { $case: "peakEwma", value: { defaultRtt: seconds(0.05), decay: seconds(5) } },
    },
  },
  queue: { capacity: 10, failfastTimeout: seconds(1) },
};

const HTTP_POLICY = outbound.OutboundPolicy.fromPartial({
  metadata: resource("Service", "web"),
  protocol: {
    kind: {
      $case: "http2",
      value: {
        failureAccrual: {
          kind: {
            $case: "consecutiveFailures",
            value: {
              maxFailures: 5,
              backoff: { minBackoff: seconds(2), maxBackoff: seconds(30), jitterRatio: 0.5 },
            },
          },
          ejection: { minReadyEndpoints: 1 },
        },
        routes: [
          {
            metadata: {
              kind: {
                $case: "resource",
                value: {
                  group: "gateway.networking.k8s.io",
                  kind: "HTTPRoute",
                  name: "books",
                  namespace: "ns",
                },
              },
            },
            hosts: [
              { match: { $case: "exact", value: "Web.NS.svc.cluster.local" } },
              { match: { $case: "suffix", value: { reverseLabels: ["local", "cluster"] } } },
            ],
            rules: [
              {
                matches: [
                  {
                    path: { kind: { $case: "prefix", value: "/books" } },
                    headers: [
                      { name: "X-Canary", value: { $case: "exact", value: Buffer.from("yes") } },
                      { name: "x-user", value: { $case: "regex", value: "a.*" } },
                    ],
                    queryParams: [{ name: "v", value: { $case: "exact", value: "2" } }],
                    method: { type: { $case: "registered", value: 1 } },
                  },
                ],
                filters: [
                  {
                    kind: {
                      $case: "requestHeaderModifier",
                      value: {
                        add: { headers: [{ name: "X-A", value: Buffer.from("1") }] },
                        set: { headers: [{ name: "x-s", value: Buffer.from("2") }] },
                        remove: ["X-R"],
                      },
                    },
                  },
                  {
                    kind: {
                      $case: "responseHeaderModifier",
                      value: { add: undefined, set: undefined, remove: ["server"] },
                    },
                  },
                  {
                    kind: {
                      $case: "redirect",
                      value: {
                        scheme: { type: { $case: "registered", value: 1 } },
                        host: "example.com",
                        path: { replace: { $case: "prefix", value: "/new" } },
                        port: 8443,
                        status: 302,
                      },
                    },
                  },
                  {
                    kind: {
                      $case: "failureInjector",
                      value: { status: 503, message: "injected", ratio: { numerator: 1, denominator: 4 } },
                    },
                  },
                ],
                backends: {
                  kind: {
                    $case: "randomAvailable",
                    value: {
                      backends: [
                        { weight: 90, backend: { backend: BALANCER, filters: [] } },
                        {
                          weight: 10,
                          backend: {
                            backend: {
                              metadata: { kind: { $case: "default", value: "forward" } },
                              kind: { $case: "forward", value: weightedAddr("10.9.0.1:80") },
                            },
                            filters: [
                              { kind: { $case: "requestHeaderModifier", value: { remove: ["x-internal"] } } },
                            ],
                          },
                        },
                      ],
                    },
                  },
                },
                timeouts: { request: seconds(10), response: seconds(3), idle: seconds(30) },
                retry: {
                  maxRetries: 2,
                  maxRequestBytes: 65536,
                  conditions: { statusRanges: [{ start: 502, end: 504 }] },
                  timeout: seconds(1),
                  backoff: { minBackoff: seconds(0.025), maxBackoff: seconds(0.25), jitterRatio: 1 },
                },
                allowL5dRequestHeaders: true,
              },
            ],
          },
        ],
      },
    },
  },
} as never);

const GRPC_POLICY = outbound.OutboundPolicy.fromPartial({
  metadata: { kind: { $case: "default", value: "grpc" } },
  protocol: {
    kind: {
      $case: "grpc",
      value: {
        routes: [
          {
            metadata: { kind: { $case: "default", value: "default" } },
            rules: [
              {
                matches: [{ rpc: { service: "pkg.Greeter", method: "" }, headers: [] }],
                backends: {
                  kind: {
                    $case: "firstAvailable",
                    value: { backends: [{ backend: BALANCER, filters: [] }] },
                  },
                },
                retry: {
                  maxRetries: 1,
                  conditions: {
                    cancelled: true,
                    deadineExceeded: true,
                    resourceExhausted: true,
                    internal: true,
                    unavailable: true,
                  },
                },
                filters: [
                  {
                    kind: {
                      $case: "failureInjector",
                      value: { code: 14, message: "nope", ratio: undefined },
                    },
                  },
                ],
              },
            ],
          },
        ],
      },
    },
  },
} as never);

describe("watchOutboundPolicy over OutboundPolicies.Watch", () => {
  it("compiles an HTTP policy field by field", async () => {
    const { plane, discovery } = await setup({
      watch(call) {
        call.write(HTTP_POLICY);
      },
    });
    const policy = await discovery
      .watchOutboundPolicy("web.ns.svc.cluster.local:80")
      .ready({ timeoutMs: 5000 });
    expect(plane.watchCalls[0]?.request).toEqual({
      sourceWorkload: '{"ns":"client-ns","pod":"client-0"}',
      target: { $case: "authority", value: "web.ns.svc.cluster.local:80" },
    });
    if (policy.kind !== "policy" || policy.protocol.kind !== "http2")
      throw new Error("expected an http2 policy");
    expect(policy.metadata).toMatchObject({ isDefault: false, kind: "Service", name: "web" });
    expect(policy.protocol.failureAccrual).toEqual({
      kind: "consecutive",
      maxFailures: 5,
      backoff: { minMs: 2000, maxMs: 30_000, jitterRatio: 0.5, respectRetryAfterHint: false },
      minReadyEndpoints: 1,
    });
    const route = policy.protocol.routes[0];
    expect(route?.metadata).toMatchObject({ kind: "HTTPRoute", name: "books", namespace: "ns" });
    expect(route?.hosts).toEqual([
      { kind: "exact", host: "web.ns.svc.cluster.local" },
      { kind: "suffix", reverseLabels: ["local", "cluster"] },
    ]);
    const rule = route?.rules[0];
    expect(rule?.matches).toMatchObject([
      {
        path: { kind: "prefix", value: "/books" },
        headers: [
          { name: "x-canary", kind: "exact", value: "yes" },
          { name: "x-user", kind: "regex", value: "a.*" },
        ],
        queryParams: [{ name: "v", kind: "exact", value: "2" }],
        method: "POST",
      },
    ]);
    expect(rule?.filters).toEqual([
      { kind: "request-header-modifier", add: [["x-a", "1"]], set: [["x-s", "2"]], remove: ["x-r"] },
      { kind: "response-header-modifier", add: [], set: [], remove: ["server"] },
      {
        kind: "redirect",
        scheme: "https",
        host: "example.com",
        path: { kind: "prefix", value: "/new" },
        port: 8443,
        status: 302,
      },
      { kind: "failure-injector", status: 503, message: "injected", ratio: 0.25 },
    ]);
    expect(rule?.backends).toMatchObject({
      kind: "random-available",
      backends: [
        {
          weight: 90,
          filters: [],
          backend: {
            metadata: { kind: "Service", name: "web" },
            queue: { capacity: 10, failfastTimeoutMs: 1000 },
            target: {
              kind: "balancer",
              path: "web.ns.svc.cluster.local:80",
              load: { kind: "peak-ewma", defaultRttMs: 50, decayMs: 5000 },
            },
          },
        },
        {
          weight: 10,
          filters: [{ kind: "request-header-modifier", add: [], set: [], remove: ["x-internal"] }],
          backend: {
            metadata: { isDefault: true, name: "forward" },
            queue: { capacity: 100, failfastTimeoutMs: 3000 },
            target: { kind: "forward", endpoint: { address: "10.9.0.1:80" } },
          },
        },
      ],
    });
    expect(rule?.timeouts).toEqual({ requestMs: 10_000, responseMs: 3000, idleMs: 30_000 });
    expect(rule?.retry).toEqual({
      maxRetries: 2,
      maxRequestBytes: 65536,
      statusRanges: [[502, 504]],
      timeoutMs: 1000,
      backoff: { minMs: 25, maxMs: 250, jitterRatio: 1, respectRetryAfterHint: false },
    });
    expect(rule?.allowL5dRequestHeaders).toBe(true);
  });

  it("compiles a gRPC policy and sends ip:port targets as addresses", async () => {
    const { plane, discovery } = await setup({
      watch(call) {
        call.write(GRPC_POLICY);
      },
    });
    const policy = await discovery.watchOutboundPolicy("10.96.0.10:8080").ready({ timeoutMs: 5000 });
    expect(plane.watchCalls[0]?.request.target).toEqual({
      $case: "addr",
      value: { ip: ipAddressFromString("10.96.0.10"), port: 8080 },
    });
    if (policy.kind !== "policy" || policy.protocol.kind !== "grpc")
      throw new Error("expected a grpc policy");
    expect(policy.protocol.failureAccrual).toEqual({ kind: "none" });
    const rule = policy.protocol.routes[0]?.rules[0];
    expect(rule?.matches).toEqual([{ service: "pkg.Greeter", method: "", headers: [] }]);
    expect([...(rule?.retry?.codes ?? [])].sort((a, b) => a - b)).toEqual([1, 4, 8, 13, 14]);
    expect(rule?.retry).toMatchObject({ maxRetries: 1, maxRequestBytes: 65536 });
    expect(rule?.filters).toEqual([{ kind: "failure-injector", code: 14, message: "nope", ratio: 1 }]);
    expect(rule?.timeouts).toEqual({});
  });

  it("keeps the previous policy when an invalid one arrives, reports it and re-subscribes", async () => {
    const invalid = outbound.OutboundPolicy.fromPartial({
      protocol: {
        kind: {
          $case: "http1",
          value: {
            routes: [
              {
                rules: [
                  {
                    backends: { kind: { $case: "empty", value: {} } },
                    retry: { maxRetries: 1, conditions: { statusRanges: [{ start: 500, end: 600 }] } },
                  },
                ],
              },
            ],
          },
        },
      },
    } as never);
    const { plane, discovery } = await setup({
      watch(call, index) {
        if (index === 0) {
          call.write(HTTP_POLICY);
          call.write(invalid);
        } else {
          call.write(GRPC_POLICY);
        }
      },
    });
    const watch = discovery.watchOutboundPolicy("web.ns.svc.cluster.local:80");
    const errors: MeshError[] = [];
    const values: OutboundPolicyState[] = [];
    watch.onError((e) => errors.push(e));
    watch.onUpdate((v) => values.push(v));
    await waitFor(() => values.length === 2, 5000, "policy after re-subscribe");
    expect(errors[0]?.code).toBe(MeshErrorCode.DESTINATION_INVALID_UPDATE);
    expect(errors[0]?.message).toMatch(/status range 500-600/);
    expect(values[0]?.kind === "policy" && values[0].protocol.kind).toBe("http2");
    expect(values[1]?.kind === "policy" && values[1].protocol.kind).toBe("grpc");
    expect(plane.watchCalls).toHaveLength(2);
  });

  it.each([
    [status.NOT_FOUND, "not-found"],
    [status.UNIMPLEMENTED, "unimplemented"],
  ])("turns gRPC %s into 'no policy' (%s)", async (code, reason) => {
    const { discovery } = await setup({
      watch(call) {
        fail(call, code, "no policy");
      },
    });
    expect(
      await discovery.watchOutboundPolicy("web.ns.svc.cluster.local:80").ready({ timeoutMs: 5000 }),
    ).toEqual({
      kind: "none",
      reason,
    });
  });

  it("stops with MESH_ERR_CP_REJECTED on InvalidArgument", async () => {
    const { plane, discovery } = await setup({
      watch(call) {
        fail(call, status.INVALID_ARGUMENT, "bad workload");
      },
    });
    await expect(
      discovery.watchOutboundPolicy("web.ns.svc.cluster.local:80").ready({ timeoutMs: 5000 }),
    ).rejects.toMatchObject({
      code: MeshErrorCode.CP_REJECTED,
    });
    expect(plane.watchCalls).toHaveLength(1);
  });
});
