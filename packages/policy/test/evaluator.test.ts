import { parseIpAddress } from "@inmesh/core";
import type { inbound } from "@inmesh/proto";
import { describe, expect, it } from "vitest";
import { clientFacts, compileServerPolicy, type HttpDecision } from "../src/index.js";
import {
  ANON_TLS,
  authz,
  exactHost,
  facts,
  grpcRouteMsg,
  httpRouteMsg,
  MESH,
  PLAIN,
  pathExact,
  pathPrefix,
  pathRegex,
  peer,
  request,
  rpc,
  SA,
  serverMsg,
  suffixHost,
} from "./builders.js";
import {
  type RefClient,
  type RefRequest,
  refAuthorizeConnection,
  refAuthorizeHttp,
} from "./reference-evaluator.js";

/** Evaluates with the compiled evaluator, checks the reference agrees, returns the compiled decision. */
function decide(server: inbound.Server, req: RefRequest): HttpDecision {
  const policy = compileServerPolicy(server);
  const decision = policy.authorizeHttp(facts(req));
  const ref = refAuthorizeHttp(server, req);
  expect({ allowed: decision.allowed, reason: decision.reason ?? undefined }).toEqual({
    allowed: ref.allowed,
    reason: ref.allowed ? undefined : ref.reason,
  });
  expect(decision.route).toEqual(ref.route);
  if (ref.allowed) expect(decision.authz).toEqual(ref.authz);
  return decision;
}

function connection(server: inbound.Server, client: RefClient) {
  const decision = compileServerPolicy(server).authorizeConnection(clientFacts(client.address, peer(client)));
  const ref = refAuthorizeConnection(server, client);
  expect(decision.allowed).toBe(ref.allowed);
  if (ref.allowed) expect(decision.authz).toEqual(ref.authz);
  else expect(decision.reason).toBe(ref.reason);
  return decision;
}

const route = (name: string) => ({ group: "policy.linkerd.io", kind: "HTTPRoute", name });
const ap = (name: string) => ({ group: "policy.linkerd.io", kind: "authorizationpolicy", name });
const dflt = (name: string) => ({ group: "", kind: "default", name });

