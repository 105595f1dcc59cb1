import { destination, outbound } from "@inmesh/proto";
import { describe, expect, it } from "vitest";
import {
  applyL5dRequestHeaders,
  applyRedirect,
  compileOutboundPolicy,
  compileProfile,
  type HttpFilter,
  modifyHeaderRecord,
  type OutboundRequest,
  type RedirectFilter,
  type RequestPolicy,
  selectBackend,
  selectRoute,
} from "../src/index.js";

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

function request(path: string, method = "GET"): OutboundRequest {
  const q = path.indexOf("?");
  return {
    method,
    host: "web.ns.svc.cluster.local:80",
    path: q < 0 ? path : path.slice(0, q),
    query: q < 0 ? "" : path.slice(q + 1),
    getHeader: () => undefined,
  };
}

/** One HTTPRoute rule with `matches` and `filters`, compiled as the controller's message would be. */
function ruleWith(matches: unknown[], filters: unknown[], extra: Record<string, unknown> = {}) {
  return compileOutboundPolicy(
    outbound.OutboundPolicy.fromPartial({
      protocol: {
        kind: {
          $case: "http1",
          value: {
            routes: [
              {
                metadata: { kind: { $case: "default", value: "r" } },
                rules: [{ matches, filters, backends: BACKENDS, ...extra }],
              },
            ],
          },
        },
      },
    } as never),
  );
}

const redirect = (value: Record<string, unknown>) => ({ kind: { $case: "redirect", value } });

function redirectOf(policy: RequestPolicy): RedirectFilter {
  const filter = policy.filters.find((f) => f.kind === "redirect");
  if (!filter) throw new Error("no redirect filter");
  return filter as RedirectFilter;
}

describe("RequestRedirect", () => {
  const prefixMatch = [{ path: { kind: { $case: "prefix", value: "/old/" } } }];

  it("replaces a matched prefix, keeps the query, and defaults to 301", () => {
    const model = ruleWith(prefixMatch, [
      redirect({ path: { replace: { $case: "prefix", value: "/new" } } }),
    ]);
    const req = request("/old/books?id=7");
    const policy = selectRoute(model, req) as RequestPolicy;
    const outcome = applyRedirect(
      redirectOf(policy),
      { scheme: "http", authority: "web.ns.svc.cluster.local", pathAndQuery: "/old/books?id=7" },
      policy.httpMatches ?? [],
      req,
    );
    expect(outcome).toEqual({
      kind: "redirect",
      status: 301,
      location: "http://web.ns.svc.cluster.local/new/books?id=7",
    });
  });

  it("sets scheme, host and port as the proxy does, and ignores a redirect to the request itself", () => {
    const model = ruleWith(
      [],
      [redirect({ scheme: { type: { $case: "registered", value: 1 } }, host: "example.com", status: 302 })],
    );
    const req = request("/a");
    const policy = selectRoute(model, req) as RequestPolicy;
    const at = (authority: string) =>
      applyRedirect(redirectOf(policy), { scheme: "http", authority, pathAndQuery: "/a" }, [], req);
    // Only the host: the request's port stays unless it is the (new) scheme's default.
    expect(at("web:8080")).toMatchObject({ status: 302, location: "https://example.com:8080/a" });
    expect(at("web")).toMatchObject({ location: "https://example.com/a" });

    const portOnly = ruleWith([], [redirect({ port: 8443 })]);
    const portPolicy = selectRoute(portOnly, req) as RequestPolicy;
    expect(
      applyRedirect(
        redirectOf(portPolicy),
        { scheme: "http", authority: "web", pathAndQuery: "/a" },
        [],
        req,
      ),
    ).toMatchObject({ location: "http://web:8443/a" });
    const toDefault = ruleWith([], [redirect({ port: 80 })]);
    const samePolicy = selectRoute(toDefault, req) as RequestPolicy;
    expect(
      applyRedirect(
        redirectOf(samePolicy),
        { scheme: "http", authority: "web", pathAndQuery: "/a" },
        [],
        req,
      ),
    ).toBeUndefined();
  });

  it("refuses a prefix rewrite when the rule did not match by prefix", () => {
    const model = ruleWith(
      [{ path: { kind: { $case: "exact", value: "/exact" } } }],
      [redirect({ path: { replace: { $case: "prefix", value: "/x" } } })],
    );
    const req = request("/exact");
    const policy = selectRoute(model, req) as RequestPolicy;
    const outcome = applyRedirect(
      redirectOf(policy),
      { scheme: "http", authority: "web", pathAndQuery: "/exact" },
      policy.httpMatches ?? [],
      req,
    );
    expect(outcome?.kind).toBe("invalid");
  });
});

