import { isMeshError, MeshErrorCode } from "@inmesh/core";
import { destination, outbound } from "@inmesh/proto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  applyL5dRequestHeaders,
  type Backend,
  type BackendDistribution,
  chooseRoutingModel,
  compileOutboundPolicy,
  compileProfile,
  createRetryBudget,
  DEFAULT_REQUEST_POLICY,
  type HttpFilter,
  type OutboundPolicy,
  type OutboundRequest,
  type RouteBackend,
  selectBackend,
  selectRoute,
  type WeightedRouteBackend,
} from "../src/index.js";
import { createFakeClock, seconds } from "./helpers.js";

const BACKENDS = {
  kind: {
    $case: "firstAvailable",
    value: {
      backends: [
        {
          backend: {
            metadata: { kind: { $case: "default", value: "svc" } },
            kind: {
              $case: "balancer",
              value: {
                discovery: { kind: { $case: "dst", value: { path: "web.ns.svc.cluster.local:80" } } },
              },
            },
          },
        },
      ],
    },
  },
};

interface RouteSpec {
  name: string;
  hosts?: unknown[];
  rules: unknown[][]; // matches per rule
}

function route(spec: RouteSpec) {
  return {
    metadata: {
      kind: {
        $case: "resource",
        value: { group: "gateway.networking.k8s.io", kind: "HTTPRoute", name: spec.name, namespace: "ns" },
      },
    },
    hosts: spec.hosts ?? [],
    rules: spec.rules.map((matches) => ({ matches, backends: BACKENDS })),
  };
}

function httpPolicy(...specs: RouteSpec[]): OutboundPolicy {
  return compileOutboundPolicy(
    outbound.OutboundPolicy.fromPartial({
      protocol: { kind: { $case: "http1", value: { routes: specs.map(route) } } },
    } as never),
  );
}

function request(
  partial: Partial<OutboundRequest> & { headers?: Record<string, string | string[]> },
): OutboundRequest {
  const headers = partial.headers ?? {};
  return {
    method: partial.method ?? "GET",
    host: partial.host ?? "web.ns.svc.cluster.local:80",
    path: partial.path ?? "/",
    query: partial.query,
    getHeader: (name) => headers[name],
  };
}

const exactHost = (host: string) => ({ match: { $case: "exact", value: host } });
const suffixHost = (...reverseLabels: string[]) => ({ match: { $case: "suffix", value: { reverseLabels } } });
const prefix = (value: string) => ({ path: { kind: { $case: "prefix", value } } });
const exact = (value: string) => ({ path: { kind: { $case: "exact", value } } });
const regex = (value: string) => ({ path: { kind: { $case: "regex", value } } });

function routeName(policy: OutboundPolicy, req: OutboundRequest): string | undefined {
  const selected = selectRoute(policy, req);
  return selected?.route.name;
}