describe("conversion from inbound.Server (§8.1)", () => {
  it("adds the implicit localhost authorization (127.0.0.1/32 and ::1/128 only)", () => {
    const server = serverMsg({ authorizations: [] });
    expect(decide(server, request({ client: PLAIN("127.0.0.1") })).authz).toEqual(dflt("localhost"));
    expect(decide(server, request({ client: PLAIN("::1") })).authz).toEqual(dflt("localhost"));
    expect(decide(server, request({ client: PLAIN("::ffff:127.0.0.1") })).authz).toEqual(dflt("localhost"));
    // Only those two addresses, not the whole loopback range.
    expect(decide(server, request({ client: PLAIN("127.0.0.2") })).reason).toBe("unauthorized");
    expect(connection(server, PLAIN("127.0.0.1")).allowed).toBe(true);
  });

  it("synthesizes a catch-all `default` route when a protocol with routes has none", () => {
    for (const kind of ["detect", "http1", "http2"] as const) {
      const server = serverMsg({ protocol: { kind }, authorizations: [authz({ name: "all" })] });
      const d = decide(server, request({ method: "DELETE", path: "/anything/at/all" }));
      expect(d).toMatchObject({ allowed: true, route: dflt("default"), authz: ap("all"), routeKind: "http" });
    }
    const grpc = serverMsg({ protocol: { kind: "grpc" }, authorizations: [authz({ name: "all" })] });
    // The synthesized route has no matches at all, so even a GET that is not an RPC path reaches it.
    expect(decide(grpc, request({ method: "GET", path: "/" }))).toMatchObject({
      allowed: true,
      routeKind: "grpc",
    });
  });

  it("extends each route's authorizations with the server's (route first)", () => {
    const server = serverMsg({
      authorizations: [authz({ name: "server-level", authn: { identities: [SA("b")] } })],
      protocol: {
        kind: "detect",
        routes: [
          httpRouteMsg({
            name: "r",
            authorizations: [authz({ name: "route-level", authn: { identities: [SA("a")] } })],
          }),
        ],
      },
    });
    expect(decide(server, request({ client: MESH("10.0.0.1", SA("a")) })).authz).toEqual(ap("route-level"));
    expect(decide(server, request({ client: MESH("10.0.0.1", SA("b")) })).authz).toEqual(ap("server-level"));
    expect(decide(server, request({ client: MESH("10.0.0.1", SA("c")) })).reason).toBe("unauthorized");
    // Non-HTTP traffic sees only the server-level list.
    expect(connection(server, MESH("10.0.0.1", SA("a"))).allowed).toBe(false);
    expect(connection(server, MESH("10.0.0.1", SA("b"))).authz).toEqual(ap("server-level"));
  });

  it("reads server and authorization labels the way the proxy does when metadata is absent", () => {
    const server = serverMsg({ labels: { name: "default:deny" } });
    expect(compileServerPolicy(server).server).toEqual(dflt("deny"));
    expect(compileServerPolicy(serverMsg({ labels: { name: "web" } })).server).toEqual({
      group: "policy.linkerd.io",
      kind: "server",
      name: "web",
    });
    expect(
      compileServerPolicy(serverMsg({ labels: { group: "", kind: "default", name: "all" } })).server,
    ).toEqual(dflt("all"));
    const legacy = authz({ name: "x" });
    legacy.metadata = undefined;
    legacy.labels = { name: "legacy" };
    const d = decide(serverMsg({ authorizations: [legacy] }), request({}));
    expect(d.authz).toEqual({ group: "policy.linkerd.io", kind: "serverauthorization", name: "legacy" });
  });

  const invalidCases: [string, () => inbound.Server, boolean][] = [
    ["missing protocol", () => ({ ...serverMsg({}), protocol: undefined }), true],
    ["unknown protocol (empty oneof)", () => ({ ...serverMsg({}), protocol: { kind: undefined } }), true],
    [
      "an authorization without networks",
      () => serverMsg({ authorizations: [authz({ networks: [] })] }),
      true,
    ],
    [
      "an authorization without authentication",
      () => serverMsg({ authorizations: [authz({ authn: undefined })] }),
      true,
    ],
    [
      "meshTLS without clients",
      () => {
        const a = authz({});
        a.authentication = { permit: { $case: "meshTLS", value: { clients: undefined } } };
        return serverMsg({ authorizations: [a] });
      },
      true,
    ],
    [
      "a network without net",
      () => {
        const a = authz({});
        a.networks = [{ net: undefined, except: [] }];
        return serverMsg({ authorizations: [a] });
      },
      true,
    ],
    [
      "an IPv4 prefix longer than 32",
      () => {
        const a = authz({});
        a.networks = [{ net: { ip: { ip: { $case: "ipv4", value: 1 } }, prefixLen: 33 }, except: [] }];
        return serverMsg({ authorizations: [a] });
      },
      true,
    ],
    [
      "an IPv6 prefix longer than 128 in an except",
      () => {
        const a = authz({});
        a.networks = [
          {
            net: { ip: { ip: { $case: "ipv6", value: { first: 0n, last: 0n } } }, prefixLen: 0 },
            except: [{ ip: { ip: { $case: "ipv6", value: { first: 0n, last: 1n } } }, prefixLen: 129 }],
          },
        ];
        return serverMsg({ authorizations: [a] });
      },
      true,
    ],
    [
      "an address without an IP",
      () => {
        const a = authz({});
        a.networks = [{ net: { ip: { ip: undefined }, prefixLen: 0 }, except: [] }];
        return serverMsg({ authorizations: [a] });
      },
      true,
    ],
    [
      "authorization metadata without a kind",
      () => {
        const a = authz({});
        a.metadata = { kind: undefined };
        return serverMsg({ authorizations: [a] });
      },
      true,
    ],
    [
      "authorization labels without a name",
      () => {
        const a = authz({});
        a.metadata = undefined;
        a.labels = { kind: "x" };
        return serverMsg({ authorizations: [a] });
      },
      true,
    ],
    ["server labels without a name", () => serverMsg({ labels: { group: "g", kind: "k" } }), true],
    [
      "a detect protocol without timeout",
      () => {
        const s = serverMsg({});
        if (s.protocol?.kind?.$case === "detect") s.protocol.kind.value.timeout = undefined;
        return s;
      },
      true,
    ],
    [
      "a negative detect timeout",
      () => {
        const s = serverMsg({});
        if (s.protocol?.kind?.$case === "detect") s.protocol.kind.value.timeout = { seconds: -1n, nanos: 0 };
        return s;
      },
      true,
    ],
    [
      "a route without metadata",
      () => {
        const r = httpRouteMsg({ name: "r" });
        r.metadata = undefined;
        return serverMsg({ protocol: { kind: "detect", routes: [r] } });
      },
      true,
    ],
    [
      "a bad path regex",
      () =>
        serverMsg({
          protocol: {
            kind: "http1",
            routes: [httpRouteMsg({ name: "r", rules: [{ matches: [pathRegex("(")] }] })],
          },
        }),
      true,
    ],
    [
      "a look-behind regex (Rust refuses it too)",
      () =>
        serverMsg({
          protocol: {
            kind: "http1",
            routes: [httpRouteMsg({ name: "r", rules: [{ matches: [pathRegex("(?<=a)b")] }] })],
          },
        }),
      true,
    ],
    [
      "a route authorization without networks",
      () =>
        serverMsg({
          protocol: {
            kind: "detect",
            routes: [httpRouteMsg({ name: "r", authorizations: [authz({ networks: [] })] })],
          },
        }),
      true,
    ],
    [
      "a host match without a match",
      () =>
        serverMsg({
          protocol: { kind: "detect", routes: [httpRouteMsg({ name: "r", hosts: [{ match: undefined }] })] },
        }),
      true,
    ],
    [
      "a path match without a kind",
      () =>
        serverMsg({
          protocol: {
            kind: "detect",
            routes: [
              httpRouteMsg({
                name: "r",
                rules: [
                  {
                    matches: [{ path: { kind: undefined }, headers: [], queryParams: [], method: undefined }],
                  },
                ],
              }),
            ],
          },
        }),
      true,
    ],
    ...(
      [
        ["an invalid header name", { name: "bad name", value: { $case: "exact", value: Buffer.from("x") } }],
        ["a header match without value", { name: "x-a", value: undefined }],
        [
          "a header value with a newline",
          { name: "x-a", value: { $case: "exact", value: Buffer.from("a\nb") } },
        ],
        ["a bad header regex", { name: "x-a", value: { $case: "regex", value: "[" } }],
      ] as const
    ).map(([label, header]): [string, () => inbound.Server, boolean] => [
      label,
      () =>
        serverMsg({
          protocol: {
            kind: "detect",
            routes: [
              httpRouteMsg({
                name: "r",
                rules: [
                  {
                    matches: [
                      { path: undefined, headers: [header as never], queryParams: [], method: undefined },
                    ],
                  },
                ],
              }),
            ],
          },
        }),
      true,
    ]),
    ...(
      [
        ["an empty query param name", { name: "", value: { $case: "exact", value: "1" } }],
        ["a query param without value", { name: "a", value: undefined }],
        ["a bad query regex", { name: "a", value: { $case: "regex", value: "(" } }],
      ] as const
    ).map(([label, query]): [string, () => inbound.Server, boolean] => [
      label,
      () =>
        serverMsg({
          protocol: {
            kind: "detect",
            routes: [
              httpRouteMsg({
                name: "r",
                rules: [
                  {
                    matches: [
                      { path: undefined, headers: [], queryParams: [query as never], method: undefined },
                    ],
                  },
                ],
              }),
            ],
          },
        }),
      true,
    ]),
    ...(
      [
        ["an unknown registered method", { type: { $case: "registered", value: 42 } }],
        [
          "an unregistered method that is not a token",
          { type: { $case: "unregistered", value: "BAD METHOD" } },
        ],
        ["a method without a type", { type: undefined }],
      ] as const
    ).map(([label, method]): [string, () => inbound.Server, boolean] => [
      label,
      () =>
        serverMsg({
          protocol: {
            kind: "detect",
            routes: [
              httpRouteMsg({
                name: "r",
                rules: [
                  { matches: [{ path: undefined, headers: [], queryParams: [], method: method as never }] },
                ],
              }),
            ],
          },
        }),
      true,
    ]),
    ...(
      [
        [
          "a failure injector with status 42",
          { $case: "failureInjector", value: { status: 42, message: "", ratio: undefined } },
          true,
        ],
        [
          "a failure injector with a zero denominator",
          {
            $case: "failureInjector",
            value: { status: 500, message: "", ratio: { numerator: 0, denominator: 0 } },
          },
          true,
        ],
        [
          "a failure injector with numerator > denominator",
          {
            $case: "failureInjector",
            value: { status: 500, message: "", ratio: { numerator: 3, denominator: 2 } },
          },
          true,
        ],
        [
          "a redirect port above 65535",
          {
            $case: "redirect",
            value: { scheme: undefined, host: "", path: undefined, port: 70000, status: 0 },
          },
          false,
        ],
        [
          "a redirect status of 42",
          { $case: "redirect", value: { scheme: undefined, host: "", path: undefined, port: 0, status: 42 } },
          false,
        ],
        [
          "a relative full-path redirect",
          {
            $case: "redirect",
            value: {
              scheme: undefined,
              host: "",
              path: { replace: { $case: "full", value: "x" } },
              port: 0,
              status: 0,
            },
          },
          false,
        ],
        [
          "a redirect with an unknown registered scheme",
          {
            $case: "redirect",
            value: {
              scheme: { type: { $case: "registered", value: 7 } },
              host: "",
              path: undefined,
              port: 0,
              status: 0,
            },
          },
          false,
        ],
        [
          "a redirect to a host with spaces",
          {
            $case: "redirect",
            value: { scheme: undefined, host: "a b", path: undefined, port: 0, status: 0 },
          },
          false,
        ],
        [
          "a header modifier with a bad name",
          {
            $case: "requestHeaderModifier",
            value: {
              add: { headers: [{ name: "a:b", value: Buffer.from("1") }] },
              set: undefined,
              remove: [],
            },
          },
          false,
        ],
      ] as const
    ).map(([label, kind, checkedByReference]): [string, () => inbound.Server, boolean] => [
      label,
      () =>
        serverMsg({
          protocol: {
            kind: "detect",
            routes: [
              httpRouteMsg({ name: "r", rules: [{ matches: [], filters: [{ kind: kind as never }] }] }),
            ],
          },
        }),
      checkedByReference,
    ]),
    [
      "a gRPC failure injector with code > 65535",
      () =>
        serverMsg({
          protocol: {
            kind: "grpc",
            routes: [
              grpcRouteMsg({
                name: "g",
                rules: [
                  {
                    matches: [],
                    filters: [
                      {
                        kind: {
                          $case: "failureInjector",
                          value: { code: 70000, message: "", ratio: undefined },
                        },
                      },
                    ],
                  },
                ],
              }),
            ],
          },
        }),
      true,
    ],
  ];

  it.each(invalidCases)(
    "%s → the invalid policy (403 / gRPC 7, all connections closed incl. localhost)",
    (_, build, byRef) => {
      const server = build();
      const policy = compileServerPolicy(server, { port: 8080 });
      expect(policy.status).toBe("invalid");
      expect(policy.port).toBe(8080);
      expect(policy.invalidReason).toEqual(expect.any(String));
      expect(policy.server).toEqual(dflt("invalid"));
      const d = policy.authorizeHttp(facts(request({ client: PLAIN("127.0.0.1") })));
      expect(d).toMatchObject({ allowed: false, reason: "invalid-policy", httpStatus: 403, grpcStatus: 7 });
      expect(d.route).toEqual(dflt("invalid"));
      expect(policy.authorizeConnection(clientFacts("127.0.0.1", peer(PLAIN("127.0.0.1"))))).toMatchObject({
        allowed: false,
        reason: "invalid-policy",
      });
      if (byRef)
        expect(refAuthorizeHttp(server, request({ client: PLAIN("127.0.0.1") }))).toMatchObject({
          reason: "invalid-policy",
        });
    },
  );

  it("an empty filter (unknown kind on the wire) is an internal-error filter, not an invalid server", () => {
    const server = serverMsg({
      authorizations: [authz({})],
      protocol: {
        kind: "detect",
        routes: [httpRouteMsg({ name: "r", rules: [{ matches: [], filters: [{ kind: undefined }] }] })],
      },
    });
    const d = decide(server, request({}));
    expect(d.allowed && d.filters).toEqual([
      { kind: "internal-error", message: "server policy configured with unknown filter" },
    ]);
  });
});

