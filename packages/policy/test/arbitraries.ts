/**
 * fast-check generators for inbound.Server messages and requests. Values come from small pools so that
 * hosts, paths, headers and identities collide often enough to exercise scoring and ties; a few
 * generators produce invalid pieces (no networks, bad regex, missing metadata, …) at a low rate.
 */
import { type grpcRoute, type httpRoute, inbound, ipNetworkFromString } from "@inmesh/proto";
import fc from "fast-check";
import { SA } from "./builders.js";
import type { RefClient, RefRequest } from "./reference-evaluator.js";

const rare = <T>(valid: fc.Arbitrary<T>, invalid: fc.Arbitrary<T>): fc.Arbitrary<T> =>
  fc.oneof({ arbitrary: valid, weight: 150 }, { arbitrary: invalid, weight: 1 });

const NETS = [
  "0.0.0.0/0",
  "::/0",
  "10.0.0.0/8",
  "10.1.0.0/16",
  "10.1.2.0/24",
  "127.0.0.1/32",
  "192.168.0.0/16",
  "fd00::/8",
  "::1/128",
  "10.1.2.3/32",
];

const IDENTITIES = [
  SA("a"),
  SA("b"),
  SA("a", "other"),
  "spiffe://cluster.local/ns/default/sa/a",
  "x.local",
  "Mixed.Case.Local",
];
const SUFFIXES: string[][] = [
  [],
  ["cluster", "local"],
  ["default", "serviceaccount", "identity", "linkerd", "cluster", "local"],
  ["local"],
  ["x"],
];

const networkArb: fc.Arbitrary<inbound.Network> = fc
  .record({ cidr: fc.constantFrom(...NETS), except: fc.array(fc.constantFrom(...NETS), { maxLength: 2 }) })
  .map(({ cidr, except }) => ({ net: ipNetworkFromString(cidr), except: except.map(ipNetworkFromString) }));

const authnArb: fc.Arbitrary<inbound.Authn | undefined> = rare(
  fc.oneof(
    fc.constant<inbound.Authn>({ permit: { $case: "unauthenticated", value: {} } }),
    fc.constant<inbound.Authn>({
      permit: { $case: "meshTLS", value: { clients: { $case: "unauthenticated", value: {} } } },
    }),
    fc.record({ ids: fc.subarray(IDENTITIES), suffixes: fc.subarray(SUFFIXES) }).map(
      ({ ids, suffixes }): inbound.Authn => ({
        permit: {
          $case: "meshTLS",
          value: {
            clients: {
              $case: "identities",
              value: {
                identities: ids.map((name) => ({ name })),
                suffixes: suffixes.map((parts) => ({ parts })),
              },
            },
          },
        },
      }),
    ),
  ),
  fc.constant(undefined),
);

const authzMetaArb = fc.oneof(
  fc
    .constantFrom("all-unauthenticated", "audit", "probe")
    .map((name) => ({ kind: { $case: "default" as const, value: name } })),
  fc.constantFrom("a1", "a2", "a3").map((name) => ({
    kind: {
      $case: "resource" as const,
      value: {
        group: "policy.linkerd.io",
        kind: "authorizationpolicy",
        name,
        namespace: "",
        section: "",
        port: 0,
      },
    },
  })),
);

export const authzArb: fc.Arbitrary<inbound.Authz> = fc
  .record({
    networks: rare(fc.array(networkArb, { minLength: 1, maxLength: 3 }), fc.constant<inbound.Network[]>([])),
    authentication: authnArb,
    metadata: authzMetaArb,
  })
  .map((a) => ({ ...a, labels: {} }));

const hostArb: fc.Arbitrary<httpRoute.HostMatch> = fc.oneof(
  fc.constantFrom("example.com", "Example.COM", "a.example.com", "example.com.", "bar.org").map((value) => ({
    match: { $case: "exact" as const, value },
  })),
  fc
    .constantFrom<string[]>(["com", "example"], ["org"], [], ["", "com"], ["com", "example", "a"])
    .map((reverseLabels) => ({
      match: { $case: "suffix" as const, value: { reverseLabels: [...reverseLabels] } },
    })),
);

