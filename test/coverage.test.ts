// What gets meshed (issue 13, coverage): names as pods write them, cluster IPs, node:http clients (axios),
// Node's global fetch, opaque TCP, egress policy and gRPC from several workloads on one host, all through
// the public API against the dev control plane.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { createServer as createTlsServer, type TLSSocket, type Server as TlsServer } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { type ControlPlane, startControlPlane } from "@inmesh/control-plane";
import { hasMeshErrorCode, MeshErrorCode } from "@inmesh/core";
import { createMeshConnectionInjector, meshPeer } from "@inmesh/grpc";
import { createMesh, type Mesh } from "@inmesh/mesh";
import { parseTransportHeader, TRANSPORT_HEADER_ALPN } from "@inmesh/proto";
import { freeLoopbackPort } from "@inmesh/testing/ports";
import axios from "axios";
import { getGlobalDispatcher } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  askDb,
  callBooksEveryWay,
  callGrpc,
  egressAllowed,
} from "../packages/mesh/test/readme-outbound-example.js";

const WEB_ID = "web.bookshop.serviceaccount.identity.linkerd.cluster.local";
const DB_ID = "db.bookshop.serviceaccount.identity.linkerd.cluster.local";

interface Ports {
  books: number;
  authors: number;
  db: number;
  dbInbound: number;
}

function manifests(ports: Ports) {
  const pod = (name: string, ip: string, extra = "") => `
apiVersion: v1
kind: Pod
metadata:
  name: ${name}-0
  namespace: bookshop
  labels: { app: ${name}, linkerd.io/control-plane-ns: linkerd }
${extra}
status: { podIP: ${ip} }
---`;
  return [
    {
      path: "coverage.yaml",
      text: `
apiVersion: v1
kind: Namespace
metadata: { name: bookshop }
---
${pod("books", "127.0.0.3", `spec: { serviceAccountName: books, containers: [{ name: app, ports: [{ name: http, containerPort: ${ports.books} }] }] }`)}
${pod("web", "127.0.0.2", "spec: { serviceAccountName: web, containers: [{ name: app }] }")}
${pod("stranger", "127.0.0.6", "spec: { serviceAccountName: stranger, containers: [{ name: app }] }")}
${pod("authors", "127.0.0.4", `spec: { serviceAccountName: authors, containers: [{ name: app, ports: [{ name: grpc, containerPort: ${ports.authors} }] }] }`)}
apiVersion: v1
kind: Pod
metadata:
  name: db-0
  namespace: bookshop
  labels: { app: db, linkerd.io/control-plane-ns: linkerd }
  annotations: { config.linkerd.io/opaque-ports: "${ports.db}", inmesh.dev/inbound-port: "${ports.dbInbound}" }
spec: { serviceAccountName: db, containers: [{ name: app, ports: [{ name: db, containerPort: ${ports.db} }] }] }
status: { podIP: 127.0.0.5 }
---
apiVersion: v1
kind: Service
metadata: { name: books, namespace: bookshop }
spec: { selector: { app: books }, ports: [{ name: http, port: 80, targetPort: http }] }
---
apiVersion: v1
kind: Service
metadata: { name: authors, namespace: bookshop }
spec: { selector: { app: authors }, ports: [{ name: grpc, port: 50051, targetPort: grpc }] }
---
apiVersion: v1
kind: Service
metadata: { name: db, namespace: bookshop }
spec: { selector: { app: db }, ports: [{ name: db, port: 5432, targetPort: db }] }
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: { name: authors-grpc, namespace: bookshop }
spec: { podSelector: { matchLabels: { app: authors } }, port: grpc, proxyProtocol: gRPC }
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: { name: authors-callers, namespace: bookshop }
spec: { identityRefs: [{ kind: ServiceAccount, name: web }] }
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: { name: authors-callers, namespace: bookshop }
spec:
  targetRef: { group: policy.linkerd.io, kind: Server, name: authors-grpc }
  requiredAuthenticationRefs: [{ group: policy.linkerd.io, kind: MeshTLSAuthentication, name: authors-callers }]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata: { name: blocked, namespace: bookshop }
spec: { trafficPolicy: Deny, networks: [{ cidr: 203.0.113.0/24 }] }
`,
    },
  ];
}