describe("the authorization predicate (§8.3)", () => {
  const withAuthz = (...authorizations: inbound.Authz[]) => serverMsg({ authorizations });

  it("matches networks minus their own excepts; another network can still match", () => {
    const server = withAuthz(
      authz({ name: "a", networks: [{ cidr: "10.0.0.0/8", except: ["10.1.0.0/16"] }, "10.1.2.0/24"] }),
    );
    expect(decide(server, request({ client: PLAIN("10.2.3.4") })).allowed).toBe(true);
    expect(decide(server, request({ client: PLAIN("10.1.9.9") })).allowed).toBe(false);
    expect(decide(server, request({ client: PLAIN("10.1.2.3") })).allowed).toBe(true);
    expect(decide(server, request({ client: PLAIN("::ffff:10.1.9.9") })).allowed).toBe(false);
  });

  it("never matches across address families", () => {
    expect(
      decide(withAuthz(authz({ networks: ["::/0"] })), request({ client: PLAIN("10.0.0.1") })).allowed,
    ).toBe(false);
    expect(
      decide(withAuthz(authz({ networks: ["0.0.0.0/0"] })), request({ client: PLAIN("fd00::1") })).allowed,
    ).toBe(false);
    expect(
      decide(withAuthz(authz({ networks: ["fd00::/8"] })), request({ client: PLAIN("fd00::1") })).allowed,
    ).toBe(true);
  });

  it("unauthenticated admits plaintext and TLS alike", () => {
    const server = withAuthz(authz({ authn: "unauthenticated" }));
    for (const client of [PLAIN("10.0.0.1"), ANON_TLS("10.0.0.1"), MESH("10.0.0.1", SA("a"))]) {
      expect(decide(server, request({ client })).allowed).toBe(true);
    }
  });

  it("meshTLS unauthenticated needs TLS terminated here, certificate or not", () => {
    const server = withAuthz(authz({ authn: "tls-unauthenticated" }));
    expect(decide(server, request({ client: PLAIN("10.0.0.1") })).allowed).toBe(false);
    expect(decide(server, request({ client: ANON_TLS("10.0.0.1") })).allowed).toBe(true);
    expect(decide(server, request({ client: MESH("10.0.0.1", SA("a")) })).allowed).toBe(true);
    const passthru = compileServerPolicy(server).authorizeHttp({
      ...facts(request({})),
      client: clientFacts("10.0.0.1", { kind: "none", reason: "passthru" }),
    });
    expect(passthru.allowed).toBe(false);
  });

  it("identities match exactly against the lower-cased DNS identity", () => {
    const server = withAuthz(authz({ authn: { identities: [SA("a"), "Upper.Case.Id"] } }));
    expect(decide(server, request({ client: MESH("10.0.0.1", SA("a")) })).allowed).toBe(true);
    expect(decide(server, request({ client: MESH("10.0.0.1", SA("a").toUpperCase()) })).allowed).toBe(true);
    expect(decide(server, request({ client: MESH("10.0.0.1", "upper.case.id") })).allowed).toBe(false);
    expect(decide(server, request({ client: ANON_TLS("10.0.0.1") })).allowed).toBe(false);
    expect(decide(server, request({ client: PLAIN("10.0.0.1") })).allowed).toBe(false);
  });

  it("suffixes respect label boundaries", () => {
    const server = withAuthz(authz({ authn: { suffixes: [["id", "local"]] } }));
    expect(decide(server, request({ client: MESH("10.0.0.1", "a.id.local") })).allowed).toBe(true);
    expect(decide(server, request({ client: MESH("10.0.0.1", "b.a.id.local") })).allowed).toBe(true);
    expect(decide(server, request({ client: MESH("10.0.0.1", "id.local") })).allowed).toBe(false);
    expect(decide(server, request({ client: MESH("10.0.0.1", "a.xid.local") })).allowed).toBe(false);
  });

  it("the empty suffix (*) matches every DNS identity but no SPIFFE identity (§9.3)", () => {
    const server = withAuthz(authz({ authn: { suffixes: [[]] } }));
    expect(decide(server, request({ client: MESH("10.0.0.1", SA("any", "ns")) })).allowed).toBe(true);
    expect(
      decide(server, request({ client: MESH("10.0.0.1", "spiffe://cluster.local/ns/a/sa/b") })).allowed,
    ).toBe(false);
    const exactUri = withAuthz(
      authz({ authn: { identities: ["spiffe://cluster.local/ns/a/sa/b"], suffixes: [["local"]] } }),
    );
    expect(
      decide(exactUri, request({ client: MESH("10.0.0.1", "spiffe://cluster.local/ns/a/sa/b") })).allowed,
    ).toBe(true);
    expect(decide(exactUri, request({ client: MESH("10.0.0.1", "spiffe://x.local") })).allowed).toBe(false);
  });

  it("the first matching authorization names the decision", () => {
    const server = withAuthz(authz({ name: "first", networks: ["10.0.0.0/8"] }), authz({ name: "second" }));
    expect(decide(server, request({ client: PLAIN("10.0.0.1") })).authz).toEqual(ap("first"));
    expect(decide(server, request({ client: PLAIN("192.168.0.1") })).authz).toEqual(ap("second"));
  });

  it("a client whose address does not parse matches no network", () => {
    const policy = compileServerPolicy(withAuthz(authz({})));
    const d = policy.authorizeHttp({
      ...facts(request({})),
      client: clientFacts(undefined, peer(PLAIN(""))),
    });
    expect(d).toMatchObject({ allowed: false, reason: "unauthorized" });
  });

  it("marks the audit default as audit", () => {
    const server = withAuthz(authz({ defaultName: "audit" }));
    const d = decide(server, request({}));
    expect(d).toMatchObject({ allowed: true, audit: true, authz: dflt("audit") });
    expect(connection(server, PLAIN("10.0.0.1"))).toMatchObject({ allowed: true, audit: true });
  });
});