const pathArb: fc.Arbitrary<httpRoute.PathMatch> = fc.oneof<fc.Arbitrary<httpRoute.PathMatch>[]>(
  fc
    .constantFrom("/", "/a", "/a/", "/a/b", "/api", "/api/v1", "/svc.Foo/Get")
    .map((value) => ({ kind: { $case: "exact" as const, value } })),
  fc
    .constantFrom("/", "/a", "/a/", "/api", "/api/v1/", "/svc.Foo", "", "//")
    .map((value) => ({ kind: { $case: "prefix" as const, value } })),
  rare(
    fc
      .constantFrom("/a/[a-z]+", "/api/.*", "/a|/a/b", "/svc\\.Foo/.*", "(?i)/API.*")
      .map((value) => ({ kind: { $case: "regex" as const, value } })),
    fc.constant<httpRoute.PathMatch>({ kind: { $case: "regex", value: "(" } }),
  ),
);

const headerMatchArb: fc.Arbitrary<httpRoute.HeaderMatch> = fc.record({
  name: fc.constantFrom("x-a", "X-B"),
  value: fc.oneof(
    fc.constantFrom("1", "2", "").map((v) => ({ $case: "exact" as const, value: Buffer.from(v) })),
    fc.constantFrom("[0-9]+", "1|12", ".*").map((v) => ({ $case: "regex" as const, value: v })),
  ),
});

const queryMatchArb: fc.Arbitrary<httpRoute.QueryParamMatch> = fc.record({
  name: fc.constantFrom("a", "b c"),
  value: fc.oneof(
    fc.constantFrom("1", "2", "").map((v) => ({ $case: "exact" as const, value: v })),
    fc.constantFrom("1+", "[a-z]*").map((v) => ({ $case: "regex" as const, value: v })),
  ),
});

const methodArb = fc.oneof(
  fc.constantFrom(0, 1, 7).map((value) => ({ type: { $case: "registered" as const, value } })),
  fc.constant({ type: { $case: "unregistered" as const, value: "PURGE" } }),
);

const httpMatchArb: fc.Arbitrary<httpRoute.HttpRouteMatch> = fc.record({
  path: fc.option(pathArb, { nil: undefined }),
  headers: fc.array(headerMatchArb, { maxLength: 2 }),
  queryParams: fc.array(queryMatchArb, { maxLength: 2 }),
  method: fc.option(methodArb, { nil: undefined }),
});

const httpFilterArb: fc.Arbitrary<inbound.HttpRoute_Filter> = fc.oneof<
  fc.Arbitrary<inbound.HttpRoute_Filter>[]
>(
  fc.constant<inbound.HttpRoute_Filter>({ kind: undefined }),
  fc.constant<inbound.HttpRoute_Filter>({
    kind: {
      $case: "requestHeaderModifier" as const,
      value: {
        add: { headers: [{ name: "x-added", value: Buffer.from("1") }] },
        set: undefined,
        remove: ["x-a"],
      },
    },
  }),
  fc
    .record({
      host: fc.constantFrom("", "redirect.example"),
      port: fc.constantFrom(0, 8080),
      path: fc.constantFrom(
        undefined,
        { replace: { $case: "full" as const, value: "/x" } },
        { replace: { $case: "prefix" as const, value: "/y" } },
      ),
      status: fc.constantFrom(0, 302),
    })
    .map(({ host, port, path, status }) => ({
      kind: { $case: "redirect" as const, value: { scheme: undefined, host, port, path, status } },
    })),
  fc.constant({
    kind: {
      $case: "failureInjector" as const,
      value: { status: 500, message: "boom", ratio: { numerator: 0, denominator: 1 } },
    },
  }),
);

