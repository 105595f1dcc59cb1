/**
 * S5 (performance.md): a meshed process learns its peer's identity once per connection and never per
 * request. Every TLSSocket method that reads the peer's certificate or the session's TLS state is spied
 * on, for both ends of every connection, while real meshed traffic runs: HTTP/1 and HTTP/2 straight to
 * the served port, HTTP/2 through the transport-header port as a sidecar sends it, and the SDK's own
 * client (`mesh.fetch`). A connection's counts after its first request must equal its counts after many
 * more, and no connection may read a certificate more than once (Node's own client-side
 * `checkServerIdentity` read included).
 */
import { mkdtemp, rm } from "node:fs/promises";
import http2 from "node:http2";
import https from "node:https";
import { tmpdir } from "node:os";
import path from "node:path";
import { TLSSocket } from "node:tls";
import { type ControlPlane, startControlPlane } from "@inmesh/control-plane";
import { createMeshRequestAuthorizer, sendMeshResponse } from "@inmesh/http";
import { createMesh, type Mesh } from "@inmesh/mesh";
import { freeLoopbackPort } from "@inmesh/testing/ports";
import { Client } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectWithTransportHeader } from "./support/sidecar-client.js";

const BOOKS_IP = "127.0.24.2";
const WEB_IP = "127.0.24.3";
const BOOKS_ID = "books.shop.serviceaccount.identity.linkerd.cluster.local";
const WEB_ID = "web.shop.serviceaccount.identity.linkerd.cluster.local";
const REQUESTS_AFTER_FIRST = 60;

/**
 * Methods that build, parse or encode a certificate (getSession's encoding carries the peer's): at most
 * one call per connection, from anyone.
 */
const CERTIFICATE_METHODS = [
  "getPeerCertificate",
  "getSession",
  "getPeerX509Certificate",
  "getCertificate",
  "getX509Certificate",
] as const;
/** Other reads of the session's TLS state: a fixed number per connection, none per request. */
const STATE_METHODS = [
  "getPeerFinished",
  "getFinished",
  "isSessionReused",
  "getCipher",
  "getProtocol",
  "getEphemeralKeyInfo",
  "getSharedSigalgs",
  "getTLSTicket",
  "exportKeyingMaterial",
] as const;
type SpiedMethod = (typeof CERTIFICATE_METHODS)[number] | (typeof STATE_METHODS)[number];

const callsBySocket = new Map<TLSSocket, Map<SpiedMethod, number>>();
const originals = new Map<SpiedMethod, (...args: unknown[]) => unknown>();

function installSpies(): void {
  const prototype = TLSSocket.prototype as unknown as Record<SpiedMethod, (...args: unknown[]) => unknown>;
  for (const method of [...CERTIFICATE_METHODS, ...STATE_METHODS]) {
    const original = prototype[method];
    originals.set(method, original);
    prototype[method] = function spied(this: TLSSocket, ...args: unknown[]) {
      let calls = callsBySocket.get(this);
      if (calls === undefined) {
        calls = new Map();
        callsBySocket.set(this, calls);
      }
      calls.set(method, (calls.get(method) ?? 0) + 1);
      return original.apply(this, args);
    };
  }
}

function removeSpies(): void {
  const prototype = TLSSocket.prototype as unknown as Record<SpiedMethod, (...args: unknown[]) => unknown>;
  for (const [method, original] of originals) prototype[method] = original;
}

function isServerSide(socket: TLSSocket): boolean {
  return (socket as unknown as { _tlsOptions?: { isServer?: boolean } })._tlsOptions?.isServer === true;
}

/** A plain copy of every connection's counts, server and client side, that was opened since `before`. */
function snapshot(before: ReadonlySet<TLSSocket> = new Set()) {
  const sockets = [...callsBySocket.keys()].filter((socket) => !before.has(socket));
  return sockets.map((socket) => ({
    socket,
    side: isServerSide(socket) ? ("server" as const) : ("client" as const),
    calls: Object.fromEntries(callsBySocket.get(socket) ?? []) as Partial<Record<SpiedMethod, number>>,
  }));
}

function certificateReads(calls: Partial<Record<SpiedMethod, number>>): number {
  return CERTIFICATE_METHODS.reduce((sum, method) => sum + (calls[method] ?? 0), 0);
}

/**
 * Runs `first` (one request on new connections), snapshots the counts, runs `more` (many requests on the
 * same connections) and checks nothing was read again; returns the connections seen.
 */
