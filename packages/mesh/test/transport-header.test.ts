import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { type ControlPlane, startControlPlane } from "@inmesh/control-plane";
import { meshContext } from "@inmesh/http";
import { encodeTransportHeader } from "@inmesh/proto";
import { freeLoopbackPort } from "@inmesh/testing/ports";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  closedWithoutAnswer,
  connectWithTransportHeader,
  echoThroughTransportHeader,
  h2GetThroughTransportHeader,
} from "../../../test/support/sidecar-client.js";
import { createMesh, type Mesh } from "../src/index.js";

const BOOKS_IP = "127.0.0.31";
const SIDECAR_IP = "127.0.0.32";
const BOOKS_ID = "books.bookshop.serviceaccount.identity.linkerd.cluster.local";

describe("createMesh serves the transport-header port (Linkerd's default transport mode)", () => {
  let stateDir: string;
  let controlPlane: ControlPlane;
  const ports = { a: 0, b: 0, opaque: 0, inbound: 0 };
  let books: Mesh;
  let sidecar: Mesh;

  beforeAll(async () => {
    stateDir = await mkdtemp(path.join(tmpdir(), "inmesh-th-"));
    ports.a = await freeLoopbackPort(BOOKS_IP);
    ports.b = await freeLoopbackPort(BOOKS_IP);
    ports.opaque = await freeLoopbackPort(BOOKS_IP);
    ports.inbound = await freeLoopbackPort(BOOKS_IP);
    controlPlane = await startControlPlane({
      manifests: [
        {
          path: "app.yaml",
          text: `
apiVersion: v1
kind: Pod
metadata:
  name: books-0
  namespace: bookshop
  labels: { app: books, linkerd.io/control-plane-ns: linkerd }
  annotations:
    inmesh.dev/inbound-port: "${ports.inbound}"
    config.linkerd.io/opaque-ports: "${ports.opaque}"
spec:
  serviceAccountName: books
  containers:
    - name: app
      ports:
        - { name: http-a, containerPort: ${ports.a} }
        - { name: http-b, containerPort: ${ports.b} }
        - { name: echo, containerPort: ${ports.opaque} }
status: { podIP: ${BOOKS_IP} }
---
apiVersion: v1
kind: Pod
metadata: { name: sidecar-0, namespace: bookshop, labels: { app: sidecar, linkerd.io/control-plane-ns: linkerd } }
spec: { serviceAccountName: sidecar, containers: [{ name: app }] }
status: { podIP: ${SIDECAR_IP} }
---
apiVersion: v1
kind: Service
metadata: { name: books, namespace: bookshop }
spec:
  selector: { app: books }
  ports: [{ name: a, port: 80, targetPort: http-a }, { name: b, port: 81, targetPort: http-b }]
`,
        },
      ],
      stateDir,
      ports: { identity: 0, destination: 0, policy: 0 },
      watch: false,
    });
    expect(controlPlane.state.options.outboundTransportMode).toBe("transport-header");

    const booksEnv = (await controlPlane.writeEnv("books-0", { namespace: "bookshop" })).variables;
    expect(booksEnv.LINKERD2_PROXY_INBOUND_LISTEN_ADDR).toBe(`${BOOKS_IP}:${ports.inbound}`);
    books = createMesh({ env: booksEnv, admin: false, tracing: false });
    const answer =
      (name: string) =>
      (req: import("node:http").IncomingMessage, res: import("node:http").ServerResponse) => {
        const context = meshContext(req);
        res.setHeader("content-type", "application/json");
        res.end(
          JSON.stringify({
            app: name,
            peer: context?.peer ?? null,
            clientId: req.headers["l5d-client-id"],
            transportHeader: context?.transportHeader ?? null,
          }),
        );
      };
    await books.createServer(answer("a"), { port: ports.a }).listen(ports.a, BOOKS_IP);
    await books.createServer(answer("b"), { port: ports.b }).listen(ports.b, BOOKS_IP);
    books.createServer(undefined, {
      port: ports.opaque,
      onConnection: (socket) => socket.pipe(socket),
    });
    await books.ready({ signal: AbortSignal.timeout(15_000) });

    sidecar = createMesh({
      env: (await controlPlane.writeEnv("sidecar-0", { namespace: "bookshop" })).variables,
      admin: false,
      tracing: false,
      transportHeader: false,
    });
    await sidecar.ready({ signal: AbortSignal.timeout(15_000) });
  });

  afterAll(async () => {
    await Promise.allSettled([books?.close(), sidecar?.close()]);
    await controlPlane?.close();
    await rm(stateDir, { recursive: true, force: true });
  });

  it("one listener on LINKERD2_PROXY_INBOUND_LISTEN_ADDR routes each header to its port's app over HTTP/2", async () => {
    expect(books.transportHeader?.address()).toMatchObject({ address: BOOKS_IP, port: ports.inbound });
    expect(books.transportHeader?.ports()).toEqual([ports.a, ports.b, ports.opaque].sort((x, y) => x - y));
    const target = { host: BOOKS_IP, inboundPort: ports.inbound, serverName: BOOKS_ID };
    const a = await h2GetThroughTransportHeader(sidecar.identity, { ...target, port: ports.a }, "/");
    const b = await h2GetThroughTransportHeader(sidecar.identity, { ...target, port: ports.b }, "/");
    const sidecarId = "sidecar.bookshop.serviceaccount.identity.linkerd.cluster.local";
    expect(a.status).toBe(200);
    expect(JSON.parse(a.body)).toEqual({
      app: "a",
      peer: { kind: "mesh", name: sidecarId, tls: "established" },
      clientId: sidecarId,
      transportHeader: true,
    });
    expect(b.status).toBe(200);
    expect(JSON.parse(b.body)).toMatchObject({ app: "b", clientId: sidecarId });
  });

  it("an opaque port's bytes are echoed (header without a session protocol)", async () => {
    const bytes = Buffer.from("opaque bytes through 4143\n".repeat(100));
    const echoed = await echoThroughTransportHeader(
      sidecar.identity,
      { host: BOOKS_IP, inboundPort: ports.inbound, serverName: BOOKS_ID, port: ports.opaque },
      bytes,
    );
    expect(echoed.equals(bytes)).toBe(true);
  });

  it("a header naming a port nobody serves, or a gateway name, is closed without an answer", async () => {
    const target = { host: BOOKS_IP, inboundPort: ports.inbound, serverName: BOOKS_ID };
    const unserved = await connectWithTransportHeader(sidecar.identity, { ...target, port: 1 });
    expect(await closedWithoutAnswer(unserved, Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))).toBe(true);
    // A named header asks for the multicluster gateway stack, which a workload does not have.
    const { connect } = await import("node:tls");
    const named = await new Promise<import("node:tls").TLSSocket>((resolve, reject) => {
      const socket = connect({
        host: BOOKS_IP,
        port: ports.inbound,
        ...sidecar.identity.tlsClientOptions(BOOKS_ID),
        ALPNProtocols: ["transport.l5d.io/v1"],
      });
      socket.once("secureConnect", () => resolve(socket));
      socket.once("error", reject);
    });
    named.write(
      encodeTransportHeader({
        port: ports.a,
        name: "books.other.svc.cluster.local",
        sessionProtocol: "http1",
      }),
    );
    expect(await closedWithoutAnswer(named, Buffer.from("GET / HTTP/1.1\r\nhost: x\r\n\r\n"))).toBe(true);
  });

  it("a client without ALPN transport.l5d.io/v1, or without a certificate, is refused", async () => {
    const { connect } = await import("node:tls");
    const open = (options: object) =>
      new Promise<import("node:tls").TLSSocket>((resolve, reject) => {
        const socket = connect({ host: BOOKS_IP, port: ports.inbound, ...options });
        socket.once("secureConnect", () => resolve(socket));
        socket.once("error", reject);
      });
    const noAlpn = await open(sidecar.identity.tlsClientOptions(BOOKS_ID));
    const header = encodeTransportHeader({ port: ports.a, name: "", sessionProtocol: "http1" });
    expect(
      await closedWithoutAnswer(
        noAlpn,
        Buffer.concat([header, Buffer.from("GET / HTTP/1.1\r\nhost: x\r\n\r\n")]),
      ),
    ).toBe(true);
    // No client certificate: linkerd2-proxy's RefusedNoIdentity.
    const anonymous = await open({
      servername: BOOKS_ID,
      ca: controlPlane.trustAnchorsPem,
      minVersion: "TLSv1.3",
      checkServerIdentity: () => undefined,
      ALPNProtocols: ["transport.l5d.io/v1"],
    });
    expect(anonymous.alpnProtocol).toBe("transport.l5d.io/v1");
    expect(
      await closedWithoutAnswer(
        anonymous,
        Buffer.concat([header, Buffer.from("GET / HTTP/1.1\r\nhost: x\r\n\r\n")]),
      ),
    ).toBe(true);
  });

  it("mesh.fetch from a meshed client reaches books through its transport-header port", async () => {
    const response = await sidecar.fetch("http://books.bookshop.svc.cluster.local:81/");
    expect(response.status).toBe(200);
    // The destination answer carried opaque_transport, so the call went to the inbound port, not :81's app port.
    expect(await response.json()).toMatchObject({ app: "b", transportHeader: true });
    // What linkerd-viz's stat-outbound reads, from the real call: parent, default route, backend, status.
    const text = sidecar.metrics?.render() ?? "";
    const parent =
      'parent_group="core",parent_kind="Service",parent_namespace="bookshop",parent_name="books",parent_port="81",parent_section_name=""';
    expect(text).toContain(
      `outbound_http_route_request_statuses_total{${parent},route_group="",route_kind="default",route_namespace="",route_name="http",hostname="books.bookshop.svc.cluster.local",http_status="200",error=""} 1`,
    );
    expect(text).toContain(
      `outbound_http_route_backend_requests_total{${parent},route_group="",route_kind="default",route_namespace="",route_name="http",backend_group="core",backend_kind="Service",backend_namespace="bookshop",backend_name="books",backend_port="81",backend_section_name=""} 1`,
    );
  });

  it("close() stops the shared listener", async () => {
    const mesh = createMesh({
      env: {
        ...(await controlPlane.writeEnv("sidecar-0", { namespace: "bookshop" })).variables,
        LINKERD2_PROXY_INBOUND_LISTEN_ADDR: `${SIDECAR_IP}:${await freeLoopbackPort(SIDECAR_IP)}`,
      },
      admin: false,
      tracing: false,
    });
    await mesh.ready({ signal: AbortSignal.timeout(15_000) });
    expect(mesh.transportHeader?.server.listening).toBe(true);
    await mesh.close();
    expect(mesh.transportHeader?.server.listening).toBe(false);
  });
});
