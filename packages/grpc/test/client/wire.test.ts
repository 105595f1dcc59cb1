/**
 * What the gRPC client credentials put on the wire (contract §4.2, §4.4), checked by a raw TLS peer, plus
 * the transport header end to end through our inbound side, rotation, and R2 (expired identity).
 */
import { createServer as createTlsServer, type TLSSocket, type Server as TlsServer } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { Metadata, type ServiceError, status } from "@grpc/grpc-js";
import type { ControlPlane } from "@inmesh/control-plane";
import { createCertificateAuthority, startControlPlane } from "@inmesh/control-plane";
import { createIdentityProvider, type IdentityProvider } from "@inmesh/identity";
import { parseTransportHeader } from "@inmesh/proto";
import { freeLoopbackPort } from "@inmesh/testing/ports";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  createMeshCertificateProvider,
  createMeshChannelCredentials,
  createMeshClientOptions,
  createMeshGrpcChannel,
  MESH_ERROR_METADATA_KEY,
} from "../../src/index.js";
import {
  controlPlaneDiscovery,
  EchoClient,
  files,
  identityOf,
  NS,
  podIdentity,
  podYaml,
  serviceYaml,
  startGrpcBackend,
  startTestControlPlane,
} from "./support.js";

const CLIENT = { name: "client-0", sa: "client", app: "client", port: 1 };
const RAW = identityOf("raw");

interface Hello {
  servername: string | undefined;
  offeredAlpn: string[] | undefined;
  clientSerial: string | undefined;
  bytes: Buffer;
}

function call(client: InstanceType<typeof EchoClient>, timeoutMs = 1000): Promise<ServiceError | Buffer> {
  return new Promise((resolve) => {
    client.unary(Buffer.from("x"), new Metadata(), { deadline: Date.now() + timeoutMs }, (error, value) =>
      resolve(error ?? (value as Buffer)),
    );
  });
}

