import http2 from "node:http2";
import tls from "node:tls";
import {
  credentials,
  type handleUnaryCall,
  Metadata,
  makeGenericClientConstructor,
  Server,
  type ServiceError,
  status,
} from "@grpc/grpc-js";
import type { ControlPlane } from "@inmesh/control-plane";
import { createMeshServer, type MeshServer } from "@inmesh/http";
import type { IdentityProvider } from "@inmesh/identity";
import { compileServerPolicy } from "@inmesh/policy";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  authz,
  type ClientCredentials,
  clientCredentials,
  h2Request,
  h2Session,
  httpRoute,
  identityOf,
  meshTlsSocket,
  podIdentity,
  podYaml,
  serverMessage,
  startRelay,
  startTestControlPlane,
} from "../../../http/test/inbound/support.js";
import {
  createMeshConnectionInjector,
  createMeshServerCredentials,
  meshCallContext,
  meshPeer,
} from "../../src/index.js";

/** grpc-js generic clients expose methods by name: (request, metadata, options, callback). */
type UnaryInvoker = (
  request: unknown,
  metadata: Metadata,
  options: { deadline: number },
  callback: (error: ServiceError | null, reply: never) => void,
) => void;

const FOO = identityOf("foo");
const BAR = identityOf("bar");

interface Reply {
  peer: string | null;
  clientIdMetadata: string[];
  route: string | undefined;
}

const json = {
  serialize: (value: unknown) => Buffer.from(JSON.stringify(value)),
  deserialize: (bytes: Buffer) => JSON.parse(bytes.toString()),
};
const EchoService = {
  echo: {
    path: "/test.Echo/Echo",
    requestStream: false,
    responseStream: false,
    requestSerialize: json.serialize,
    requestDeserialize: json.deserialize,
    responseSerialize: json.serialize,
    responseDeserialize: json.deserialize,
  },
};
const EchoClient = makeGenericClientConstructor(EchoService, "Echo");
/** Registered with grpc-js but outside every route of the policy. */
const OtherService = { call: { ...EchoService.echo, path: "/test.Other/Call" } };

const echo: handleUnaryCall<unknown, Reply> = (call, callback) => {
  const peer = meshPeer(call);
  callback(null, {
    peer: peer?.kind === "mesh" ? peer.name : (peer?.kind ?? null),
    clientIdMetadata: call.metadata.get("l5d-client-id").map(String),
    route: meshCallContext(call)?.route.name,
  });
};

function callEcho(
  client: InstanceType<typeof EchoClient>,
  metadata = new Metadata(),
): Promise<{ reply?: Reply; error?: ServiceError }> {
  return new Promise((resolve) => {
    (client as unknown as { echo: UnaryInvoker }).echo(
      {},
      metadata,
      { deadline: Date.now() + 5000 },
      (error: ServiceError | null, reply: Reply) => resolve(error ? { error } : { reply }),
    );
  });
}

async function relayed(port: number, cleanups: (() => Promise<void> | void)[]): Promise<number> {
  const relay = await startRelay(port);
  cleanups.push(() => relay.close());
  return relay.port;
}

function grpcClient(port: number, client: ClientCredentials) {
  return new EchoClient(
    `127.0.0.1:${port}`,
    credentials.createSsl(Buffer.from(client.ca), Buffer.from(client.key), Buffer.from(client.cert), {
      checkServerIdentity: () => undefined,
    }),
    { "grpc.ssl_target_name_override": FOO, "grpc.default_authority": "foo.default.svc.cluster.local:8080" },
  );
}