const routeMeta = (i: number, grpc: boolean) => ({
  kind: {
    $case: "resource" as const,
    value: {
      group: grpc ? "gateway.networking.k8s.io" : "policy.linkerd.io",
      kind: grpc ? "GRPCRoute" : "HTTPRoute",
      name: `r${i}`,
      namespace: "",
      section: "",
      port: 0,
    },
  },
});

export const httpRoutesArb: fc.Arbitrary<inbound.HttpRoute[]> = fc
  .array(
    fc.record({
      hosts: fc.array(hostArb, { maxLength: 2 }),
      authorizations: fc.array(authzArb, { maxLength: 2 }),
      rules: fc.array(
        fc.record({
          matches: fc.array(httpMatchArb, { maxLength: 3 }),
          filters: fc.array(httpFilterArb, { maxLength: 2 }),
        }),
        { maxLength: 3 },
      ),
      dropMetadata: rare(fc.constant(false), fc.constant(true)),
    }),
    { maxLength: 4 },
  )
  .map((routes) =>
    routes.map(({ dropMetadata, ...r }, i) => ({
      ...r,
      metadata: dropMetadata ? undefined : routeMeta(i, false),
    })),
  );

const grpcMatchArb: fc.Arbitrary<grpcRoute.GrpcRouteMatch> = fc.record({
  rpc: fc.option(
    fc.record({
      service: fc.constantFrom("", "svc.Foo", "svc.Bar"),
      method: fc.constantFrom("", "Get", "List"),
    }),
    { nil: undefined },
  ),
  headers: fc.array(headerMatchArb, { maxLength: 1 }),
});

export const grpcRoutesArb: fc.Arbitrary<inbound.GrpcRoute[]> = fc
  .array(
    fc.record({
      hosts: fc.array(hostArb, { maxLength: 1 }),
      authorizations: fc.array(authzArb, { maxLength: 2 }),
      rules: fc.array(
        fc.record({
          matches: fc.array(grpcMatchArb, { maxLength: 3 }),
          filters: fc.constant<inbound.GrpcRoute_Filter[]>([]),
        }),
        {
          maxLength: 3,
        },
      ),
    }),
    { maxLength: 4 },
  )
  .map((routes) => routes.map((r, i) => ({ ...r, metadata: routeMeta(i, true) })));

const protocolArb: fc.Arbitrary<inbound.ProxyProtocol | undefined> = rare(
  fc.oneof(
    {
      weight: 4,
      arbitrary: httpRoutesArb.map((httpRoutes) => ({
        kind: {
          $case: "detect" as const,
          value: { timeout: { seconds: 10n, nanos: 0 }, httpRoutes, httpLocalRateLimit: undefined },
        },
      })),
    },
    httpRoutesArb.map((routes) => ({
      kind: { $case: "http1" as const, value: { routes, localRateLimit: undefined } },
    })),
    httpRoutesArb.map((routes) => ({
      kind: { $case: "http2" as const, value: { routes, localRateLimit: undefined } },
    })),
    {
      weight: 3,
      arbitrary: grpcRoutesArb.map((routes) => ({ kind: { $case: "grpc" as const, value: { routes } } })),
    },
    fc.constant({ kind: { $case: "opaque" as const, value: {} } }),
    fc.constant({ kind: { $case: "tls" as const, value: {} } }),
  ),
  fc.constantFrom<inbound.ProxyProtocol | undefined>(undefined, { kind: undefined }),
);

export const serverArb: fc.Arbitrary<inbound.Server> = fc.record({
  protocol: protocolArb,
  serverIps: fc.constant([]),
  authorizations: fc.array(authzArb, { maxLength: 3 }),
  labels: rare(
    fc.constantFrom<Record<string, string>>(
      { group: "policy.linkerd.io", kind: "server", name: "web" },
      { group: "", kind: "default", name: "all-unauthenticated" },
      { name: "default:deny" },
    ),
    fc.constant<Record<string, string>>({ kind: "server" }),
  ),
});

