import { ConfigError } from "@inmesh/core";
import { describe, expect, it } from "vitest";
import {
  applyHeaderModifier,
  applyRouteFilters,
  clientFacts,
  compileServerPolicy,
  computeRedirect,
  defaultServerPolicy,
  type HttpRequestFacts,
  isGrpcContentType,
  NOT_LOADED_POLICY,
  objectHeaderMutator,
  type RedirectFilter,
  type RouteFilter,
  shouldInjectFailure,
} from "../src/index.js";
import {
  ANON_TLS,
  authz,
  facts,
  httpRouteMsg,
  MESH,
  PLAIN,
  pathExact,
  pathPrefix,
  peer,
  request,
  SA,
  serverMsg,
} from "./builders.js";
import type { RefClient } from "./reference-evaluator.js";

const CLUSTER = ["10.0.0.0/8", "fd00::/8"];
const dflt = (name: string) => ({ group: "", kind: "default", name });
const http = (policy: ReturnType<typeof defaultServerPolicy>, client: RefClient) =>
  policy.authorizeHttp(facts(request({ client })));
const conn = (policy: ReturnType<typeof defaultServerPolicy>, client: RefClient) =>
  policy.authorizeConnection(clientFacts(client.address, peer(client)));

describe("built-in default policies (§2.5, contract §6.4)", () => {
  it("all-unauthenticated: detect, one authorization and a default route, all named after the policy", () => {
    const policy = defaultServerPolicy("all-unauthenticated", { port: 8080 });
    expect(policy).toMatchObject({
      status: "default",
      protocol: "detect",
      perRequest: true,
      detectTimeoutMs: 10_000,
      port: 8080,
    });
    expect(policy.server).toEqual(dflt("all-unauthenticated"));
    expect(http(policy, PLAIN("8.8.8.8"))).toMatchObject({
      allowed: true,
      route: dflt("default"),
      authz: dflt("all-unauthenticated"),
      audit: false,
    });
    expect(conn(policy, PLAIN("::1")).authz).toEqual(dflt("all-unauthenticated"));
  });

  it("has no localhost authorization: cluster-* refuses 127.0.0.1", () => {
    const policy = defaultServerPolicy("cluster-unauthenticated", { clusterNetworks: CLUSTER });
    expect(http(policy, PLAIN("10.1.2.3")).allowed).toBe(true);
    expect(http(policy, PLAIN("fd00::3")).allowed).toBe(true);
    expect(http(policy, PLAIN("127.0.0.1")).allowed).toBe(false);
    expect(conn(policy, PLAIN("127.0.0.1")).allowed).toBe(false);
  });

  it("*-authenticated admits any DNS identity over mesh TLS, nothing else", () => {
    for (const policy of [
      defaultServerPolicy("all-authenticated"),
      defaultServerPolicy("cluster-authenticated", { clusterNetworks: CLUSTER }),
    ]) {
      expect(http(policy, MESH("10.0.0.1", SA("x", "y"))).allowed).toBe(true);
      expect(http(policy, MESH("10.0.0.1", "spiffe://cluster.local/ns/y/sa/x")).allowed).toBe(false);
      expect(http(policy, ANON_TLS("10.0.0.1")).allowed).toBe(false);
      expect(http(policy, PLAIN("10.0.0.1")).allowed).toBe(false);
    }
  });

  it("deny is opaque with no authorizations: every connection is closed, localhost included (§9.9)", () => {
    const policy = defaultServerPolicy("deny");
    expect(policy).toMatchObject({ protocol: "opaque", perRequest: false, server: dflt("deny") });
    expect(conn(policy, PLAIN("127.0.0.1"))).toMatchObject({ allowed: false, reason: "unauthorized" });
    expect(http(policy, PLAIN("127.0.0.1")).allowed).toBe(false);
    // The controller's `deny` is a Server with no authorizations: localhost keeps working.
    const controllerDeny = compileServerPolicy(
      serverMsg({ authorizations: [], labels: { group: "", kind: "default", name: "deny" } }),
    );
    expect(
      controllerDeny.authorizeConnection(clientFacts("127.0.0.1", peer(PLAIN("127.0.0.1")))).allowed,
    ).toBe(true);
  });

  it("audit allows everyone and flags the decision", () => {
    const policy = defaultServerPolicy("audit", { clusterNetworks: CLUSTER });
    expect(http(policy, PLAIN("8.8.8.8"))).toMatchObject({
      allowed: true,
      audit: true,
      authz: dflt("audit"),
    });
  });

  it("the opaque variant authorizes connections only", () => {
    const policy = defaultServerPolicy("all-unauthenticated", { opaque: true });
    expect(policy).toMatchObject({ protocol: "opaque", perRequest: false, detectTimeoutMs: undefined });
    expect(conn(policy, PLAIN("8.8.8.8")).allowed).toBe(true);
  });

  it("refuses unknown names, and any name but deny/all-* without cluster networks (audit too)", () => {
    expect(() => defaultServerPolicy("bogus" as "deny")).toThrow(ConfigError);
    expect(() => defaultServerPolicy("cluster-authenticated")).toThrow(ConfigError);
    expect(() => defaultServerPolicy("audit")).toThrow(/cluster networks/);
    expect(() => defaultServerPolicy("deny")).not.toThrow();
    expect(() => defaultServerPolicy("all-unauthenticated", { clusterNetworks: ["nope"] })).toThrow(
      ConfigError,
    );
  });

  it("the not-loaded policy refuses everything with a distinct reason", () => {
    expect(NOT_LOADED_POLICY.authorizeHttp(facts(request({ client: PLAIN("127.0.0.1") })))).toMatchObject({
      allowed: false,
      reason: "not-loaded",
      httpStatus: 403,
      grpcStatus: 7,
    });
    expect(
      NOT_LOADED_POLICY.authorizeConnection(clientFacts("127.0.0.1", peer(PLAIN("127.0.0.1")))),
    ).toMatchObject({
      allowed: false,
      reason: "not-loaded",
    });
  });
});