describe("selectRoute: HTTPRoute precedence", () => {
  const hosts = httpPolicy(
    { name: "any-host", rules: [[prefix("/")]] },
    { name: "suffix", hosts: [suffixHost("local", "cluster")], rules: [[prefix("/")]] },
    { name: "longer-suffix", hosts: [suffixHost("local", "cluster", "svc")], rules: [[prefix("/")]] },
    { name: "exact", hosts: [exactHost("web.ns.svc.cluster.local")], rules: [[prefix("/")]] },
  );

  it.each([
    ["web.ns.svc.cluster.local:80", "exact"],
    ["WEB.ns.svc.cluster.local.", "exact"],
    ["api.ns.svc.cluster.local", "longer-suffix"],
    ["x.cluster.local", "suffix"],
    ["cluster.local", "any-host"],
    ["example.com", "any-host"],
  ])("host %s → %s", (host, expected) => {
    expect(routeName(hosts, request({ host, path: "/very/long/path/that/does/not/matter" }))).toBe(expected);
  });

  it("a host match outranks any path score", () => {
    const policy = httpPolicy(
      { name: "long-path", rules: [[prefix("/a/b/c/d/e/f")]] },
      { name: "host", hosts: [exactHost("web")], rules: [[prefix("/")]] },
    );
    expect(routeName(policy, request({ host: "web", path: "/a/b/c/d/e/f" }))).toBe("host");
  });

  const paths = httpPolicy(
    { name: "root", rules: [[prefix("/")]] },
    { name: "foo", rules: [[prefix("/foo/")]] },
    { name: "foo-bar-exact", rules: [[exact("/foo/bar")]] },
    { name: "foo-bar-prefix", rules: [[prefix("/foo/bar")]] },
    { name: "regex", rules: [[regex("/api/v[0-9]+/.*")]] },
    { name: "alternation", rules: [[regex("/z|/zz")]] },
  );

  it.each([
    ["/", "root"],
    ["/foo", "foo"],
    ["/foo/", "foo"],
    ["/foo/x", "foo"],
    ["/foobar", "root"], // prefixes match whole segments
    ["/foo/bar", "foo-bar-exact"], // exact and prefix of equal length tie: the earlier route wins
    ["/foo/bar/", "foo-bar-prefix"],
    ["/foo/bar/baz", "foo-bar-prefix"],
    ["/api/v1/users", "regex"], // regex scores the whole path length
    ["/x/api/v1/users", "root"], // regex must match from the start
    ["/z", "alternation"],
    ["/zz", "root"], // the leftmost match "/z" does not reach the end
    ["/foo/bar?x=1", "foo-bar-exact"], // the query is not part of the path
  ])("path %s → %s", (path, expected) => {
    expect(routeName(paths, request({ path }))).toBe(expected);
  });

  it("breaks path ties by header count, then query count, then method", () => {
    const policy = httpPolicy(
      { name: "plain", rules: [[prefix("/")]] },
      { name: "method", rules: [[{ ...prefix("/"), method: { type: { $case: "registered", value: 1 } } }]] },
      {
        name: "query",
        rules: [[{ ...prefix("/"), queryParams: [{ name: "v", value: { $case: "exact", value: "2" } }] }]],
      },
      {
        name: "header",
        rules: [
          [
            {
              ...prefix("/"),
              headers: [{ name: "X-Canary", value: { $case: "exact", value: Buffer.from("yes") } }],
            },
          ],
        ],
      },
      {
        name: "header-regex",
        rules: [
          [
            {
              ...prefix("/"),
              headers: [
                { name: "x-canary", value: { $case: "regex", value: "y.s" } },
                { name: "x-user", value: { $case: "regex", value: "[a-z]+" } },
              ],
            },
          ],
        ],
      },
    );
    expect(routeName(policy, request({}))).toBe("plain");
    expect(routeName(policy, request({ method: "POST" }))).toBe("method");
    expect(routeName(policy, request({ method: "POST", query: "a=1&v=2" }))).toBe("query");
    expect(routeName(policy, request({ method: "POST", query: "v=2", headers: { "x-canary": "yes" } }))).toBe(
      "header",
    );
    expect(routeName(policy, request({ headers: { "x-canary": ["no", "yes"] } }))).toBe("header");
    expect(routeName(policy, request({ headers: { "x-canary": "yes", "x-user": "bob" } }))).toBe(
      "header-regex",
    );
    // Regexes must match the whole value and only apply to visible ASCII.
    expect(routeName(policy, request({ headers: { "x-canary": "yes", "x-user": "bob1" } }))).toBe("header");
    expect(routeName(policy, request({ headers: { "x-canary": "yes", "x-user": "b\u00e9b" } }))).toBe(
      "header",
    );
    // Query values are form-decoded; a missing query never matches.
    expect(routeName(policy, request({ method: "POST", query: "v=%32" }))).toBe("query");
    expect(routeName(policy, request({ method: "POST", query: "" }))).toBe("method");
  });

  it("keeps the earlier rule within a route on ties, and the best match within a rule", () => {
    const policy = compileOutboundPolicy(
      outbound.OutboundPolicy.fromPartial({
        protocol: {
          kind: {
            $case: "http2",
            value: {
              routes: [
                {
                  metadata: { kind: { $case: "default", value: "r" } },
                  rules: [
                    { matches: [prefix("/a")], backends: BACKENDS, timeouts: { request: seconds(1) } },
                    { matches: [prefix("/a")], backends: BACKENDS, timeouts: { request: seconds(2) } },
                    {
                      matches: [prefix("/b"), prefix("/b/c")],
                      backends: BACKENDS,
                      timeouts: { request: seconds(3) },
                    },
                    { matches: [prefix("/b/c")], backends: BACKENDS, timeouts: { request: seconds(4) } },
                  ],
                },
              ],
            },
          },
        },
      } as never),
    );
    expect(selectRoute(policy, request({ path: "/a" }))?.timeouts.requestMs).toBe(1000);
    expect(selectRoute(policy, request({ path: "/b/c/d" }))?.timeouts.requestMs).toBe(3000);
  });

  it("returns undefined when no route matches (Linkerd answers 404)", () => {
    const policy = httpPolicy({ name: "only", hosts: [exactHost("a")], rules: [[prefix("/")]] });
    expect(selectRoute(policy, request({ host: "b" }))).toBeUndefined();
  });

  it("routes detect policies by HTTP version", () => {
    const mk = (name: string) => ({ routes: [route({ name, rules: [[prefix("/")]] })] });
    const policy = compileOutboundPolicy(
      outbound.OutboundPolicy.fromPartial({
        protocol: {
          kind: { $case: "detect", value: { timeout: seconds(10), http1: mk("h1"), http2: mk("h2") } },
        },
      } as never),
    );
    expect(selectRoute(policy, request({}))?.route.name).toBe("h1");
    expect(selectRoute(policy, request({}), { httpVersion: "http2" })?.route.name).toBe("h2");
  });

  it("returns the same frozen policy object for the same rule (no allocation per request)", () => {
    const a = selectRoute(paths, request({ path: "/foo/x" }));
    const b = selectRoute(paths, request({ path: "/foo/y" }));
    expect(a).toBe(b);
    expect(Object.isFrozen(a)).toBe(true);
  });

  it("never throws for arbitrary requests (property)", () => {
    fc.assert(
      fc.property(fc.string(), fc.string(), fc.string(), fc.string(), (method, host, path, query) => {
        const selected = selectRoute(paths, { method, host, path, query, getHeader: () => undefined });
        expect(selected === undefined || typeof selected.route.name === "string").toBe(true);
      }),
    );
  });
});