describe("gRPC client credentials on the wire", () => {
  let cp: ControlPlane;
  let clientIdentity: IdentityProvider;
  let raw: TlsServer;
  let rawPort: number;
  const hellos: Hello[] = [];

  beforeAll(async () => {
    cp = await startTestControlPlane(files(podYaml(CLIENT)));
    clientIdentity = await podIdentity(cp, CLIENT.name, CLIENT.sa);
    const issued = await cp.certificateAuthority.issueCredentials(RAW);
    let pending: string[] | undefined;
    raw = createTlsServer(
      {
        key: issued.privateKeyPem,
        cert: issued.certificateChainPem,
        minVersion: "TLSv1.3",
        requestCert: true,
        rejectUnauthorized: true,
        ca: cp.trustAnchorsPem,
        ALPNCallback: ({ protocols }) => {
          pending = protocols;
          return protocols.includes("transport.l5d.io/v1")
            ? "transport.l5d.io/v1"
            : protocols.includes("h2")
              ? "h2"
              : undefined;
        },
      },
      (socket: TLSSocket) => {
        const hello: Hello = {
          servername: (socket as TLSSocket & { servername?: string }).servername,
          offeredAlpn: pending,
          clientSerial: socket.getPeerX509Certificate()?.serialNumber,
          bytes: Buffer.alloc(0),
        };
        pending = undefined;
        hellos.push(hello);
        socket.on("data", (chunk: Buffer) => {
          hello.bytes = Buffer.concat([hello.bytes, chunk]);
          if (hello.bytes.includes("PRI * HTTP/2.0") || hello.bytes.length > 4096) socket.destroy();
        });
        socket.on("error", () => undefined);
      },
    );
    await new Promise<void>((resolve) => raw.listen(0, "127.0.0.1", resolve));
    rawPort = (raw.address() as { port: number }).port;
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => (raw ? raw.close(() => resolve()) : resolve()));
    await clientIdentity?.close();
    await cp?.close();
  });

  const rawClient = (options: Parameters<typeof createMeshChannelCredentials>[0]) =>
    new EchoClient(`127.0.0.1:${rawPort}`, createMeshChannelCredentials(options), {
      "grpc.initial_reconnect_backoff_ms": 5000,
    });

  it("sends SNI = the expected identity, no ALPN, our client certificate, then the HTTP/2 preface", async () => {
    hellos.length = 0;
    const client = rawClient({ identity: clientIdentity, expectedServerIdentity: RAW });
    try {
      await call(client);
    } finally {
      client.close();
    }
    expect(hellos[0]?.servername).toBe(RAW);
    expect(hellos[0]?.offeredAlpn).toBeUndefined();
    expect(hellos[0]?.clientSerial?.toLowerCase()).toBe(clientIdentity.state().serial?.toLowerCase());
    expect(hellos[0]?.bytes.subarray(0, 14).toString("latin1")).toBe("PRI * HTTP/2.0");
  });

  it("offers only transport.l5d.io/v1 and writes the transport header before the preface", async () => {
    hellos.length = 0;
    const client = rawClient({
      identity: clientIdentity,
      expectedServerIdentity: RAW,
      transportHeaderPort: 8080,
    });
    try {
      await call(client);
    } finally {
      client.close();
    }
    const hello = hellos[0] as Hello;
    expect(hello.offeredAlpn).toEqual(["transport.l5d.io/v1"]);
    const parsed = parseTransportHeader(hello.bytes);
    expect(parsed.complete).toBe(true);
    if (!parsed.complete) return;
    expect(parsed.header).toEqual({ port: 8080, name: "", sessionProtocol: "http2" });
    expect(hello.bytes.subarray(parsed.consumed, parsed.consumed + 14).toString("latin1")).toBe(
      "PRI * HTTP/2.0",
    );
  });

  it("offers h2 only when asked to", async () => {
    hellos.length = 0;
    const client = rawClient({ identity: clientIdentity, expectedServerIdentity: RAW, offerH2Alpn: true });
    try {
      await call(client);
    } finally {
      client.close();
    }
    expect(hellos[0]?.offeredAlpn).toEqual(["h2"]);
  });

  it("refuses a server whose certificate is not the expected identity", async () => {
    hellos.length = 0;
    const client = rawClient({
      identity: clientIdentity,
      expectedServerIdentity: identityOf("someone-else"),
    });
    try {
      const result = await call(client);
      expect((result as ServiceError).code).toBe(status.UNAVAILABLE);
    } finally {
      client.close();
    }
    // The handshake got far enough for the server to see it, but no HTTP/2 byte was sent.
    expect(hellos.every((hello) => hello.bytes.length === 0)).toBe(true);
  });

  it("presents the new certificate on new connections after a rotation", async () => {
    hellos.length = 0;
    const first = rawClient({ identity: clientIdentity, expectedServerIdentity: RAW });
    await call(first);
    first.close();
    const before = clientIdentity.state().serial;
    await clientIdentity.refresh();
    const second = rawClient({ identity: clientIdentity, expectedServerIdentity: RAW });
    await call(second);
    second.close();
    expect(hellos).toHaveLength(2);
    expect(hellos[0]?.clientSerial?.toLowerCase()).toBe(before?.toLowerCase());
    expect(hellos[1]?.clientSerial?.toLowerCase()).toBe(clientIdentity.state().serial?.toLowerCase());
    expect(hellos[1]?.clientSerial).not.toBe(hellos[0]?.clientSerial);
  });

  it("bridges identity updates to a grpc-js CertificateProvider", async () => {
    const provider = createMeshCertificateProvider(clientIdentity);
    const updates: { ca?: boolean; identity?: boolean }[] = [];
    const ca = (update: { caCertificate: Buffer } | null) => updates.push({ ca: update !== null });
    const id = (update: { certificate: Buffer; privateKey: Buffer } | null) => {
      updates.push({ identity: update !== null });
      if (update) expect(update.certificate.toString()).toContain("BEGIN CERTIFICATE");
    };
    provider.addCaCertificateListener(ca);
    provider.addIdentityCertificateListener(id);
    await clientIdentity.refresh();
    provider.removeCaCertificateListener(ca);
    provider.removeIdentityCertificateListener(id);
    provider.close();
    expect(updates.filter((u) => u.ca).length).toBeGreaterThanOrEqual(2);
    expect(updates.filter((u) => u.identity).length).toBeGreaterThanOrEqual(2);
  });

  it("validates its options", () => {
    expect(() => createMeshChannelCredentials({} as never)).toThrow(/identity/);
    expect(() =>
      createMeshChannelCredentials({ identity: clientIdentity, expectedServerIdentity: "Not A Name" }),
    ).toThrow(/DNS name/);
    expect(() => createMeshChannelCredentials({ identity: clientIdentity, transportHeaderPort: 0 })).toThrow(
      /1-65535/,
    );
    expect(() => createMeshGrpcChannel({ target: "example.com:80", discovery: {} as never })).toThrow(
      /discovery/,
    );
  });
});