describe("choosing the route (§8.4)", () => {
  const all = [authz({ name: "all" })];
  const detect = (...routes: inbound.HttpRoute[]) =>
    serverMsg({ authorizations: all, protocol: { kind: "detect", routes } });

  it("scores hosts: exact > suffix > none, longer wins, and any host match beats any path", () => {
    const server = detect(
      httpRouteMsg({ name: "no-host", rules: [{ matches: [pathExact("/foo/bar")] }] }),
      httpRouteMsg({ name: "suffix", hosts: [suffixHost("*.example.com")] }),
      httpRouteMsg({ name: "longer-suffix", hosts: [suffixHost("*.foo.example.com")] }),
      httpRouteMsg({ name: "exact", hosts: [exactHost("a.foo.example.com")] }),
    );
    const at = (authority: string) => decide(server, request({ authority, path: "/foo/bar" })).route;
    expect(at("a.foo.example.com")).toEqual(route("exact"));
    expect(at("b.foo.example.com")).toEqual(route("longer-suffix"));
    expect(at("b.example.com")).toEqual(route("suffix"));
    expect(at("other.org")).toEqual(route("no-host"));
  });

  it("compares exact hosts case-insensitively, ignoring the port and one trailing dot", () => {
    const server = detect(httpRouteMsg({ name: "h", hosts: [exactHost("Example.COM")] }));
    for (const authority of ["example.com", "EXAMPLE.com:8080", "example.com.", "user@example.com:80"]) {
      expect(decide(server, request({ authority })).route).toEqual(route("h"));
    }
    expect(decide(server, request({ authority: "foo.example.com" })).reason).toBe("route-not-found");
    expect(decide(server, request({})).reason).toBe("route-not-found");
    const dotted = detect(httpRouteMsg({ name: "d", hosts: [exactHost("example.com.")] }));
    expect(decide(dotted, request({ authority: "example.com" })).reason).toBe("route-not-found");
    expect(decide(dotted, request({ authority: "example.com." })).route).toEqual(route("d"));
  });

  it("needs at least one extra label for a wildcard host", () => {
    const server = detect(httpRouteMsg({ name: "w", hosts: [suffixHost("*.example.com")] }));
    expect(decide(server, request({ authority: "example.com" })).reason).toBe("route-not-found");
    expect(decide(server, request({ authority: "a.b.EXAMPLE.com." })).route).toEqual(route("w"));
  });

  it("matches prefixes on whole segments", () => {
    const server = detect(httpRouteMsg({ name: "foo", rules: [{ matches: [pathPrefix("/foo")] }] }));
    for (const path of ["/foo", "/foo/", "/foo/bar"])
      expect(decide(server, request({ path })).allowed).toBe(true);
    expect(decide(server, request({ path: "/foobar" })).reason).toBe("route-not-found");
    const slash = detect(httpRouteMsg({ name: "s", rules: [{ matches: [pathPrefix("/foo/")] }] }));
    expect(decide(slash, request({ path: "/foo" })).allowed).toBe(true);
  });

  it("compares exact paths raw: /ready/ is not /ready", () => {
    const server = detect(httpRouteMsg({ name: "ready", rules: [{ matches: [pathExact("/ready")] }] }));
    expect(decide(server, request({ path: "/ready" })).allowed).toBe(true);
    expect(decide(server, request({ path: "/ready/" })).reason).toBe("route-not-found");
  });

  it("ties Exact and Prefix of equal length: the earlier route wins (§9.4)", () => {
    const exact = httpRouteMsg({ name: "exact", rules: [{ matches: [pathExact("/foo")] }] });
    const prefix = httpRouteMsg({ name: "prefix", rules: [{ matches: [pathPrefix("/foo")] }] });
    expect(decide(detect(exact, prefix), request({ path: "/foo" })).route).toEqual(route("exact"));
    expect(decide(detect(prefix, exact), request({ path: "/foo" })).route).toEqual(route("prefix"));
  });

  it("prefers the longer path match; a regex scores the whole path", () => {
    const server = detect(
      httpRouteMsg({ name: "short", rules: [{ matches: [pathPrefix("/foo")] }] }),
      httpRouteMsg({ name: "long", rules: [{ matches: [pathPrefix("/foo/bar")] }] }),
      httpRouteMsg({ name: "regex", rules: [{ matches: [pathRegex("/foo/\\d+")] }] }),
    );
    expect(decide(server, request({ path: "/foo/bar/baz" })).route).toEqual(route("long"));
    expect(decide(server, request({ path: "/foo/42" })).route).toEqual(route("regex"));
    expect(decide(server, request({ path: "/foo/4abc" })).route).toEqual(route("short"));
  });

  it("requires a regex's leftmost match to span the whole value", () => {
    const server = detect(httpRouteMsg({ name: "alt", rules: [{ matches: [pathRegex("/a|/ab")] }] }));
    expect(decide(server, request({ path: "/a" })).allowed).toBe(true);
    // Leftmost-first picks "/a" and stops: not a full match, unlike an anchored ^(?:/a|/ab)$.
    expect(decide(server, request({ path: "/ab" })).reason).toBe("route-not-found");
    const rust = detect(
      httpRouteMsg({ name: "named", rules: [{ matches: [pathRegex("(?i)/(?P<id>[a-z]+)\\z")] }] }),
    );
    expect(decide(rust, request({ path: "/ABC" })).allowed).toBe(true);
  });

  it("matches headers by lower-case name, any repeated value, exact bytes or anchored visible-ASCII regex", () => {
    const header = (
      name: string,
      value: { $case: "exact"; value: Buffer } | { $case: "regex"; value: string },
    ) =>
      detect(
        httpRouteMsg({
          name: "h",
          rules: [
            {
              matches: [{ path: undefined, headers: [{ name, value }], queryParams: [], method: undefined }],
            },
          ],
        }),
      );
    const exact = header("X-Foo", { $case: "exact", value: Buffer.from("bar") });
    expect(decide(exact, request({ headers: { "x-foo": "bar" } })).allowed).toBe(true);
    expect(decide(exact, request({ headers: { "x-foo": ["bah", "bar"] } })).allowed).toBe(true);
    expect(decide(exact, request({ headers: { "x-foo": "Bar" } })).allowed).toBe(false);
    const latin1 = header("x-l", { $case: "exact", value: Buffer.from([0xe9]) });
    expect(decide(latin1, request({ headers: { "x-l": "\u00e9" } })).allowed).toBe(true);
    const regex = header("x-n", { $case: "regex", value: "[0-9]+" });
    expect(decide(regex, request({ headers: { "x-n": "123" } })).allowed).toBe(true);
    expect(decide(regex, request({ headers: { "x-n": "123a" } })).allowed).toBe(false);
    const any = header("x-any", { $case: "regex", value: ".*" });
    expect(decide(any, request({ headers: { "x-any": "caf\u00e9" } })).allowed).toBe(false);
    // A lookup function works as well as a header object.
    const policy = compileServerPolicy(exact);
    const viaFunction = policy.authorizeHttp({
      ...facts(request({})),
      headers: (n) => (n === "x-foo" ? "bar" : null),
    });
    expect(viaFunction.allowed).toBe(true);
  });

  it("matches form-decoded query parameters; a missing query never matches", () => {
    const q = (value: { $case: "exact"; value: string } | { $case: "regex"; value: string }) =>
      detect(
        httpRouteMsg({
          name: "q",
          rules: [
            {
              matches: [
                { path: undefined, headers: [], queryParams: [{ name: "a b", value }], method: undefined },
              ],
            },
          ],
        }),
      );
    const exact = q({ $case: "exact", value: "1" });
    expect(decide(exact, request({ query: "a+b=1" })).allowed).toBe(true);
    expect(decide(exact, request({ query: "x=2&a%20b=%31" })).allowed).toBe(true);
    expect(decide(exact, request({ query: "a+b=2&a+b=1" })).allowed).toBe(true);
    expect(decide(exact, request({ query: "a+b=11" })).allowed).toBe(false);
    expect(decide(exact, request({ query: "" })).allowed).toBe(false);
    const regex = q({ $case: "regex", value: "ba?r" });
    expect(decide(regex, request({ query: "a+b=br" })).allowed).toBe(true);
    expect(decide(regex, request({ query: "a+b=barr" })).allowed).toBe(false);
    const emptyValue = detect(
      httpRouteMsg({
        name: "e",
        rules: [
          {
            matches: [
              {
                path: undefined,
                headers: [],
                queryParams: [{ name: "flag", value: { $case: "exact", value: "" } }],
                method: undefined,
              },
            ],
          },
        ],
      }),
    );
    expect(decide(emptyValue, request({ query: "flag" })).allowed).toBe(true);
  });

  it("breaks path ties by header count, then query-param count, then method", () => {
    const m = (o: Partial<{ headers: number; query: number; method: boolean }>) => ({
      path: { kind: { $case: "prefix" as const, value: "/" } },
      headers: Array.from({ length: o.headers ?? 0 }, (_, i) => ({
        name: `x-${i}`,
        value: { $case: "exact" as const, value: Buffer.from("1") },
      })),
      queryParams: Array.from({ length: o.query ?? 0 }, (_, i) => ({
        name: `q${i}`,
        value: { $case: "exact" as const, value: "1" },
      })),
      method: o.method ? { type: { $case: "registered" as const, value: 0 } } : undefined,
    });
    const req = request({ headers: { "x-0": "1", "x-1": "1" }, query: "q0=1&q1=1" });
    const server = detect(
      httpRouteMsg({ name: "method", rules: [{ matches: [m({ method: true })] }] }),
      httpRouteMsg({ name: "query", rules: [{ matches: [m({ query: 2 })] }] }),
      httpRouteMsg({ name: "header", rules: [{ matches: [m({ headers: 1 })] }] }),
    );
    expect(decide(server, req).route).toEqual(route("header"));
    const noHeaders = detect(
      httpRouteMsg({ name: "method", rules: [{ matches: [m({ method: true })] }] }),
      httpRouteMsg({ name: "query", rules: [{ matches: [m({ query: 1 })] }] }),
    );
    expect(decide(noHeaders, req).route).toEqual(route("query"));
    const methodOnly = detect(
      httpRouteMsg({ name: "plain", rules: [{ matches: [m({})] }] }),
      httpRouteMsg({ name: "method", rules: [{ matches: [m({ method: true })] }] }),
    );
    expect(decide(methodOnly, req).route).toEqual(route("method"));
  });

  it("matches methods exactly (registered and unregistered)", () => {
    const server = detect(
      httpRouteMsg({
        name: "purge",
        rules: [
          {
            matches: [
              {
                path: undefined,
                headers: [],
                queryParams: [],
                method: { type: { $case: "unregistered", value: "PURGE" } },
              },
            ],
          },
        ],
      }),
    );
    expect(decide(server, request({ method: "PURGE" })).allowed).toBe(true);
    expect(decide(server, request({ method: "purge" })).reason).toBe("route-not-found");
  });

  it("never matches a route without rules; earlier rules win ties inside a route", () => {
    const empty = httpRouteMsg({ name: "empty", rules: [] });
    expect(decide(detect(empty), request({})).reason).toBe("route-not-found");
    const twoRules = detect(
      httpRouteMsg({
        name: "r",
        rules: [
          { matches: [pathPrefix("/a")], filters: [{ kind: undefined }] },
          { matches: [pathPrefix("/a")] },
        ],
      }),
    );
    const d = decide(twoRules, request({ path: "/a" }));
    expect(d.allowed && d.filters.length).toBe(1);
  });

  it("answers 404 / gRPC 5 without a route and 403 / gRPC 7 without an authorization", () => {
    const server = serverMsg({
      protocol: {
        kind: "detect",
        routes: [httpRouteMsg({ name: "r", rules: [{ matches: [pathPrefix("/x")] }] })],
      },
    });
    expect(decide(server, request({ path: "/y" }))).toMatchObject({
      httpStatus: 404,
      grpcStatus: 5,
      route: undefined,
    });
    expect(decide(server, request({ path: "/x" }))).toMatchObject({
      httpStatus: 403,
      grpcStatus: 7,
      route: route("r"),
    });
  });

  it("returns the same frozen decision object every time", () => {
    const policy = compileServerPolicy(detect(httpRouteMsg({ name: "r" })));
    const f = facts(request({}));
    const a = policy.authorizeHttp(f);
    expect(policy.authorizeHttp(f)).toBe(a);
    expect(Object.isFrozen(a)).toBe(true);
  });
});