describe("header modifiers", () => {
  it("add, then set, then remove, in the proxy's order", () => {
    const modifier = {
      add: [
        ["x-added", "1"],
        ["x-gone", "1"],
      ] as const,
      set: [["x-set", "new"]] as const,
      remove: ["x-gone", "server"],
    };
    const headers = { "x-set": ["a", "b"], server: "node", "x-added": "0" };
    const out = modifyHeaderRecord(headers, [modifier]);
    expect(out).toEqual({ "x-set": "new", "x-added": ["0", "1"] });
    expect(headers).toEqual({ "x-set": ["a", "b"], server: "node", "x-added": "0" });
  });
});

describe("ServiceProfile dstOverrides", () => {
  const profile = compileProfile(
    destination.DestinationProfile.fromPartial({
      fullyQualifiedName: "web.ns.svc.cluster.local",
      retryBudget: { retryRatio: 0.2, minRetriesPerSecond: 10, ttl: { seconds: BigInt(10), nanos: 0 } },
      routes: [
        {
          condition: { match: { $case: "path", value: { regex: "/slow" } } },
          metricsLabels: { route: "slow" },
          timeout: { seconds: BigInt(1), nanos: 0 },
        },
      ],
      dstOverrides: [
        { authority: "web-v1.ns.svc.cluster.local:80", weight: 9000 },
        { authority: "web-v2.ns.svc.cluster.local:8080", weight: 1000 },
        { authority: "no-port.ns.svc.cluster.local", weight: 1000 },
        { authority: "zero.ns.svc.cluster.local:80", weight: 0 },
      ],
    } as never),
  );

  it("split every route, the implicit default one too, by weight across the authorities", () => {
    // Authorities without a port are not a NameAddr to the proxy: dropped, like zero weights.
    expect(profile.dstOverrides.map((d) => d.authority)).toEqual([
      "web-v1.ns.svc.cluster.local:80",
      "web-v2.ns.svc.cluster.local:8080",
    ]);
    for (const path of ["/slow", "/other"]) {
      const policy = selectRoute(profile, request(path)) as RequestPolicy;
      expect(policy.source).toBe("profile");
      const distribution = policy.backends;
      expect(distribution?.kind).toBe("random-available");
      const picks = new Map<string, number>();
      let draw = 0;
      for (let i = 0; i < 1000; i += 1) {
        // A deterministic sweep of [0, 1): the split follows the weights exactly.
        const backend = selectBackend<HttpFilter>(distribution as NonNullable<typeof distribution> as never, {
          random: () => (draw++ % 1000) / 1000,
        });
        const target = backend?.backend.target;
        const key = target?.kind === "balancer" ? target.path : "?";
        picks.set(key, (picks.get(key) ?? 0) + 1);
      }
      expect(picks.get("web-v1.ns.svc.cluster.local:80")).toBe(900);
      expect(picks.get("web-v2.ns.svc.cluster.local:8080")).toBe(100);
    }
    const slow = selectRoute(profile, request("/slow")) as RequestPolicy;
    expect(slow.timeouts).toEqual({ requestMs: 1000 });
    expect(
      slow.backends?.kind === "random-available" && slow.backends.backends[0]?.backend.metadata,
    ).toMatchObject({ kind: "Service", name: "web-v1", namespace: "ns", port: 80 });
  });
});

describe("l5d request headers as linkerd2-proxy reads them", () => {
  const model = ruleWith([], [], {
    allowL5dRequestHeaders: true,
    timeouts: { request: { seconds: BigInt(5), nanos: 0 } },
    retry: { maxRetries: 2, conditions: { statusRanges: [{ start: 500, end: 599 }] } },
  });
  const policy = selectRoute(model, request("/")) as RequestPolicy;
  const headers = (h: Record<string, string>) => (name: string) => h[name];

  it("prefers l5d-request-timeout over l5d-timeout and accepts a bare 0", () => {
    const both = applyL5dRequestHeaders(
      policy,
      headers({ "l5d-timeout": "3s", "l5d-request-timeout": "2s" }),
    );
    expect(both.policy.timeouts.requestMs).toBe(2000);
    const zero = applyL5dRequestHeaders(policy, headers({ "l5d-response-timeout": "0" }));
    expect(zero.policy.timeouts).toEqual({ requestMs: 5000, responseMs: 0 });
  });

  it("replaces the route's HTTP conditions with the header's, skipping items it cannot read", () => {
    const { policy: effective } = applyL5dRequestHeaders(
      policy,
      headers({ "l5d-retry-http": "429,nonsense" }),
    );
    expect(effective.retry.isRetryableStatus(429)).toBe(true);
    // The route's 5xx no longer applies: the header replaced it.
    expect(effective.retry.isRetryableStatus(503)).toBe(false);
    expect(effective.retry.maxRetries).toBe(2);
    const grpcOnly = applyL5dRequestHeaders(policy, headers({ "l5d-retry-grpc": "unavailable" }));
    expect(grpcOnly.policy.retry.isRetryableGrpc(14)).toBe(true);
    expect(grpcOnly.policy.retry.isRetryableStatus(503)).toBe(true);
  });
});