describe("selectRoute: GRPCRoute", () => {
  const grpc = (service: string, method: string, headers: unknown[] = []) => ({
    rpc: { service, method },
    headers,
  });
  const policy = compileOutboundPolicy(
    outbound.OutboundPolicy.fromPartial({
      protocol: {
        kind: {
          $case: "grpc",
          value: {
            routes: [
              {
                metadata: { kind: { $case: "default", value: "any" } },
                rules: [{ matches: [grpc("", "")], backends: BACKENDS }],
              },
              {
                metadata: { kind: { $case: "default", value: "service" } },
                rules: [{ matches: [grpc("pkg.Greeter", "")], backends: BACKENDS }],
              },
              {
                metadata: { kind: { $case: "default", value: "method" } },
                rules: [{ matches: [grpc("pkg.Greeter", "Hello")], backends: BACKENDS }],
              },
              {
                metadata: { kind: { $case: "default", value: "header" } },
                rules: [
                  {
                    matches: [
                      grpc("pkg.Greeter", "Hello", [
                        { name: "x-v", value: { $case: "exact", value: Buffer.from("2") } },
                      ]),
                    ],
                    backends: BACKENDS,
                    retry: { maxRetries: 2, conditions: { unavailable: true, cancelled: true } },
                  },
                ],
              },
            ],
          },
        },
      },
    } as never),
  );

  it.each([
    ["POST", "/other.Svc/Do", {}, "any"],
    ["POST", "/pkg.Greeter/Bye", {}, "service"],
    ["POST", "/pkg.Greeter/Hello", {}, "method"],
    ["POST", "/pkg.Greeter/Hello", { "x-v": "2" }, "header"],
    ["GET", "/pkg.Greeter/Hello", {}, undefined],
    ["POST", "/pkg.Greeter", {}, undefined],
    ["POST", "//Hello", {}, undefined],
  ])("%s %s → %s", (method, path, headers, expected) => {
    expect(selectRoute(policy, request({ method, path, headers }))?.route.name).toBe(expected);
  });

  it("maps GRPCRoute retry conditions to codes", () => {
    const selected = selectRoute(
      policy,
      request({ method: "POST", path: "/pkg.Greeter/Hello", headers: { "x-v": "2" } }),
    );
    const retry = selected?.retry;
    expect(retry?.kind).toBe("route");
    expect(retry?.maxRetries).toBe(2);
    expect(retry?.maxRequestBytes).toBe(64 * 1024);
    expect(retry?.isRetryableGrpc(14)).toBe(true);
    expect(retry?.isRetryableGrpc(1)).toBe(true);
    expect(retry?.isRetryableGrpc(13)).toBe(false);
    expect(retry?.isRetryableStatus(503)).toBe(false);
    expect(retry?.isRetryableError("fail-fast")).toBe(true);
    expect(retry?.isRetryableError("load-shed")).toBe(false);
    expect(retry?.isRetryableError("connect")).toBe(false);
    if (retry?.kind === "route")
      expect(retry.backoff).toEqual({ minMs: 25, maxMs: 250, jitterRatio: 1, respectRetryAfterHint: false });
  });
});