const whoService: grpc.ServiceDefinition = {
  whoAmI: {
    path: "/test.Who/WhoAmI",
    requestStream: false,
    responseStream: false,
    requestSerialize: (value: Buffer) => value,
    requestDeserialize: (value: Buffer) => value,
    responseSerialize: (value: Buffer) => value,
    responseDeserialize: (value: Buffer) => value,
  },
};
const WhoClient = grpc.makeGenericClientConstructor(whoService, "Who") as unknown as new (
  address: string,
  credentials: grpc.ChannelCredentials,
  options: grpc.ClientOptions,
) => grpc.Client & {
  whoAmI(request: Buffer, callback: (error: grpc.ServiceError | null, value?: Buffer) => void): unknown;
};

/** A raw TLS server on db's inbound port: reads the transport header, then answers what it saw. */
function startOpaqueDb(db: Mesh, port: number): Promise<TlsServer> {
  const server = createTlsServer(
    { ...db.identity.tlsServerOptions(), ALPNProtocols: [TRANSPORT_HEADER_ALPN] },
    (socket: TLSSocket) => {
      let buffered = Buffer.alloc(0);
      let header: { port: number; sessionProtocol: string | undefined } | undefined;
      socket.on("data", (chunk: Buffer) => {
        buffered = Buffer.concat([buffered, chunk]);
        if (!header) {
          const parsed = parseTransportHeader(buffered);
          if (!parsed.complete) return;
          header = { port: parsed.header.port, sessionProtocol: parsed.header.sessionProtocol };
          buffered = buffered.subarray(parsed.consumed);
        }
        if (buffered.includes(0x0a)) {
          const peer = db.identity.peerIdentity(socket);
          socket.end(
            `${header.port}|${header.sessionProtocol ?? "none"}|${socket.alpnProtocol}|${peer.kind === "mesh" ? peer.name : "-"}|${buffered.toString("utf8")}`,
          );
        }
      });
      socket.on("error", () => {});
    },
  );
  return new Promise((resolve) => server.listen(port, "127.0.0.5", () => resolve(server)));
}

function readAll(socket: NodeJS.ReadableStream): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = "";
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      text += chunk;
    });
    socket.on("end", () => resolve(text));
    socket.on("error", reject);
  });
}