describe("gRPC routes", () => {
  const all = [authz({ name: "all" })];
  const grpc = (...routes: inbound.GrpcRoute[]) =>
    serverMsg({ authorizations: all, protocol: { kind: "grpc", routes } });
  const g = (name: string) => ({ group: "gateway.networking.k8s.io", kind: "GRPCRoute", name });

  it("matches POST /service/method only, scoring service then method length", () => {
    const server = grpc(
      grpcRouteMsg({ name: "any", rules: [{ matches: [rpc("", "")] }] }),
      grpcRouteMsg({ name: "service", rules: [{ matches: [rpc("books.Books", "")] }] }),
      grpcRouteMsg({ name: "method", rules: [{ matches: [rpc("", "List")] }] }),
      grpcRouteMsg({ name: "both", rules: [{ matches: [rpc("books.Books", "Get")] }] }),
    );
    const at = (path: string, method = "POST") => decide(server, request({ method, path }));
    expect(at("/books.Books/Get").route).toEqual(g("both"));
    expect(at("/books.Books/List").route).toEqual(g("service"));
    expect(at("/other.Svc/List").route).toEqual(g("method"));
    expect(at("/other.Svc/Get").route).toEqual(g("any"));
    expect(at("/books.Books/Get/extra").route).toEqual(g("both"));
    expect(at("/books.Books/Get", "GET").reason).toBe("route-not-found");
    expect(at("/books.Books").reason).toBe("route-not-found");
    expect(at("/books.Books/Get").routeKind).toBe("grpc");
  });

  it("a gRPC server never uses HTTP routes, and HTTP servers route gRPC requests by HTTP rules", () => {
    const httpServer = serverMsg({
      authorizations: all,
      protocol: {
        kind: "http2",
        routes: [httpRouteMsg({ name: "h", rules: [{ matches: [pathPrefix("/books.Books")] }] })],
      },
    });
    expect(decide(httpServer, request({ method: "POST", path: "/books.Books/Get" })).route).toEqual(
      route("h"),
    );
  });
});