const redirect = (overrides: Partial<RedirectFilter>): RedirectFilter => ({
  kind: "redirect",
  scheme: undefined,
  authority: undefined,
  path: undefined,
  status: 301,
  matchedPrefixLength: undefined,
  ...overrides,
});
const req = (authority: string | undefined, path: string, query = "") => ({ authority, path, query });

describe("redirects (§8.6, linkerd http/route filter/redirect.rs)", () => {
  it("computes locations like the proxy", () => {
    const cases: [RedirectFilter, ReturnType<typeof req>, string | "none" | "invalid"][] = [
      [
        redirect({ authority: { kind: "exact", value: "example.org" } }),
        req("example.com", "/foo", "a=b&c"),
        "http://example.org/foo?a=b&c",
      ],
      [
        redirect({ authority: { kind: "port", port: 8080 } }),
        req("example.com", "/foo"),
        "http://example.com:8080/foo",
      ],
      [
        redirect({ authority: { kind: "port", port: 80 } }),
        req("example.com:8080", "/foo"),
        "http://example.com/foo",
      ],
      [
        redirect({ scheme: "https", authority: { kind: "port", port: 443 } }),
        req("example.com:8080", "/f"),
        "https://example.com/f",
      ],
      [
        redirect({ authority: { kind: "host", value: "other" } }),
        req("example.com:8080", "/f"),
        "http://other:8080/f",
      ],
      [
        redirect({ authority: { kind: "host", value: "other" } }),
        req("example.com:80", "/f"),
        "http://other/f",
      ],
      [
        redirect({ path: { kind: "full", value: "/bar" } }),
        req("example.com", "/foo", "a=b"),
        "http://example.com/bar",
      ],
      [
        redirect({ path: { kind: "prefix", value: "/qux" }, matchedPrefixLength: 4 }),
        req("h", "/foo/bar", "a=b"),
        "http://h/qux/bar?a=b",
      ],
      [
        redirect({ path: { kind: "prefix", value: "/qux" }, matchedPrefixLength: 1 }),
        req("h", "/foo/bar"),
        "http://h/qux/foo/bar",
      ],
      [redirect({ path: { kind: "prefix", value: "/qux" } }), req("h", "/foo/bar"), "invalid"],
      [redirect({ scheme: "https" }), req("h", "/x"), "https://h/x"],
      [redirect({}), req("example.com", "/foo"), "none"],
      [redirect({ authority: { kind: "exact", value: "EXAMPLE.com" } }), req("example.com", "/foo"), "none"],
      [redirect({}), req(undefined, "/foo"), "invalid"],
    ];
    for (const [filter, request, expected] of cases) {
      const outcome = computeRedirect(filter, request);
      if (expected === "none" || expected === "invalid") expect(outcome.kind).toBe(expected);
      else expect(outcome).toEqual({ kind: "redirect", status: 301, location: expected });
    }
  });

  it("carries the matched prefix length from the winning match", () => {
    const filters = [
      {
        kind: {
          $case: "redirect" as const,
          value: {
            scheme: undefined,
            host: "",
            path: { replace: { $case: "prefix" as const, value: "/v2" } },
            port: 0,
            status: 0,
          },
        },
      },
    ];
    const server = serverMsg({
      authorizations: [authz({})],
      protocol: {
        kind: "detect",
        routes: [
          httpRouteMsg({
            name: "r",
            rules: [{ matches: [pathExact("/v1/exact"), pathPrefix("/v1/")], filters }],
          }),
        ],
      },
    });
    const policy = compileServerPolicy(server);
    const run = (path: string) => {
      const d = policy.authorizeHttp(facts(request({ authority: "h", path })));
      if (!d.allowed) throw new Error("expected allowed");
      return applyRouteFilters(d.filters, { authority: "h", path, query: "" }, undefined);
    };
    expect(run("/v1/books")).toMatchObject({
      kind: "respond",
      cause: "redirect",
      httpStatus: 301,
      grpcStatus: 5,
      location: "http://h/v2/books",
    });
    // The exact match wins for this path, so a prefix rewrite is invalid: 500 and close.
    expect(run("/v1/exact")).toMatchObject({
      kind: "respond",
      cause: "invalid-redirect",
      httpStatus: 500,
      grpcStatus: 13,
      closeConnection: true,
    });
  });
});