describe("what gets meshed", () => {
  let stateDir: string;
  let controlPlane: ControlPlane;
  let ports: Ports;
  const meshes: Mesh[] = [];
  const cleanups: (() => Promise<void> | void)[] = [];
  let web: Mesh;
  let stranger: Mesh;

  async function meshFor(pod: string, transportHeader = true): Promise<Mesh> {
    const { variables } = await controlPlane.writeEnv(pod, { namespace: "bookshop" });
    const mesh = createMesh({ env: variables, admin: false, tracing: false, transportHeader });
    meshes.push(mesh);
    return mesh;
  }

  beforeAll(async () => {
    stateDir = await mkdtemp(path.join(tmpdir(), "inmesh-coverage-"));
    ports = {
      books: await freeLoopbackPort("127.0.0.3"),
      authors: await freeLoopbackPort("127.0.0.4"),
      db: await freeLoopbackPort("127.0.0.5"),
      dbInbound: await freeLoopbackPort("127.0.0.5"),
    };
    controlPlane = await startControlPlane({
      manifests: manifests(ports),
      stateDir,
      ports: { identity: 0, destination: 0, policy: 0 },
      watch: false,
    });

    const books = await meshFor("books-0");
    const booksServer = books.createServer(
      (req, res) => {
        let bytes = 0;
        req.on("data", (chunk: Buffer) => {
          bytes += chunk.length;
        });
        req.on("end", () => {
          res.setHeader("content-type", "application/json");
          res.end(
            JSON.stringify({
              clientId: req.headers["l5d-client-id"] ?? null,
              host: req.headers.host,
              method: req.method,
              bytes,
            }),
          );
        });
      },
      { port: ports.books },
    );
    await booksServer.listen(ports.books, "127.0.0.3");

    const authors = await meshFor("authors-0");
    const grpcServer = new grpc.Server();
    grpcServer.addService(whoService, {
      whoAmI(call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) {
        const peer = meshPeer(call);
        callback(null, Buffer.from(peer?.kind === "mesh" ? peer.name : "-"));
      },
    });
    const injector = createMeshConnectionInjector(grpcServer, {
      identity: authors.identity,
      policy: authors.policy,
      port: ports.authors,
    });
    const authorsServer = authors.createServer(undefined, {
      port: ports.authors,
      onHttp2Connection: injector.injectConnection,
    });
    await authorsServer.listen(ports.authors, "127.0.0.4");
    cleanups.push(() => injector.destroy());

    // The test serves db's inbound (transport-header) port itself, to see the header a client writes.
    const db = await meshFor("db-0", false);
    web = await meshFor("web-0");
    stranger = await meshFor("stranger-0");
    await Promise.all(meshes.map((mesh) => mesh.ready({ signal: AbortSignal.timeout(20_000) })));
    const dbServer = await startOpaqueDb(db, ports.dbInbound);
    cleanups.push(() => new Promise<void>((resolve) => dbServer.close(() => resolve())));
  });

  afterAll(async () => {
    await Promise.allSettled(meshes.map((mesh) => mesh.close()));
    for (const cleanup of cleanups) await cleanup();
    await controlPlane?.close();
    await rm(stateDir, { recursive: true, force: true });
  });

  it("short names and a cluster IP reach books over mTLS, as a pod's resolver and proxy would", async () => {
    const clusterIp = controlPlane.state.services.find((s) => s.name === "books")?.clusterIP;
    expect(clusterIp).toMatch(/^10\./);
    for (const url of [
      "http://books/",
      "http://books.bookshop/",
      "http://books.bookshop.svc/",
      "http://books.bookshop.svc.cluster.local/",
      `http://${clusterIp}/`,
    ]) {
      const response = await web.fetch(url);
      expect(response.status, url).toBe(200);
      const body = (await response.json()) as { clientId: string; host: string };
      expect(body.clientId, url).toBe(WEB_ID);
      // The callee sees the Host the application addressed.
      expect(body.host, url).toBe(`${new URL(url).hostname}:80`);
    }
  });

  it("axios through mesh.httpAgent is meshed: the callee sees the caller's identity", async () => {
    for (const url of ["http://books/", "http://books.bookshop.svc.cluster.local/"]) {
      const response = await axios.get(url, { httpAgent: web.httpAgent, proxy: false, timeout: 10_000 });
      expect(response.status).toBe(200);
      expect(response.data.clientId).toBe(WEB_ID);
    }
    expect(web.httpAgent).toBe(web.httpAgent);
  });

  it("Node's global fetch is meshed after mesh.install(), and restored by its undo", async () => {
    const before = getGlobalDispatcher();
    const undo = web.install();
    expect(web.install()).toBe(undo);
    try {
      expect(getGlobalDispatcher()).toBe(web.dispatcher);
      const response = await globalThis.fetch("http://books.bookshop/");
      expect(response.status).toBe(200);
      expect(((await response.json()) as { clientId: string }).clientId).toBe(WEB_ID);
      // A body through Node's bundled fetch (its own handler style) arrives whole.
      const posted = await globalThis.fetch("http://books/", { method: "POST", body: "x".repeat(100_000) });
      expect(await posted.json()).toMatchObject({ clientId: WEB_ID, method: "POST", bytes: 100_000 });
    } finally {
      undo();
    }
    expect(getGlobalDispatcher()).toBe(before);
    web.uninstall();
    expect(getGlobalDispatcher()).toBe(before);
  });

  it("mesh.connect carries bytes over mTLS to an opaque port, with a transport header and no session protocol", async () => {
    const socket = await web.connect("db:5432");
    socket.write("select 1\n");
    const answer = await readAll(socket);
    const [headerPort, session, alpn, peer, data] = answer.split("|");
    expect(Number(headerPort)).toBe(ports.db);
    expect(session).toBe("none");
    expect(alpn).toBe(TRANSPORT_HEADER_ALPN);
    expect(peer).toBe(WEB_ID);
    expect(data).toBe("select 1\n");
    expect((socket as TLSSocket).getPeerX509Certificate?.()?.subjectAltName).toBe(`DNS:${DB_ID}`);

    // The Service's cluster IP leads to the same endpoint, through the policy looked up by address.
    const clusterIp = controlPlane.state.services.find((s) => s.name === "db")?.clusterIP;
    const byIp = await web.connect(`${clusterIp}:5432`);
    byIp.write("by ip\n");
    expect(await readAll(byIp)).toBe(`${ports.db}|none|${TRANSPORT_HEADER_ALPN}|${WEB_ID}|by ip\n`);
  });

  it("a short name that names no Service is then the external name it would be in a pod", async () => {
    // books.invalid → no Service invalid/books → DNS for books.invalid itself (RFC 2606), which has no answer.
    const error = await web.fetch("http://books.invalid/").then(
      () => undefined,
      (failure: Error) => failure.cause ?? failure,
    );
    expect(hasMeshErrorCode(error, MeshErrorCode.DESTINATION_NOT_FOUND)).toBe(true);
    expect(String((error as Error).message)).toMatch(/cannot resolve books\.invalid/);
  });

  it("a denied egress target is refused with MESH_ERR_EGRESS_DENIED, whatever the client", async () => {
    const fetchError = await web.fetch("http://203.0.113.9/").then(
      () => undefined,
      (error: Error) => error.cause ?? error,
    );
    expect(hasMeshErrorCode(fetchError, MeshErrorCode.EGRESS_DENIED)).toBe(true);
    expect(String((fetchError as Error).message)).toMatch(/EgressNetwork bookshop\/blocked/);
    // Metrics carry the egress labels, as Linkerd labels traffic governed by an EgressNetwork.
    const series = (web.metrics?.render() ?? "")
      .split("\n")
      .filter((line) => line.startsWith("request_total{") && line.includes('authority="203.0.113.9:80"'));
    expect(series.join("\n")).toMatch(
      /parent_kind="EgressNetwork",parent_name="blocked",parent_namespace="bookshop"/,
    );

    const tlsError = await web.fetch("https://203.0.113.9/").then(
      () => undefined,
      (error: Error) => error.cause ?? error,
    );
    expect(hasMeshErrorCode(tlsError, MeshErrorCode.EGRESS_DENIED)).toBe(true);

    await expect(web.connect("203.0.113.9:5432")).rejects.toSatisfy((error: unknown) =>
      hasMeshErrorCode(error, MeshErrorCode.EGRESS_DENIED),
    );
    const axiosError = await axios
      .get("http://203.0.113.9/", { httpAgent: web.httpAgent, proxy: false, timeout: 10_000 })
      .then(
        () => undefined,
        (error: unknown) => error,
      );
    // axios keeps the code and the MeshError as the cause.
    expect((axiosError as { code?: string }).code).toBe(MeshErrorCode.EGRESS_DENIED);
    expect(hasMeshErrorCode((axiosError as Error).cause, MeshErrorCode.EGRESS_DENIED)).toBe(true);
  });

  it("gRPC from several workloads on one host: the policy admits web and denies stranger", async () => {
    expect(await callGrpc(web, WhoClient)).toBe(WEB_ID);
    const denied = await callGrpc(stranger, WhoClient).then(
      () => undefined,
      (error: grpc.ServiceError) => error,
    );
    expect(denied?.code).toBe(grpc.status.PERMISSION_DENIED);
  });

  it("the mesh README's outbound example runs as written", async () => {
    expect(await callBooksEveryWay(web)).toEqual({
      viaFetch: expect.stringContaining(WEB_ID),
      viaAgent: expect.stringContaining(WEB_ID),
      viaGlobalFetch: expect.stringContaining(WEB_ID),
    });
    expect(await askDb(web, "select 1")).toBe(
      `${ports.db}|none|${TRANSPORT_HEADER_ALPN}|${WEB_ID}|select 1\n`,
    );
    expect(await egressAllowed(web, "http://203.0.113.7/")).toBe(false);
  });
});