describe("grpc-js server with mesh authorization", () => {
  let cp: ControlPlane;
  let identity: IdentityProvider;
  let bar: ClientCredentials;
  let baz: ClientCredentials;
  const cleanups: (() => Promise<void> | void)[] = [];

  // Only bar may call; /test.Echo/* is the only route.
  const policy = () =>
    compileServerPolicy(
      serverMessage({
        authorizations: [authz("bar-only", { identities: [BAR] })],
        routes: [httpRoute("echo", "/test.Echo")],
      }),
      { port: 8080 },
    );

  beforeAll(async () => {
    cp = await startTestControlPlane([
      { path: "pods.yaml", text: podYaml({ name: "foo", sa: "foo", ip: "10.1.0.1" }) },
    ]);
    identity = await podIdentity(cp, "foo", "foo");
    bar = await clientCredentials(cp, "bar");
    baz = await clientCredentials(cp, "baz");
  });
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });
  afterAll(async () => {
    await identity?.close();
    await cp?.close();
  });

  async function meshGrpcServer(makePolicy = policy): Promise<number> {
    const server = new Server();
    server.addService(EchoService, { echo });
    server.addService(OtherService, { call: echo });
    const injector = createMeshConnectionInjector(server, { identity, policy: makePolicy(), port: 8080 });
    const mesh: MeshServer = createMeshServer({
      identity,
      policy: makePolicy(),
      port: 8080,
      onHttp2Connection: injector.injectConnection,
    });
    cleanups.push(async () => {
      await mesh.close();
      server.forceShutdown();
    });
    return (await mesh.listen(0, "127.0.0.1")).port;
  }

  it("refuses an initialPolicyWaitMs that is negative or not a number (0 means no wait)", () => {
    const withWait = (initialPolicyWaitMs: unknown) => () =>
      createMeshServerCredentials({
        identity,
        policy: policy(),
        port: 8080,
        initialPolicyWaitMs: initialPolicyWaitMs as number,
      });
    expect(withWait(-1)).toThrow(
      /createMeshServerCredentials: initialPolicyWaitMs must be a non-negative number, got -1/,
    );
    expect(withWait(Number.NaN)).toThrow(/initialPolicyWaitMs/);
    expect(withWait("5")).toThrow(/initialPolicyWaitMs/);
    expect(withWait(0)).not.toThrow();
    expect(() =>
      createMeshConnectionInjector(new Server(), {
        identity,
        policy: policy(),
        port: 8080,
        initialPolicyWaitMs: -1,
      }),
    ).toThrow(/createMeshConnectionInjector: initialPolicyWaitMs/);
  });

  it("behind createMeshServer: a grpc-js client with a mesh certificate is served, its identity is on the call", async () => {
    const port = await meshGrpcServer();
    const client = grpcClient(port, bar);
    cleanups.push(() => client.close());
    const metadata = new Metadata();
    metadata.add("l5d-client-id", "spoofed.example");
    const { reply, error } = await callEcho(client, metadata);
    expect(error).toBeUndefined();
    expect(reply).toEqual({ peer: BAR, clientIdMetadata: [BAR], route: "echo" });
  });

  it("behind createMeshServer: denies with PERMISSION_DENIED before the handler, NOT_FOUND without a route", async () => {
    const port = await meshGrpcServer();
    const other = grpcClient(await relayed(port, cleanups), baz);
    cleanups.push(() => other.close());
    const denied = await callEcho(other);
    expect(denied.error?.code).toBe(status.PERMISSION_DENIED);
    expect(denied.error?.details).toMatch(/unauthorized/);

    const session = h2Session(
      meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, bar),
      `https://${FOO}:${port}`,
    );
    cleanups.push(() => session.close());
    const missing = await h2Request(
      session,
      { ":method": "POST", ":path": "/test.Other/Call", "content-type": "application/grpc", te: "trailers" },
      "",
    );
    expect(missing.status).toBe(200);
    const code = missing.headers["grpc-status"] ?? missing.trailers?.["grpc-status"];
    expect(code).toBe(String(status.NOT_FOUND));
  });

  it("behind createMeshServer: the Server's local rate limit answers RESOURCE_EXHAUSTED", async () => {
    const limited = () => {
      const message = serverMessage({
        authorizations: [authz("bar-only", { identities: [BAR] })],
        routes: [httpRoute("echo", "/test.Echo")],
      });
      if (message.protocol?.kind?.$case !== "detect") throw new Error("detect expected");
      message.protocol.kind.value.httpLocalRateLimit = {
        metadata: undefined,
        total: undefined,
        identity: { requestsPerSecond: 1 },
        overrides: [],
      };
      // A clock that never advances: one call per identity, ever.
      return compileServerPolicy(message, { port: 8080, nowMs: () => 0 });
    };
    const port = await meshGrpcServer(limited);
    const client = grpcClient(port, bar);
    cleanups.push(() => client.close());
    expect((await callEcho(client)).error).toBeUndefined();
    const refused = await callEcho(client);
    expect(refused.error?.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(refused.error?.details).toBe("per-identity rate limit exceeded: 1rps");
  });

  it("behind createMeshServer: a Node http2 client over TLS without ALPN (what sidecars send) reaches grpc-js", async () => {
    const port = await meshGrpcServer();
    const session = h2Session(
      meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, bar),
      `https://${FOO}:${port}`,
    );
    cleanups.push(() => session.close());
    const frame = Buffer.alloc(5 + 2);
    frame.writeUInt32BE(2, 1);
    frame.write("{}", 5);
    const response = await h2Request(
      session,
      { ":method": "POST", ":path": "/test.Echo/Echo", "content-type": "application/grpc", te: "trailers" },
      frame.toString("latin1"),
    );
    expect(response.status).toBe(200);
    expect(response.trailers?.["grpc-status"]).toBe("0");
    expect(response.body).toContain(BAR);
  });

  it("with bindAsync: grpc-js terminates TLS 1.3 from the identity (ALPN h2 clients only), rotation needs no rebuild", async () => {
    const server = new Server();
    server.addService(EchoService, { echo });
    const creds = createMeshServerCredentials({ identity, policy: policy(), port: 8080 });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", creds, (error, bound) => (error ? reject(error) : resolve(bound))),
    );
    cleanups.push(() => {
      server.forceShutdown();
    });
    const client = grpcClient(port, bar);
    cleanups.push(() => client.close());
    expect((await callEcho(client)).reply?.peer).toBe(BAR);
    const other = grpcClient(await relayed(port, cleanups), baz);
    cleanups.push(() => other.close());
    expect((await callEcho(other)).error?.code).toBe(status.PERMISSION_DENIED);

    const serialOf = (alpn: string[] | undefined) =>
      new Promise<string | Error>((resolve) => {
        const socket = tls.connect({
          host: "127.0.0.1",
          port,
          servername: FOO,
          ca: cp.trustAnchorsPem,
          minVersion: "TLSv1.3",
          checkServerIdentity: () => undefined,
          ...(alpn === undefined ? {} : { ALPNProtocols: alpn }),
        });
        socket.on("secureConnect", () => {
          const serial = socket.getPeerX509Certificate()?.serialNumber ?? "";
          const protocol = socket.alpnProtocol;
          socket.destroy();
          resolve(protocol === "h2" ? serial : new Error(`alpn ${String(protocol)}`));
        });
        socket.on("error", resolve);
      });
    const before = await serialOf(["h2"]);
    expect(before).toBe(identity.state().serial);
    await identity.refresh();
    const after = await serialOf(["h2"]);
    expect(after).toBe(identity.state().serial);
    expect(after).not.toBe(before);
    // TLS 1.2 is refused.
    const tls12 = await new Promise<Error | undefined>((resolve) => {
      const socket = tls.connect({
        host: "127.0.0.1",
        port,
        servername: FOO,
        maxVersion: "TLSv1.2",
        rejectUnauthorized: false,
      });
      socket.on("secureConnect", () => {
        socket.destroy();
        resolve(undefined);
      });
      socket.on("error", resolve);
    });
    expect(tls12).toBeInstanceOf(Error);
    // Without ALPN, node:http2 inside grpc-js refuses the connection: sidecar clients need createMeshServer.
    const noAlpn = h2Session(
      meshTlsSocket({ port, localAddress: "127.0.0.1" }, FOO, cp.trustAnchorsPem, bar),
      `https://${FOO}:${port}`,
    );
    cleanups.push(() => noAlpn.close());
    await expect(
      h2Request(
        noAlpn,
        { ":method": "POST", ":path": "/test.Echo/Echo", "content-type": "application/grpc" },
        "",
        3000,
      ),
    ).rejects.toThrow();
    void http2;
  });
});