describe("selectRoute: ServiceProfile", () => {
  const clock = createFakeClock();
  const profile = compileProfile(
    destination.DestinationProfile.fromPartial({
      fullyQualifiedName: "web.ns.svc.cluster.local",
      retryBudget: { retryRatio: 0.2, minRetriesPerSecond: 10, ttl: seconds(10) },
      routes: [
        {
          condition: {
            match: {
              $case: "all",
              value: {
                matches: [
                  { match: { $case: "path", value: { regex: "/api/.*" } } },
                  { match: { $case: "method", value: { type: { $case: "registered", value: 0 } } } },
                ],
              },
            },
          },
          isRetryable: true,
          timeout: seconds(2),
          metricsLabels: { route: "GET /api" },
          responseClasses: [
            { condition: { match: { $case: "status", value: { min: 500, max: 500 } } }, isFailure: false },
            { condition: { match: { $case: "status", value: { min: 429, max: 429 } } }, isFailure: true },
          ],
        },
        {
          condition: { match: { $case: "path", value: { regex: "/api/.*" } } },
          metricsLabels: { route: "other /api" },
        },
      ],
    } as never),
    { clock },
  );

  it("takes the first matching route, anchored ^…$, else the implicit default route", () => {
    expect(selectRoute(profile, request({ path: "/api/x" }))?.metricLabels).toMatchObject({
      route: "GET /api",
    });
    expect(selectRoute(profile, request({ path: "/api/x", method: "POST" }))?.metricLabels).toMatchObject({
      route: "other /api",
    });
    expect(selectRoute(profile, request({ path: "/v1/api/x" }))).toBe(DEFAULT_REQUEST_POLICY);
    const selected = selectRoute(profile, request({ path: "/api/x?q=1" }));
    expect(selected?.source).toBe("profile");
    expect(selected?.timeouts).toEqual({ requestMs: 2000 });
  });

  it("classifies by response classes first, then gRPC codes, then 5xx, and draws on the profile budget", () => {
    const retry = selectRoute(profile, request({ path: "/api/x" }))?.retry;
    expect(retry?.kind).toBe("budget");
    expect(retry?.maxRetries).toBe(Number.POSITIVE_INFINITY);
    expect(retry?.isRetryableStatus(500)).toBe(false); // class says success
    expect(retry?.isRetryableStatus(429)).toBe(true); // class says failure
    expect(retry?.isRetryableStatus(503)).toBe(true); // default: 5xx
    expect(retry?.isRetryableStatus(404)).toBe(false);
    expect(retry?.isRetryableGrpc(14)).toBe(true);
    expect(retry?.isRetryableGrpc(7)).toBe(true);
    expect(retry?.isRetryableGrpc(5)).toBe(false);
    expect(retry?.isRetryableError("connect")).toBe(false);
    if (retry?.kind === "budget") expect(retry.budget).toBe(profile.retryBudget);
    // Not retryable route: no retries at all.
    expect(selectRoute(profile, request({ path: "/api/x", method: "POST" }))?.retry.kind).toBe("none");
  });

  it("gives no retries when the budget is invalid", () => {
    for (const ttl of [undefined, seconds(0.5), seconds(61)]) {
      const p = compileProfile(
        destination.DestinationProfile.fromPartial({
          retryBudget: { retryRatio: 0.2, minRetriesPerSecond: 10, ttl },
          routes: [{ condition: { match: { $case: "path", value: { regex: ".*" } } }, isRetryable: true }],
        } as never),
      );
      expect(p.retryBudget).toBeUndefined();
      expect(selectRoute(p, request({}))?.retry.kind).toBe("none");
    }
  });

  it("chooseRoutingModel: profile routes win; an empty profile falls back to the policy", () => {
    const policy = httpPolicy({ name: "p", rules: [[prefix("/")]] });
    expect(chooseRoutingModel({ profile, policy })).toBe(profile);
    const empty = compileProfile(destination.DestinationProfile.fromPartial({ fullyQualifiedName: "x" }));
    expect(chooseRoutingModel({ profile: empty, policy })).toBe(policy);
    expect(
      chooseRoutingModel({
        profile: { kind: "none", reason: "not-found" },
        policy: { kind: "none", reason: "not-found" },
      }),
    ).toBeUndefined();
    expect(selectRoute(undefined, request({}))).toBe(DEFAULT_REQUEST_POLICY);
  });
});