describe("other filters", () => {
  it("modifies headers in Linkerd's order: add, set, remove", () => {
    const filter: RouteFilter = {
      kind: "request-header-modifier",
      add: [
        { name: "x-a", value: "2" },
        { name: "x-b", value: "1" },
      ],
      set: [
        { name: "x-c", value: "set" },
        { name: "x-b", value: "replaced" },
      ],
      remove: ["x-d", "x-c"],
    };
    const headers = new Headers({ "x-a": "1", "x-d": "gone" });
    applyHeaderModifier(filter, headers);
    expect([...headers.entries()]).toEqual([
      ["x-a", "1, 2"],
      ["x-b", "replaced"],
    ]);
    const object: Record<string, string | string[] | undefined> = { "x-a": "1", "x-d": "gone" };
    expect(applyRouteFilters([filter], req("h", "/"), objectHeaderMutator(object))).toEqual({
      kind: "continue",
    });
    expect(object).toEqual({ "x-a": "1, 2", "x-b": "replaced" });
  });

  it("injects failures with the configured ratio", () => {
    const never = {
      kind: "failure-injector",
      protocol: "http",
      status: 503,
      message: "m",
      numerator: 0,
      denominator: 1,
    } as const;
    const always = { ...never, numerator: 1 } as const;
    expect(shouldInjectFailure(never)).toBe(false);
    expect(shouldInjectFailure(always)).toBe(true);
    expect(applyRouteFilters([always], req("h", "/"), undefined)).toMatchObject({
      kind: "respond",
      cause: "failure-injected",
      httpStatus: 500,
      grpcStatus: 13,
      closeConnection: true,
    });
    let hits = 0;
    const half = { ...never, numerator: 1, denominator: 2 } as const;
    for (let i = 0; i < 2000; i += 1) if (shouldInjectFailure(half)) hits += 1;
    expect(hits).toBeGreaterThan(800);
    expect(hits).toBeLessThan(1200);
  });

  it("recognizes gRPC content types", () => {
    expect(isGrpcContentType("application/grpc")).toBe(true);
    expect(isGrpcContentType("application/grpc+proto")).toBe(true);
    expect(isGrpcContentType(["Application/GRPC-web"])).toBe(true);
    expect(isGrpcContentType("application/json")).toBe(false);
    expect(isGrpcContentType(undefined)).toBe(false);
  });
});

describe("HttpRequestFacts", () => {
  it("needs no copy of the header object", () => {
    const server = serverMsg({
      authorizations: [authz({})],
      protocol: {
        kind: "detect",
        routes: [
          httpRouteMsg({
            name: "r",
            rules: [
              {
                matches: [
                  {
                    path: undefined,
                    headers: [{ name: "x-tenant", value: { $case: "exact", value: Buffer.from("a") } }],
                    queryParams: [],
                    method: undefined,
                  },
                ],
              },
            ],
          }),
        ],
      },
    });
    const headers = Object.create(null) as Record<string, string>;
    headers["x-tenant"] = "a";
    const f: HttpRequestFacts = { ...facts(request({})), headers };
    expect(compileServerPolicy(server).authorizeHttp(f).allowed).toBe(true);
    // Prototype keys are never mistaken for headers.
    const proto: HttpRequestFacts = { ...facts(request({})), headers: {} };
    expect(compileServerPolicy(server).authorizeHttp(proto).allowed).toBe(false);
  });
});