describe("gRPC through the transport header, and with an expired identity", () => {
  const closers: (() => unknown)[] = [];
  afterAll(async () => {
    for (const close of closers.reverse()) await Promise.resolve(close()).catch(() => undefined);
  });

  it("calls a meshed grpc-js server through its inbound port", async () => {
    const appPort = await freeLoopbackPort();
    const inboundPort = await freeLoopbackPort();
    const pod = `apiVersion: v1
kind: Pod
metadata:
  name: echo-0
  namespace: ${NS}
  labels:
    app: echo
    linkerd.io/control-plane-ns: linkerd
  annotations:
    inmesh.dev/inbound-port: "${inboundPort}"
spec:
  serviceAccountName: echo
  containers:
    - name: main
      image: app
      ports:
        - name: grpc
          containerPort: ${appPort}
status:
  podIP: 127.0.0.1
`;
    const cp = await startTestControlPlane(files(podYaml(CLIENT), pod, serviceYaml("echo", "echo")));
    closers.push(() => cp.close());
    const client = await podIdentity(cp, CLIENT.name, CLIENT.sa);
    closers.push(() => client.close());
    const server = await podIdentity(cp, "echo-0", "echo");
    closers.push(() => server.close());
    const backend = await startGrpcBackend("echo-0", server, {
      port: appPort,
      transportHeaderPort: inboundPort,
    });
    closers.push(() => backend.close());
    const discovery = controlPlaneDiscovery(cp, CLIENT.name);
    closers.push(() => discovery.close());
    const channel = createMeshGrpcChannel({
      target: "echo.default.svc.cluster.local:8080",
      identity: client,
      discovery,
    });
    closers.push(() => channel.close());
    await channel.ready({ timeoutMs: 5000 });
    const echo = new EchoClient(
      channel.authority,
      grpc.credentials.createInsecure(),
      createMeshClientOptions(channel),
    );
    closers.push(() => echo.close());
    const result = await call(echo, 5000);
    expect(Buffer.isBuffer(result) ? result.toString() : result).toBe("echo-0:x");
    expect(backend.calls[0]?.peer).toBe(identityOf("client"));
  });

  it("fails calls fast with UNAVAILABLE and MESH_ERR_IDENTITY_EXPIRED once our certificate expired (R2)", async () => {
    const certificateAuthority = await createCertificateAuthority({
      issuanceLifetimeMs: 3000,
      clockSkewAllowanceMs: 0,
    });
    const manifests = (port: number) =>
      files(
        podYaml(CLIENT),
        podYaml({ name: "echo-0", sa: "echo", app: "echo", port }),
        serviceYaml("echo", "echo"),
      );
    const cp = await startControlPlane({
      manifests: manifests(1),
      ports: { identity: 0, destination: 0, policy: 0 },
      certificateAuthority,
      certificateLifetimeMs: 3000,
      watch: false,
    });
    closers.push(() => cp.close());
    const identityFor = (pod: string, sa: string) =>
      createIdentityProvider({
        localName: identityOf(sa),
        trustAnchorsPem: cp.trustAnchorsPem,
        identityServiceAddress: cp.addresses.identity,
        identityServiceName: cp.serverNames.identity,
        readToken: () => cp.tokenFor(NS, pod),
        minRefreshMs: 600_000,
      });
    const client = identityFor(CLIENT.name, CLIENT.sa);
    closers.push(() => client.close());
    const server = identityFor("echo-0", "echo");
    closers.push(() => server.close());
    await client.ready({ signal: AbortSignal.timeout(5000) });
    await server.ready({ signal: AbortSignal.timeout(5000) });
    const backend = await startGrpcBackend("echo-0", server);
    closers.push(() => backend.close());
    cp.setManifests(manifests(backend.port));
    const discovery = controlPlaneDiscovery(cp, CLIENT.name);
    closers.push(() => discovery.close());
    const channel = createMeshGrpcChannel({
      target: "echo.default.svc.cluster.local:8080",
      identity: client,
      discovery,
    });
    closers.push(() => channel.close());
    const echo = new EchoClient(
      channel.authority,
      grpc.credentials.createInsecure(),
      createMeshClientOptions(channel),
    );
    closers.push(() => echo.close());
    expect(Buffer.isBuffer(await call(echo, 5000))).toBe(true);

    const deadline = Date.now() + 8000;
    while (client.state().status !== "expired" && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 50));
    expect(client.state().status).toBe("expired");
    const started = performance.now();
    const error = (await call(echo, 5000)) as ServiceError;
    expect(error.code).toBe(status.UNAVAILABLE);
    expect(error.metadata.get(MESH_ERROR_METADATA_KEY)[0]).toBe("MESH_ERR_IDENTITY_EXPIRED");
    expect(performance.now() - started).toBeLessThan(1000);
    expect(backend.calls).toHaveLength(1);
  });
});