describe("filters run only after authorization (§8.5, §9.7)", () => {
  it("an unauthorized request on a redirecting route gets 403", () => {
    const server = serverMsg({
      authorizations: [authz({ networks: ["192.168.0.0/16"] })],
      protocol: {
        kind: "detect",
        routes: [
          httpRouteMsg({
            name: "r",
            rules: [
              {
                matches: [],
                filters: [
                  {
                    kind: {
                      $case: "redirect",
                      value: { scheme: undefined, host: "elsewhere", path: undefined, port: 0, status: 302 },
                    },
                  },
                ],
              },
            ],
          }),
        ],
      },
    });
    expect(decide(server, request({ client: PLAIN("10.0.0.1") }))).toMatchObject({
      allowed: false,
      httpStatus: 403,
    });
    const allowed = decide(server, request({ client: PLAIN("192.168.1.1") }));
    expect(allowed.allowed && allowed.filters[0]?.kind).toBe("redirect");
  });
});

describe("surprises (§9) the proxy side must reproduce", () => {
  it("1. a Server with no authorizations denies everything but localhost", () => {
    const server = serverMsg({ authorizations: [] });
    expect(decide(server, request({ client: MESH("10.0.0.1", SA("a")) })).allowed).toBe(false);
    expect(decide(server, request({ client: PLAIN("127.0.0.1") })).allowed).toBe(true);
  });

  it("5. once routes are attached there is no catch-all route: unmatched paths are 404", () => {
    const server = serverMsg({
      authorizations: [authz({})],
      protocol: {
        kind: "detect",
        routes: [httpRouteMsg({ name: "api", rules: [{ matches: [pathPrefix("/api")] }] })],
      },
    });
    expect(decide(server, request({ path: "/ready" })).reason).toBe("route-not-found");
  });

  it("6. route authorizations add to the server's; connections see the server's only", () => {
    const server = serverMsg({
      authorizations: [],
      protocol: {
        kind: "detect",
        routes: [httpRouteMsg({ name: "r", authorizations: [authz({ name: "route-only" })] })],
      },
    });
    expect(decide(server, request({})).authz).toEqual(ap("route-only"));
    expect(connection(server, PLAIN("10.0.0.1")).allowed).toBe(false);
  });

  it("8. an invalid policy closes localhost too", () => {
    const policy = compileServerPolicy(serverMsg({ authorizations: [authz({ networks: [] })] }));
    expect(policy.authorizeConnection(clientFacts("127.0.0.1", peer(PLAIN("127.0.0.1")))).allowed).toBe(
      false,
    );
  });
});

