import { channel } from "node:diagnostics_channel";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { type ControlPlane, createCertificateAuthority } from "@inmesh/control-plane";
import type { InboundCallMessage } from "@inmesh/core";
import type { IdentityProvider } from "@inmesh/identity";
import {
  compileServerPolicy,
  defaultServerPolicy,
  invalidServerPolicy,
  NOT_LOADED_POLICY,
} from "@inmesh/policy";
import { encodeTransportHeader, inbound, TRANSPORT_HEADER_ALPN } from "@inmesh/proto";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  createMeshRequestAuthorizer,
  createMeshRequestListener,
  createMeshServer,
  type MeshAuthorization,
  type MeshServer,
  type MeshServerOptions,
  meshContext,
} from "../../src/index.js";
import {
  authz,
  type ClientCredentials,
  clientCredentials,
  closedWithoutBytes,
  h2Request,
  h2Session,
  httpRoute,
  identityOf,
  meshTlsSocket,
  plainSocket,
  podIdentity,
  podYaml,
  rawHttp1,
  serverMessage,
  startTestControlPlane,
} from "./support.js";

const FOO = identityOf("foo");
const BAR = identityOf("bar");
const BAZ = identityOf("baz");

/** The echo application: tells what it saw. */
function echo(req: IncomingMessage, res: ServerResponse): void {
  const context = meshContext(req);
  const rawClientIds: string[] = [];
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    if (req.rawHeaders[i]?.toLowerCase() === "l5d-client-id") rawClientIds.push(req.rawHeaders[i + 1] ?? "");
  }
  res.setHeader("content-type", "application/json");
  res.end(
    JSON.stringify({
      clientId: req.headers["l5d-client-id"] ?? null,
      distinct: req.headersDistinct["l5d-client-id"] ?? null,
      rawClientIds,
      peer: context?.peer,
      route: context?.route.name,
      authz: context?.authz.name,
      origProto: context?.origProto ?? null,
      httpVersion: req.httpVersion,
      host: req.headers.host ?? null,
      sameAsProperty: req.mesh === context,
    }),
  );
}