describe("HTTPRoute retry and timeouts", () => {
  const policy = compileOutboundPolicy(
    outbound.OutboundPolicy.fromPartial({
      protocol: {
        kind: {
          $case: "http1",
          value: {
            routes: [
              {
                metadata: { kind: { $case: "default", value: "r" } },
                rules: [
                  {
                    backends: BACKENDS,
                    timeouts: { request: seconds(10), response: seconds(5), idle: seconds(60) },
                    retry: {
                      maxRetries: 3,
                      maxRequestBytes: 1024,
                      conditions: {
                        statusRanges: [
                          { start: 500, end: 599 },
                          { start: 429, end: 429 },
                        ],
                      },
                      timeout: seconds(0.25),
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
    } as never),
  );

  it("exposes the effective request policy", () => {
    const selected = selectRoute(policy, request({}));
    expect(selected?.timeouts).toEqual({ requestMs: 10_000, responseMs: 5000, idleMs: 60_000 });
    expect(selected?.allowL5dRequestHeaders).toBe(true);
    const retry = selected?.retry;
    expect(retry?.kind).toBe("route");
    if (retry?.kind !== "route") return;
    expect(retry.maxRetries).toBe(3);
    expect(retry.maxRequestBytes).toBe(1024);
    expect(retry.perTryTimeoutMs).toBe(250);
    expect(retry.isRetryableStatus(503)).toBe(true);
    expect(retry.isRetryableStatus(429)).toBe(true);
    expect(retry.isRetryableStatus(404)).toBe(false);
    expect(retry.isRetryableGrpc(14)).toBe(false);
  });

  it.each([[{ start: 0, end: 500 }], [{ start: 500, end: 499 }], [{ start: 500, end: 600 }]])(
    "rejects the whole policy for an invalid status range %j",
    (range) => {
      try {
        compileOutboundPolicy(
          outbound.OutboundPolicy.fromPartial({
            protocol: {
              kind: {
                $case: "http1",
                value: {
                  routes: [
                    {
                      rules: [
                        {
                          backends: BACKENDS,
                          retry: { maxRetries: 1, conditions: { statusRanges: [range] } },
                        },
                      ],
                    },
                  ],
                },
              },
            },
          } as never),
        );
        expect.unreachable();
      } catch (error) {
        expect(isMeshError(error) && error.code).toBe(MeshErrorCode.DESTINATION_INVALID_UPDATE);
      }
    },
  );
});

describe("selectBackend", () => {
  const mk = (name: string, weight = 1): WeightedRouteBackend<HttpFilter> => ({
    backend: { metadata: { name } } as unknown as Backend,
    filters: [],
    weight,
  });
  const name = (b: RouteBackend<HttpFilter> | undefined) => b?.backend.metadata.name;

  it("draws random-available backends by weight and skips unavailable ones", () => {
    const distribution: BackendDistribution<HttpFilter> = {
      kind: "random-available",
      backends: [mk("a", 1), mk("b", 3), mk("c", 0)],
    };
    const pickAt = (r: number) => name(selectBackend(distribution, { random: () => r }));
    expect(pickAt(0)).toBe("a");
    expect(pickAt(0.24)).toBe("a");
    expect(pickAt(0.26)).toBe("b");
    expect(pickAt(0.99)).toBe("b");
    const notA = (b: RouteBackend<HttpFilter>) => name(b) !== "a";
    expect(name(selectBackend(distribution, { random: () => 0.1, isAvailable: notA }))).toBe("b");
    expect(selectBackend({ kind: "empty" })).toBeUndefined();
  });

  it("takes the first available backend of first-available", () => {
    const distribution: BackendDistribution<HttpFilter> = {
      kind: "first-available",
      backends: [mk("a"), mk("b")],
    };
    expect(name(selectBackend(distribution))).toBe("a");
    expect(name(selectBackend(distribution, { isAvailable: (b) => name(b) === "b" }))).toBe("b");
  });

  it("budget sharing: a profile update with the same budget keeps the live budget", () => {
    const clock = createFakeClock();
    const message = destination.DestinationProfile.fromPartial({
      retryBudget: { retryRatio: 0.2, minRetriesPerSecond: 10, ttl: seconds(10) },
    } as never);
    const first = compileProfile(message, { clock });
    const second = compileProfile(message, { clock, previousBudget: first.retryBudget });
    expect(second.retryBudget).toBe(first.retryBudget);
    const changed = compileProfile(
      destination.DestinationProfile.fromPartial({
        retryBudget: { retryRatio: 0.3, minRetriesPerSecond: 10, ttl: seconds(10) },
      } as never),
      { clock, previousBudget: first.retryBudget },
    );
    expect(changed.retryBudget).not.toBe(first.retryBudget);
    expect(createRetryBudget({ clock }).config).toEqual({
      retryRatio: 0.2,
      minRetriesPerSecond: 10,
      ttlMs: 10_000,
    });
  });
});

describe("applyL5dRequestHeaders", () => {
  const mk = (allow: boolean, retry?: unknown) =>
    compileOutboundPolicy(
      outbound.OutboundPolicy.fromPartial({
        protocol: {
          kind: {
            $case: "http1",
            value: {
              routes: [
                {
                  metadata: { kind: { $case: "default", value: "r" } },
                  rules: [
                    {
                      backends: BACKENDS,
                      allowL5dRequestHeaders: allow,
                      timeouts: { request: seconds(5) },
                      retry,
                    },
                  ],
                },
              ],
            },
          },
        },
      } as never),
    );
  const headers = (h: Record<string, string>) => (name: string) => h[name];

  it("ignores the headers unless the route allows them", () => {
    const policy = selectRoute(mk(false), request({})) as NonNullable<ReturnType<typeof selectRoute>>;
    const result = applyL5dRequestHeaders(policy, headers({ "l5d-retry-http": "5xx", "l5d-timeout": "1s" }));
    expect(result.policy).toBe(policy);
    expect(result.stripHeaders).toEqual([]);
  });

  it("turns header-only retries into a route retry with Linkerd's defaults and overrides timeouts", () => {
    const policy = selectRoute(mk(true), request({})) as NonNullable<ReturnType<typeof selectRoute>>;
    expect(policy.retry.kind).toBe("none");
    const { policy: effective, stripHeaders } = applyL5dRequestHeaders(
      policy,
      headers({
        "l5d-retry-http": "gateway-error, 429",
        "l5d-retry-grpc": "unavailable",
        "l5d-retry-timeout": "200ms",
        "l5d-request-timeout": "2s",
        "l5d-response-timeout": "1s",
      }),
    );
    expect(stripHeaders).toContain("l5d-retry-http");
    expect(stripHeaders).toHaveLength(7);
    expect(effective.timeouts).toEqual({ requestMs: 2000, responseMs: 1000 });
    const retry = effective.retry;
    expect(retry.kind).toBe("route");
    expect(retry.maxRetries).toBe(1);
    expect(retry.maxRequestBytes).toBe(65536);
    expect(retry.isRetryableStatus(503)).toBe(true);
    expect(retry.isRetryableStatus(500)).toBe(false);
    expect(retry.isRetryableStatus(429)).toBe(true);
    expect(retry.isRetryableGrpc(14)).toBe(true);
    expect(retry.isRetryableGrpc(13)).toBe(false);
    if (retry.kind === "route") {
      expect(retry.perTryTimeoutMs).toBe(200);
      expect(retry.backoff).toEqual({ minMs: 25, maxMs: 250, jitterRatio: 1, respectRetryAfterHint: false });
    }
  });

  it("overrides the route's limit but keeps its conditions; ignores malformed values", () => {
    const policy = selectRoute(
      mk(true, { maxRetries: 2, conditions: { statusRanges: [{ start: 500, end: 599 }] } }),
      request({}),
    ) as NonNullable<ReturnType<typeof selectRoute>>;
    const { policy: effective } = applyL5dRequestHeaders(
      policy,
      headers({ "l5d-retry-limit": "4", "l5d-retry-http": "5xx,bogus", "l5d-timeout": "soon" }),
    );
    expect(effective.retry.maxRetries).toBe(4);
    expect(effective.retry.isRetryableStatus(500)).toBe(true);
    expect(effective.timeouts).toEqual({ requestMs: 5000 });
  });
});