async function expectOncePerConnection(first: () => Promise<void>, more: () => Promise<void>) {
  const before = new Set(callsBySocket.keys());
  await first();
  const afterFirst = snapshot(before);
  await more();
  const afterMore = snapshot(before);
  // Every connection the extra requests used was opened by the first: no new ones hide the per-request test.
  expect(afterMore.map((entry) => entry.socket)).toEqual(afterFirst.map((entry) => entry.socket));
  for (const [index, entry] of afterMore.entries()) {
    expect({ side: entry.side, calls: entry.calls }).toEqual({
      side: afterFirst[index]?.side,
      calls: afterFirst[index]?.calls,
    });
    expect(
      certificateReads(entry.calls),
      `${entry.side}: ${JSON.stringify(entry.calls)}`,
    ).toBeLessThanOrEqual(1);
  }
  return afterMore;
}

describe("S5: the peer's identity is read once per connection, never per request", () => {
  let stateDir: string;
  let controlPlane: ControlPlane;
  let books: Mesh;
  let web: Mesh;
  const ports = { http: 0, inbound: 0 };
  const clientIds = new Set<string | undefined>();

  beforeAll(async () => {
    installSpies();
    stateDir = await mkdtemp(path.join(tmpdir(), "inmesh-s5-"));
    ports.http = await freeLoopbackPort(BOOKS_IP);
    ports.inbound = await freeLoopbackPort(BOOKS_IP);
    controlPlane = await startControlPlane({
      manifests: [
        {
          path: "shop.yaml",
          text: `
apiVersion: v1
kind: Namespace
metadata: { name: shop }
---
apiVersion: v1
kind: Pod
metadata:
  name: books-0
  namespace: shop
  labels: { app: books, linkerd.io/control-plane-ns: linkerd }
  annotations: { inmesh.dev/inbound-port: "${ports.inbound}" }
spec:
  serviceAccountName: books
  containers: [{ name: app, ports: [{ name: http, containerPort: ${ports.http} }] }]
status: { podIP: ${BOOKS_IP} }
---
apiVersion: v1
kind: Pod
metadata: { name: web-0, namespace: shop, labels: { app: web, linkerd.io/control-plane-ns: linkerd } }
spec: { serviceAccountName: web, containers: [{ name: app }] }
status: { podIP: ${WEB_IP} }
---
apiVersion: v1
kind: Service
metadata: { name: books, namespace: shop }
spec: { selector: { app: books }, ports: [{ name: http, port: 80, targetPort: http }] }
`,
        },
      ],
      stateDir,
      ports: { identity: 0, destination: 0, policy: 0 },
      watch: false,
    });
    books = createMesh({
      env: (await controlPlane.writeEnv("books-0", { namespace: "shop" })).variables,
      admin: false,
      tracing: false,
    });
    await books
      .createServer(
        (req, res) => {
          clientIds.add(req.headers["l5d-client-id"] as string | undefined);
          req.resume();
          req.on("end", () => res.end("ok"));
        },
        { port: ports.http },
      )
      .listen(ports.http, BOOKS_IP);
    await books.ready({ signal: AbortSignal.timeout(15_000) });
    web = createMesh({
      env: (await controlPlane.writeEnv("web-0", { namespace: "shop" })).variables,
      admin: false,
      tracing: false,
      transportHeader: false,
    });
    await web.ready({ signal: AbortSignal.timeout(15_000) });
  });

  /** web's mesh TLS options to books, as undici's `connect` option. */
  const meshTls = () => web.identity.tlsClientOptions(BOOKS_ID) as NonNullable<Client.Options["connect"]>;

  afterAll(async () => {
    removeSpies();
    await Promise.all([web?.close(), books?.close()]);
    await controlPlane?.close();
    await rm(stateDir, { recursive: true, force: true });
  });

  it("HTTP/1 straight to the served port, three connections", async () => {
    const clients = [0, 1, 2].map(
      () =>
        new Client(`https://${BOOKS_IP}:${ports.http}`, {
          connect: meshTls(),
          pipelining: 1,
        }),
    );
    const get = async (client: Client) => {
      const { statusCode, body } = await client.request({ path: "/", method: "GET" });
      await body.text();
      expect(statusCode).toBe(200);
    };
    try {
      const seen = await expectOncePerConnection(
        async () => {
          for (const client of clients) await get(client);
        },
        async () => {
          for (let i = 0; i < REQUESTS_AFTER_FIRST; i += 1) await Promise.all(clients.map(get));
        },
      );
      expect(seen.filter((entry) => entry.side === "server")).toHaveLength(3);
      expect(clientIds).toEqual(new Set([WEB_ID]));
    } finally {
      await Promise.all(clients.map((client) => client.close()));
    }
  });

  it("an app's own https server, authorized per request by the framework adapters' authorizer", async () => {
    const authorizer = createMeshRequestAuthorizer({
      identity: books.identity,
      policy: books.policy,
      port: ports.http,
    });
    const own = https.createServer(books.identity.tlsServerOptions(), async (req, res) => {
      const result = await authorizer.authorize(req);
      if (!result.allowed) return sendMeshResponse(res, result.response);
      res.end("own");
    });
    await new Promise<void>((resolve) => own.listen(0, BOOKS_IP, resolve));
    const client = new Client(`https://${BOOKS_IP}:${(own.address() as { port: number }).port}`, {
      connect: meshTls(),
    });
    const get = async () => {
      const { statusCode, body } = await client.request({ path: "/", method: "GET" });
      expect(await body.text()).toBe("own");
      expect(statusCode).toBe(200);
    };
    try {
      const seen = await expectOncePerConnection(get, async () => {
        for (let i = 0; i < REQUESTS_AFTER_FIRST; i += 1) await get();
      });
      expect(seen.map((entry) => entry.side).sort()).toEqual(["client", "server"]);
    } finally {
      await client.close();
      own.closeAllConnections();
      await new Promise((resolve) => own.close(resolve));
    }
  });

  it("HTTP/2 straight to the served port, many streams on one connection", async () => {
    const session = http2.connect(`https://${BOOKS_IP}:${ports.http}`, {
      ...web.identity.tlsClientOptions(BOOKS_ID),
      ALPNProtocols: ["h2"],
    });
    const post = () =>
      new Promise<void>((resolve, reject) => {
        const stream = session.request({ ":method": "POST", ":path": "/", "l5d-orig-proto": "HTTP/1.1" });
        stream.on("response", (headers) => {
          if (headers[":status"] !== 200) reject(new Error(`status ${headers[":status"]}`));
        });
        stream.resume();
        stream.on("end", resolve);
        stream.on("error", reject);
        stream.end("x".repeat(1000));
      });
    try {
      const seen = await expectOncePerConnection(post, async () => {
        for (let i = 0; i < REQUESTS_AFTER_FIRST / 10; i += 1)
          await Promise.all(Array.from({ length: 10 }, post));
      });
      expect(seen.filter((entry) => entry.side === "server")).toHaveLength(1);
    } finally {
      session.close();
    }
  });

  it("HTTP/2 through the transport-header port, as a sidecar sends it", async () => {
    let session: http2.ClientHttp2Session | undefined;
    const get = () =>
      new Promise<void>((resolve, reject) => {
        const stream = (session as http2.ClientHttp2Session).request({
          ":path": "/",
          "l5d-orig-proto": "HTTP/1.1",
        });
        stream.on("response", (headers) => {
          if (headers[":status"] !== 200) reject(new Error(`status ${headers[":status"]}`));
        });
        stream.resume();
        stream.on("end", resolve);
        stream.on("error", reject);
      });
    try {
      const seen = await expectOncePerConnection(
        async () => {
          const socket = await connectWithTransportHeader(web.identity, {
            host: BOOKS_IP,
            inboundPort: ports.inbound,
            serverName: BOOKS_ID,
            port: ports.http,
            sessionProtocol: "http2",
          });
          session = http2.connect(`http://${BOOKS_IP}:${ports.http}`, { createConnection: () => socket });
          await get();
        },
        async () => {
          for (let i = 0; i < REQUESTS_AFTER_FIRST; i += 1) await get();
        },
      );
      expect(seen.map((entry) => entry.side).sort()).toEqual(["client", "server"]);
    } finally {
      session?.close();
    }
  });

  it("the SDK's own client (mesh.fetch) and the server it calls", async () => {
    const fetchOnce = async () => {
      const response = await web.fetch("http://books.shop.svc.cluster.local/", {
        method: "POST",
        body: "y".repeat(2000),
      });
      expect(response.status).toBe(200);
      await response.text();
    };
    const seen = await expectOncePerConnection(fetchOnce, async () => {
      for (let i = 0; i < REQUESTS_AFTER_FIRST; i += 1) await fetchOnce();
    });
    // One connection each way: the dispatcher's to the transport-header port, and the one books accepted.
    expect(seen.map((entry) => entry.side).sort()).toEqual(["client", "server"]);
    const client = seen.find((entry) => entry.side === "client");
    // Node's own checkServerIdentity read; the SDK's check works from it and reads nothing more.
    expect(client?.calls.getPeerCertificate).toBe(1);
  });
});