describe("createMeshServer (hand-built policies, identities from the dev control plane)", () => {
  let cp: ControlPlane;
  let identity: IdentityProvider;
  let bar: ClientCredentials;
  let baz: ClientCredentials;
  const servers: MeshServer[] = [];

  beforeAll(async () => {
    cp = await startTestControlPlane([
      { path: "pods.yaml", text: [podYaml({ name: "foo", sa: "foo", ip: "10.1.0.1" })].join("---\n") },
    ]);
    identity = await podIdentity(cp, "foo", "foo");
    bar = await clientCredentials(cp, "bar");
    baz = await clientCredentials(cp, "baz");
  });
  afterEach(async () => {
    await Promise.all(servers.splice(0).map((server) => server.close()));
  });
  afterAll(async () => {
    await identity?.close();
    await cp?.close();
  });

  async function serve(options: Partial<MeshServerOptions>): Promise<{ server: MeshServer; port: number }> {
    const server = createMeshServer({
      identity,
      policy: defaultServerPolicy("all-unauthenticated"),
      port: 8080,
      handler: echo,
      ...options,
    });
    servers.push(server);
    const address: AddressInfo = await server.listen(0, "127.0.0.1");
    return { server, port: address.port };
  }

  const onlyBar = () =>
    compileServerPolicy(serverMessage({ authorizations: [authz("bar-only", { identities: [BAR] })] }), {
      port: 8080,
    });

  it("serves plaintext HTTP/1 and strips every spoofed l5d-client-id variant", async () => {
    const { port } = await serve({});
    const response = await rawHttp1(
      plainSocket({ port }),
      "GET /hello HTTP/1.1\r\nHost: foo\r\nL5D-Client-Id: evil-1\r\nl5d-client-id: evil-2\r\nl5D-cLiEnT-iD:   evil-3  \r\nConnection: close\r\n\r\n",
    );
    expect(response.status).toBe(200);
    const seen = JSON.parse(response.body);
    expect(seen.clientId).toBeNull();
    expect(seen.distinct).toBeNull();
    expect(seen.rawClientIds).toEqual([]);
    // Inbound plaintext is `no_tls_from_remote` even from loopback (`loopback` is an outbound reason).
    expect(seen.peer).toEqual({ kind: "none", reason: "no_tls_from_remote" });
    expect(seen.sameAsProperty).toBe(true);
    expect(seen.route).toBe("default");
  });

  it("terminates mesh TLS (SNI = identity, no ALPN), verifies the client and sets l5d-client-id from it", async () => {
    const { port } = await serve({});
    const socket = meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, bar);
    const response = await rawHttp1(
      socket,
      `GET / HTTP/1.1\r\nHost: foo\r\nl5d-client-id: ${BAZ}\r\nL5D-CLIENT-ID: ${BAZ}\r\nConnection: close\r\n\r\n`,
    );
    expect(response.status).toBe(200);
    const seen = JSON.parse(response.body);
    expect(seen.clientId).toBe(BAR);
    expect(seen.distinct).toEqual([BAR]);
    expect(seen.rawClientIds).toEqual([BAR]);
    expect(seen.peer).toEqual({ kind: "mesh", name: BAR, tls: "established" });
  });

  it("serves prior-knowledge HTTP/2 over TLS without ALPN, downgrading l5d-orig-proto requests for the HTTP/1 handler", async () => {
    const { port } = await serve({});
    const session = h2Session(
      meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, bar),
      `https://${FOO}:${port}`,
    );
    try {
      const upgraded = await h2Request(session, {
        ":path": "/x?y=1",
        ":authority": "foo.default.svc.cluster.local:8080",
        "l5d-orig-proto": "HTTP/1.1",
        "l5d-client-id": "spoofed",
      });
      expect(upgraded.status).toBe(200);
      expect(upgraded.headers["l5d-orig-proto"]).toBe("HTTP/1.1");
      const seen = JSON.parse(upgraded.body);
      expect(seen).toMatchObject({
        clientId: BAR,
        rawClientIds: [BAR],
        origProto: "HTTP/1.1",
        httpVersion: "1.1",
        host: "foo.default.svc.cluster.local:8080",
      });

      const plain = await h2Request(session, { ":path": "/", ":method": "POST" }, "body");
      expect(plain.status).toBe(200);
      expect(plain.headers["l5d-orig-proto"]).toBeUndefined();
      expect(JSON.parse(plain.body).origProto).toBeNull();
    } finally {
      session.close();
    }
  });

  it("serves h2c (plaintext prior knowledge) with compat handlers when http2Compat is set", async () => {
    const { port } = await serve({
      http2Compat: true,
      handler: (req, res) => {
        res.end(JSON.stringify({ version: req.httpVersion, id: req.headers["l5d-client-id"] ?? null }));
      },
    });
    const session = h2Session(plainSocket({ port }), `http://127.0.0.1:${port}`);
    try {
      const response = await h2Request(session, { ":path": "/", "l5d-client-id": "x" });
      expect(response.status).toBe(200);
      expect(JSON.parse(response.body)).toEqual({ version: "2.0", id: null });
    } finally {
      session.close();
    }
  });

  it("answers denials as Linkerd: 403 (l5d-proxy-error only to meshed clients), gRPC 7 trailers-only", async () => {
    const { port } = await serve({ policy: onlyBar() });
    const plain = await rawHttp1(
      plainSocket({ port }),
      "GET / HTTP/1.1\r\nHost: foo\r\nConnection: close\r\n\r\n",
    );
    expect(plain.status).toBe(403);
    expect(plain.headers["content-length"]).toEqual(["0"]);
    expect(plain.headers["l5d-proxy-error"]).toBeUndefined();
    // Expect: 100-continue is not answered for a refused request: the body is never invited.
    const held = await rawHttp1(
      plainSocket({ port }),
      "POST / HTTP/1.1\r\nHost: foo\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    );
    expect(held.status).toBe(403);

    const other = await rawHttp1(
      meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, baz),
      "GET / HTTP/1.1\r\nHost: foo\r\nConnection: close\r\n\r\n",
    );
    expect(other.status).toBe(403);
    expect(other.headers["l5d-proxy-error"]?.[0]).toMatch(/unauthorized/);

    const allowed = await rawHttp1(
      meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, bar),
      "GET / HTTP/1.1\r\nHost: foo\r\nConnection: close\r\n\r\n",
    );
    expect(allowed.status).toBe(200);

    const session = h2Session(
      meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, baz),
      `https://${FOO}:${port}`,
    );
    try {
      const grpc = await h2Request(session, {
        ":method": "POST",
        ":path": "/pkg.Svc/Method",
        "content-type": "application/grpc",
      });
      expect(grpc.status).toBe(200);
      expect(grpc.headersOnly).toBe(true);
      expect(grpc.headers["grpc-status"]).toBe("7");
      expect(grpc.headers["grpc-message"]).toBeDefined();
    } finally {
      session.close();
    }
  });

  it("answers 404 / gRPC 5 when no route matches, and the route's narrower authorization wins", async () => {
    const policy = compileServerPolicy(
      serverMessage({
        authorizations: [authz("server-wide", "tls-unauthenticated")],
        routes: [
          httpRoute("admin", "/admin", [authz("admin-bar", { identities: [BAR] })]),
          httpRoute("api", "/api"),
        ],
      }),
      { port: 8080 },
    );
    const { port } = await serve({ policy });
    const get = (credentials: ClientCredentials | undefined, path: string) =>
      rawHttp1(
        meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, credentials),
        `GET ${path} HTTP/1.1\r\nHost: foo\r\nConnection: close\r\n\r\n`,
      );
    expect((await get(bar, "/nothing")).status).toBe(404);
    const api = await get(baz, "/api/x");
    expect(api.status).toBe(200);
    expect(JSON.parse(api.body)).toMatchObject({ route: "api", authz: "server-wide" });
    const admin = await get(bar, "/admin");
    expect(JSON.parse(admin.body)).toMatchObject({ route: "admin", authz: "admin-bar" });
    // Route authorizations add to the server's (Linkerd): an anonymous TLS client still gets in.
    expect((await get(undefined, "/admin")).status).toBe(200);
    const session = h2Session(
      meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, bar),
      `https://${FOO}:${port}`,
    );
    try {
      const grpc = await h2Request(session, {
        ":method": "POST",
        ":path": "/a.B/C",
        "content-type": "application/grpc+proto",
      });
      expect(grpc.headers["grpc-status"]).toBe("5");
    } finally {
      session.close();
    }
  });

  it("runs route filters after authorization: header modifier, redirect, failure injection", async () => {
    const route = (name: string, prefix: string, filter: inbound.HttpRoute_Filter) =>
      inbound.HttpRoute.fromPartial({
        ...httpRoute(name, prefix),
        rules: [
          {
            matches: [{ path: { kind: { $case: "prefix", value: prefix } }, headers: [], queryParams: [] }],
            filters: [filter],
          },
        ],
      });
    const policy = compileServerPolicy(
      serverMessage({
        authorizations: [authz("bar-only", { identities: [BAR] })],
        routes: [
          route("modify", "/modify", {
            kind: {
              $case: "requestHeaderModifier",
              value: {
                add: undefined,
                set: { headers: [{ name: "x-set", value: Buffer.from("by-policy") }] },
                remove: ["x-drop"],
              },
            },
          }),
          route("moved", "/old", {
            kind: {
              $case: "redirect",
              value: {
                scheme: undefined,
                host: "",
                path: { replace: { $case: "full", value: "/new" } },
                port: 0,
                status: 302,
              },
            },
          }),
          route("flaky", "/flaky", {
            kind: {
              $case: "failureInjector",
              value: { status: 503, message: "injected", ratio: { numerator: 1, denominator: 1 } },
            },
          }),
        ],
      }),
      { port: 8080 },
    );
    const { port } = await serve({
      policy,
      handler: (req, res) =>
        res.end(JSON.stringify({ set: req.headers["x-set"], drop: req.headers["x-drop"] ?? null })),
    });
    const get = (credentials: ClientCredentials, path: string) =>
      rawHttp1(
        meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, credentials),
        `GET ${path} HTTP/1.1\r\nHost: foo:8080\r\nx-drop: 1\r\nConnection: close\r\n\r\n`,
      );
    expect(JSON.parse((await get(bar, "/modify")).body)).toEqual({ set: "by-policy", drop: null });
    const moved = await get(bar, "/old");
    expect(moved.status).toBe(302);
    expect(moved.headers.location).toEqual(["http://foo:8080/new"]);
    expect((await get(bar, "/flaky")).status).toBe(500);
    // Authorization comes first: an unauthorized client is refused, never redirected.
    expect((await get(baz, "/old")).status).toBe(403);
  });

  it("matches each value of a repeated header, and header modifiers reach headers, rawHeaders and headersDistinct", async () => {
    const headerRoute = inbound.HttpRoute.fromPartial({
      ...httpRoute("foo-bar", "/"),
      rules: [
        {
          matches: [
            {
              path: { kind: { $case: "prefix", value: "/" } },
              headers: [{ name: "x-foo", value: { $case: "exact", value: Buffer.from("bar") } }],
              queryParams: [],
            },
          ],
          filters: [
            {
              kind: {
                $case: "requestHeaderModifier",
                value: {
                  add: { headers: [{ name: "x-add", value: Buffer.from("added") }] },
                  set: { headers: [{ name: "x-foo", value: Buffer.from("set") }] },
                  remove: ["x-drop"],
                },
              },
            },
          ],
        },
      ],
    });
    const regexRoute = inbound.HttpRoute.fromPartial({
      ...httpRoute("regex", "/regex"),
      rules: [
        {
          matches: [
            {
              path: { kind: { $case: "prefix", value: "/regex" } },
              headers: [{ name: "x-re", value: { $case: "regex", value: "nope, .*" } }],
              queryParams: [],
            },
          ],
          filters: [],
        },
      ],
    });
    const policy = compileServerPolicy(
      serverMessage({ authorizations: [authz("all", "unauthenticated")], routes: [headerRoute, regexRoute] }),
      { port: 8080 },
    );
    const { port } = await serve({
      policy,
      handler: (req, res) => {
        const raw: string[] = [];
        for (let i = 0; i < req.rawHeaders.length; i += 2) {
          const name = req.rawHeaders[i]?.toLowerCase() ?? "";
          if (name.startsWith("x-")) raw.push(`${name}=${req.rawHeaders[i + 1]}`);
        }
        res.end(
          JSON.stringify({
            route: meshContext(req)?.route.name,
            headers: [req.headers["x-foo"], req.headers["x-add"], req.headers["x-drop"] ?? null],
            distinct: [
              req.headersDistinct["x-foo"],
              req.headersDistinct["x-add"],
              req.headersDistinct["x-drop"] ?? null,
            ],
            raw: raw.sort(),
          }),
        );
      },
    });
    const send = (path: string, headers: string) =>
      rawHttp1(
        plainSocket({ port }),
        `GET ${path} HTTP/1.1\r\nHost: foo\r\n${headers}Connection: close\r\n\r\n`,
      );
    const repeated = await send("/", "x-foo: nope\r\nX-Foo: bar\r\nx-drop: 1\r\nx-drop: 2\r\n");
    expect(repeated.status).toBe(200);
    expect(JSON.parse(repeated.body)).toEqual({
      route: "foo-bar",
      headers: ["set", "added", null],
      distinct: [["set"], ["added"], null],
      raw: ["x-add=added", "x-foo=set"],
    });
    // No value equals "bar": no route matches.
    expect((await send("/", "x-foo: nope\r\nx-foo: barn\r\n")).status).toBe(404);
    // A value with a comma of its own is still one value, and a regex sees values one at a time, never
    // Node's joined "nope, bar".
    expect((await send("/", "x-foo: a, bar\r\n")).status).toBe(404);
    expect((await send("/regex", "x-re: nope\r\nx-re: bar\r\n")).status).toBe(404);
    expect((await send("/regex", "x-re: nope, bar\r\n")).status).toBe(200);
    // The same over prior-knowledge HTTP/2 (two header fields), served to the HTTP/1 handler.
    const session = h2Session(plainSocket({ port }), `http://127.0.0.1:${port}`);
    try {
      const h2 = await h2Request(session, {
        ":method": "GET",
        ":path": "/",
        "x-foo": ["nope", "bar"],
        "x-drop": "1",
      });
      expect(h2.status).toBe(200);
      expect(JSON.parse(h2.body)).toMatchObject({ route: "foo-bar", headers: ["set", "added", null] });
    } finally {
      session.close();
    }
  });

  it("denies with distinct reasons before the first policy and for an invalid policy", async () => {
    const notLoaded = await serve({ policy: NOT_LOADED_POLICY });
    const one = await rawHttp1(
      plainSocket({ port: notLoaded.port }),
      "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    expect(one.status).toBe(403);
    const invalid = await serve({ policy: invalidServerPolicy("test", 8080) });
    const two = await rawHttp1(
      meshTlsSocket({ port: invalid.port }, FOO, cp.trustAnchorsPem, bar),
      "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    expect(two.status).toBe(403);
    expect(two.headers["l5d-proxy-error"]?.[0]).toMatch(/invalid/);
  });

  it("closes denied opaque connections without writing, and hands allowed ones to onConnection", async () => {
    const { port } = await serve({ policy: onlyBar() });
    expect(
      await closedWithoutBytes(plainSocket({ port }), Buffer.from([0, 1, 2, 3, 0xff, 0xfe, 0x0d, 0x0a])),
    ).toBe(true);

    const open = await serve({
      onConnection: (socket, info) => {
        socket.resume();
        socket.end(`hello ${info.peer.kind}\n`);
      },
    });
    const socket = plainSocket({ port: open.port });
    const text = await new Promise<string>((resolve) => {
      let data = "";
      socket.on("data", (chunk: Buffer) => {
        data += chunk.toString();
      });
      socket.on("close", () => resolve(data));
      socket.write("\x00not http at all\r\n");
    });
    expect(text).toBe("hello none\n");
  });

  it("treats TLS for another SNI as opaque (never terminated) and closes a silent client at the detect timeout", async () => {
    const { port } = await serve({ detectTimeoutMs: 300 });
    const other = meshTlsSocket({ port }, "someone-else.example", cp.trustAnchorsPem, bar);
    const error = await new Promise<Error | undefined>((resolve) => {
      other.on("error", resolve);
      other.on("close", () => resolve(undefined));
    });
    expect(error === undefined || /socket|ECONNRESET|disconnected/i.test(error.message)).toBe(true);
    expect(await closedWithoutBytes(plainSocket({ port }), undefined, 3000)).toBe(true);
  });

  it("follows identity rotation, refuses client certificates from another CA, and cuts off a stalled ClientHello", async () => {
    const { port } = await serve({ detectTimeoutMs: 300 });
    const serial = () =>
      new Promise<string>((resolve, reject) => {
        const socket = meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, bar);
        socket.on("secureConnect", () => {
          resolve(socket.getPeerX509Certificate()?.serialNumber ?? "");
          socket.destroy();
        });
        socket.on("error", reject);
      });
    const before = await serial();
    expect(before).toBe(identity.state().serial);
    await identity.refresh();
    expect(await serial()).toBe(identity.state().serial);
    expect(identity.state().serial).not.toBe(before);

    const foreign = await (await createCertificateAuthority()).issueCredentials(BAR);
    const impostor = meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, {
      key: foreign.privateKeyPem,
      cert: foreign.certificateChainPem,
      ca: cp.trustAnchorsPem,
    });
    impostor.on("secureConnect", () => impostor.write("GET / HTTP/1.1\r\nHost: foo\r\n\r\n"));
    expect(await closedWithoutBytes(impostor)).toBe(true);

    // Five bytes of a TLS record header, then nothing: closed at the detect timeout, not Node's 120 s.
    expect(await closedWithoutBytes(plainSocket({ port }), Buffer.from([0x16, 3, 1, 2, 0]), 3000)).toBe(true);
  });

  it("accepts the transport header on the direct port (ALPN transport.l5d.io/v1, client identity required)", async () => {
    const { server } = await serve({ transportHeaderPort: 0 });
    const direct = server.transportHeaderAddress()?.port as number;
    const socket = meshTlsSocket({ port: direct }, FOO, cp.trustAnchorsPem, bar, [TRANSPORT_HEADER_ALPN]);
    socket.once("secureConnect", () => {
      socket.write(encodeTransportHeader({ port: 8080, name: "", sessionProtocol: "http1" }));
    });
    const response = await rawHttp1(socket, "GET /direct HTTP/1.1\r\nHost: foo\r\nConnection: close\r\n\r\n");
    expect(response.status).toBe(200);
    expect(JSON.parse(response.body).clientId).toBe(BAR);

    const anonymous = meshTlsSocket({ port: direct }, FOO, cp.trustAnchorsPem, undefined, [
      TRANSPORT_HEADER_ALPN,
    ]);
    expect(await closedWithoutBytes(anonymous)).toBe(true);
    const wrongPort = meshTlsSocket({ port: direct }, FOO, cp.trustAnchorsPem, bar, [TRANSPORT_HEADER_ALPN]);
    wrongPort.once("secureConnect", () =>
      wrongPort.write(encodeTransportHeader({ port: 9999, name: "", sessionProtocol: "http1" })),
    );
    expect(await closedWithoutBytes(wrongPort)).toBe(true);
  });

  it("createMeshRequestListener authorizes on a server the application created", async () => {
    const server = createHttpsServer(
      identity.tlsServerOptions(),
      createMeshRequestListener({ identity, policy: onlyBar(), port: 8080, handler: echo }),
    );
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const port = (server.address() as AddressInfo).port;
      const request = "GET / HTTP/1.1\r\nHost: foo\r\nl5d-client-id: forged\r\nConnection: close\r\n\r\n";
      const allowed = await rawHttp1(meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, bar), request);
      expect(JSON.parse(allowed.body)).toMatchObject({
        clientId: BAR,
        rawClientIds: [BAR],
        sameAsProperty: true,
      });
      expect((await rawHttp1(meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, baz), request)).status).toBe(
        403,
      );
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it("explains a denial on demand: which authorizations were tried and why each refused the caller", async () => {
    const authorizer = createMeshRequestAuthorizer({ identity, policy: onlyBar(), port: 8080 });
    const explanations: string[] = [];
    const server = createHttpsServer(identity.tlsServerOptions(), (req, res) => {
      const settle = (result: MeshAuthorization) => {
        if (!result.allowed) explanations.push(result.explanation?.text ?? "none");
        res.writeHead(result.allowed ? 200 : result.response.status).end();
      };
      const result = authorizer.authorize(req);
      if (result instanceof Promise) void result.then(settle);
      else settle(result);
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const port = (server.address() as AddressInfo).port;
      const request = "GET / HTTP/1.1\r\nHost: foo\r\nConnection: close\r\n\r\n";
      expect((await rawHttp1(meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, baz), request)).status).toBe(
        403,
      );
      expect(explanations).toEqual([
        [
          "decision: denied (unauthorized)",
          `client:   ${BAZ} at 127.0.0.2`,
          "server:   server/foo-http",
          "route:    default:default",
          "authorizations tried:",
          `  - authorizationpolicy/bar-only [identity]: client identity ${BAZ} is not among ${BAR}`,
          "  - default:localhost [network]: client address 127.0.0.2 is not in 127.0.0.1/32, ::1/128",
        ].join("\n"),
      ]);
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it("publishes inbound call telemetry when subscribed", async () => {
    const { port } = await serve({ policy: onlyBar() });
    const ended: InboundCallMessage[] = [];
    const listener = (message: unknown) => ended.push(message as InboundCallMessage);
    channel("mesh:inbound:call:end").subscribe(listener);
    try {
      await rawHttp1(plainSocket({ port }), "GET /t HTTP/1.1\r\nHost: foo\r\nConnection: close\r\n\r\n");
    } finally {
      channel("mesh:inbound:call:end").unsubscribe(listener);
    }
    expect(ended).toHaveLength(1);
    expect(ended[0]).toMatchObject({
      path: "/t",
      statusCode: 403,
      decision: { allowed: false, reason: "unauthorized" },
    });
  });

  it("drains in-flight requests on close and accepts no new connections", async () => {
    let release: (() => void) | undefined;
    const { server, port } = await serve({
      handler: (_req, res) => {
        release = () => res.end("done");
      },
    });
    const inFlight = rawHttp1(plainSocket({ port }), "GET / HTTP/1.1\r\nHost: foo\r\n\r\n");
    const deadline = Date.now() + 5000;
    while (release === undefined && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    const closed = server.close();
    await new Promise((r) => setTimeout(r, 20));
    const refused = await new Promise<boolean>((resolve) => {
      const socket = plainSocket({ port });
      socket.on("error", () => resolve(true));
      socket.on("connect", () => {
        socket.destroy();
        resolve(false);
      });
    });
    expect(refused).toBe(true);
    release?.();
    const response = await inFlight;
    expect(response.status).toBe(200);
    expect(response.body).toBe("done");
    expect(response.headers.connection).toEqual(["close"]);
    await closed;
  });
});