export const clientArb: fc.Arbitrary<RefClient> = fc
  .record({
    address: fc.constantFrom(
      "10.1.2.3",
      "10.2.0.1",
      "127.0.0.1",
      "::1",
      "::ffff:10.1.2.3",
      "192.168.1.5",
      "fd00::5",
      "8.8.8.8",
    ),
    tls: fc.constantFrom<"none" | "established">("none", "established"),
    identity: fc.option(fc.constantFrom(...IDENTITIES, SA("a").toUpperCase()), { nil: undefined }),
  })
  .map(({ address, tls, identity }) =>
    tls === "established" && identity !== undefined ? { address, tls, identity } : { address, tls },
  );

const headerValueArb = fc.option(
  // Repeated headers (arrays) and single values holding a comma: Node joins the former with ", ", so
  // the two look alike in req.headers and only the raw list tells them apart.
  fc.constantFrom<string | string[]>("1", "2", "12", ["1", "3"], ["3", "12"], "", "1, 3", ["1, 3", "2"]),
  {
    nil: undefined,
  },
);

export const requestArb: fc.Arbitrary<RefRequest> = fc
  .record({
    method: fc.constantFrom("GET", "POST", "HEAD", "PURGE", "get"),
    authority: fc.option(
      fc.constantFrom(
        "example.com",
        "EXAMPLE.COM:8080",
        "a.example.com",
        "a.b.example.com.",
        "bar.org",
        "x.org",
        "example.com.",
        "",
      ),
      { nil: undefined },
    ),
    path: fc.constantFrom(
      "/",
      "/a",
      "/a/",
      "/a/b",
      "/a/b/",
      "/ab",
      "/api",
      "/api/v1",
      "/api/v1/x",
      "/svc.Foo/Get",
      "/svc.Bar/List",
      "/svc.Foo",
      "//",
      "",
    ),
    query: fc.constantFrom("", "a=1", "a=1&b+c=2", "a=%31", "b%20c=x&a=12", "a", "a=&a=2", "b+c=1"),
    xa: headerValueArb,
    xb: headerValueArb,
    client: clientArb,
  })
  .map(({ xa, xb, authority, ...rest }) => {
    const headers: Record<string, string | string[]> = {};
    if (xa !== undefined) headers["x-a"] = xa;
    if (xb !== undefined) headers["x-b"] = xb;
    return { ...rest, headers, ...(authority === undefined ? {} : { authority }) };
  });

/** Encodes a generated server; used as a seed for byte mutation. */
export function encodeServer(server: inbound.Server): Uint8Array {
  return inbound.Server.encode(server).finish();
}

/** An `HttpLocalRateLimit` with limits whose interval (1000 / rps ms) is exact, and overrides that overlap. */
export const rateLimitArb: fc.Arbitrary<inbound.HttpLocalRateLimit> = fc
  .record({
    total: fc.constantFrom(0, 0, 1, 2, 4, 5),
    identity: fc.constantFrom(0, 1, 2, 4, 5),
    overrides: fc.array(
      fc.record({
        rps: fc.constantFrom(0, 1, 2, 4),
        identities: fc.subarray([...IDENTITIES, SA("b").toUpperCase()], { maxLength: 3 }),
      }),
      { maxLength: 3 },
    ),
  })
  .map(({ total, identity, overrides }) =>
    inbound.HttpLocalRateLimit.fromPartial({
      metadata: {
        kind: {
          $case: "resource",
          value: { group: "policy.linkerd.io", kind: "HTTPLocalRateLimitPolicy", name: "rl" },
        },
      },
      ...(total === 0 ? {} : { total: { requestsPerSecond: total } }),
      ...(identity === 0 ? {} : { identity: { requestsPerSecond: identity } }),
      overrides: overrides.map((o) => ({
        limit: { requestsPerSecond: o.rps },
        clients: { identities: o.identities.map((name) => ({ name })) },
      })),
    }),
  );