describe("opaque and TLS servers", () => {
  it("authorize connections only; HTTP has no routes there", () => {
    for (const kind of ["opaque", "tls"] as const) {
      const server = serverMsg({ protocol: { kind }, authorizations: [authz({ networks: ["10.0.0.0/8"] })] });
      const policy = compileServerPolicy(server);
      expect(policy.perRequest).toBe(false);
      expect(policy.protocol).toBe(kind);
      expect(connection(server, PLAIN("10.0.0.1")).allowed).toBe(true);
      expect(connection(server, PLAIN("11.0.0.1")).allowed).toBe(false);
      expect(connection(server, PLAIN("127.0.0.1")).authz).toEqual(dflt("localhost"));
      expect(decide(server, request({})).reason).toBe("route-not-found");
    }
  });
});

describe("clientFacts", () => {
  it("converts IPv4-mapped IPv6, drops zones, lower-cases DNS identities, keeps URIs", () => {
    expect(clientFacts("::ffff:10.1.2.3", { kind: "none", reason: "no_tls_from_remote" })).toMatchObject({
      address: "10.1.2.3",
      family: 4,
      tlsEstablished: false,
      identity: undefined,
    });
    expect(clientFacts("fe80::1%eth0", { kind: "tls-anonymous", tls: "established" })).toMatchObject({
      address: "fe80::1",
      family: 6,
      tlsEstablished: true,
    });
    const mesh = clientFacts("10.0.0.1", { kind: "mesh", name: "A.B.C", tls: "established" });
    expect(mesh).toMatchObject({ identity: "a.b.c", identityKind: "dns", identitySuffixes: [".b.c", ".c"] });
    const uri = clientFacts("10.0.0.1", { kind: "mesh", name: "spiffe://Td/ns/x", tls: "established" });
    expect(uri).toMatchObject({ identity: "spiffe://Td/ns/x", identityKind: "uri", identitySuffixes: [] });
    expect(clientFacts("not an ip", { kind: "none", reason: "loopback" })).toMatchObject({
      family: undefined,
      address: "",
    });
  });

  it("reads dotted IPv4, plain or mapped, as the general IPv6 parser does", () => {
    const none = { kind: "none", reason: "no_tls_from_remote" } as const;
    const word = (ip: ReturnType<typeof parseIpAddress>) => Number((ip?.value ?? 0n) & 0xffffffffn);
    const words = [0, 1, 0x7f000001, 0x0a000001, 0xc0a80a0b, 0x80000000, 0xfffffffe, 0xffffffff];
    for (let i = 1; i <= 200; i += 1) words.push(Math.imul(i, 0x9e3779b1) >>> 0);
    for (const value of words) {
      const dotted = [value >>> 24, (value >>> 16) & 0xff, (value >>> 8) & 0xff, value & 0xff].join(".");
      expect(word(parseIpAddress(dotted))).toBe(value);
      for (const text of [dotted, `::ffff:${dotted}`, `::FFFF:${dotted}`, ` ${dotted} `]) {
        expect(clientFacts(text, none), text).toMatchObject({
          address: dotted,
          family: 4,
          ipWords: [value, 0, 0, 0],
        });
      }
      // Written any other way, the general parser reads the same address.
      expect(clientFacts(`0:0:0:0:0:ffff:${dotted}`, none)).toMatchObject({ address: dotted, family: 4 });
    }
    // Not dotted IPv4: left to the general parser, or to no address at all.
    expect(clientFacts("::ffff:10.1.2", none)).toMatchObject({ family: undefined, address: "" });
    expect(clientFacts("::fffe:10.1.2.3", none)).toMatchObject({ family: 6, address: "::fffe:a01:203" });
    expect(clientFacts("010.1.2.3", none)).toMatchObject({ family: undefined, address: "" });
    expect(clientFacts("::ffff:", none)).toMatchObject({ family: undefined, address: "" });
  });
});
