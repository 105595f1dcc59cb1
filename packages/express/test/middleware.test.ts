import { createServer as createHttpServer, type Server } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import type { ControlPlane } from "@inmesh/control-plane";
import { createMeshServer, type MeshServer } from "@inmesh/http";
import type { IdentityProvider } from "@inmesh/identity";
import { compileServerPolicy } from "@inmesh/policy";
import express, { type Express } from "express";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  authz,
  type ClientCredentials,
  clientCredentials,
  h2Request,
  h2Session,
  identityOf,
  meshTlsSocket,
  plainSocket,
  podIdentity,
  podYaml,
  rawHttp1,
  serverMessage,
  startTestControlPlane,
} from "../../http/test/inbound/support.js";
import { type ExpressMeshMiddlewareOptions, expressMeshMiddleware } from "../src/index.js";

const FOO = identityOf("foo");
const BAR = identityOf("bar");

describe("expressMeshMiddleware", () => {
  let cp: ControlPlane;
  let identity: IdentityProvider;
  let bar: ClientCredentials;
  let baz: ClientCredentials;
  const cleanups: (() => Promise<void>)[] = [];

  const policy = () =>
    compileServerPolicy(serverMessage({ authorizations: [authz("bar-only", { identities: [BAR] })] }), {
      port: 8080,
    });

  function app(options?: ExpressMeshMiddlewareOptions): Express {
    const application = express();
    application.use(expressMeshMiddleware(options));
    application.get("/whoami", (req, res) => {
      res.json({
        peer: req.meshPeer ?? null,
        clientId: req.get("l5d-client-id") ?? null,
        route: req.mesh?.route.name ?? null,
        protocol: req.protocol,
      });
    });
    return application;
  }

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

  async function listen(server: Server): Promise<number> {
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          server.closeAllConnections();
          server.close(() => resolve());
        }),
    );
    return (server.address() as AddressInfo).port;
  }

  it("behind createMeshServer (recommended): exposes the verified caller over HTTP/1 and sidecar-style HTTP/2", async () => {
    const mesh: MeshServer = createMeshServer({ identity, policy: policy(), port: 8080, handler: app() });
    cleanups.push(() => mesh.close());
    const { port } = await mesh.listen(0, "127.0.0.1");

    const http1 = await rawHttp1(
      meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, bar),
      "GET /whoami HTTP/1.1\r\nHost: foo\r\nl5d-client-id: spoofed\r\nConnection: close\r\n\r\n",
    );
    expect(http1.status).toBe(200);
    expect(JSON.parse(http1.body)).toEqual({
      peer: { kind: "mesh", name: BAR, tls: "established" },
      clientId: BAR,
      route: "default",
      protocol: "https",
    });

    const session = h2Session(
      meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, bar),
      `https://${FOO}:${port}`,
    );
    cleanups.push(async () => {
      session.close();
    });
    const h2 = await h2Request(session, {
      ":path": "/whoami",
      ":authority": "foo.default.svc.cluster.local:8080",
      "l5d-orig-proto": "HTTP/1.1",
    });
    expect(h2.status).toBe(200);
    expect(h2.headers["l5d-orig-proto"]).toBe("HTTP/1.1");
    expect(JSON.parse(h2.body).clientId).toBe(BAR);

    const denied = await rawHttp1(
      meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, baz),
      "GET /whoami HTTP/1.1\r\nHost: foo\r\nConnection: close\r\n\r\n",
    );
    expect(denied.status).toBe(403);
    expect(denied.body).toBe("");
  });

  it("behind createMeshServer over sidecar-style HTTP/2: express.json() bodies, res.status().json(), Express's own 404", async () => {
    const application = app();
    application.post("/echo", express.json(), (req, res) => {
      res.status(201).json({ received: req.body, clientId: req.get("l5d-client-id") ?? null });
    });
    const mesh: MeshServer = createMeshServer({
      identity,
      policy: policy(),
      port: 8080,
      handler: application,
    });
    cleanups.push(() => mesh.close());
    const { port } = await mesh.listen(0, "127.0.0.1");
    const session = h2Session(
      meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, bar),
      `https://${FOO}:${port}`,
    );
    cleanups.push(async () => {
      session.close();
    });
    const payload = { items: Array.from({ length: 2000 }, (_, index) => `item-${index}`) };
    const posted = await h2Request(
      session,
      {
        ":method": "POST",
        ":path": "/echo",
        ":authority": "foo.default.svc.cluster.local:8080",
        "content-type": "application/json",
        "l5d-orig-proto": "HTTP/1.1",
      },
      JSON.stringify(payload),
    );
    expect(posted.status).toBe(201);
    expect(posted.headers["content-type"]).toMatch(/^application\/json/);
    expect(posted.headers["l5d-orig-proto"]).toBe("HTTP/1.1");
    expect(JSON.parse(posted.body)).toEqual({ received: payload, clientId: BAR });

    const missing = await h2Request(session, {
      ":path": "/nowhere",
      ":authority": "foo.default.svc.cluster.local:8080",
      "l5d-orig-proto": "HTTP/1.1",
    });
    expect(missing.status).toBe(404);
    expect(missing.body).toContain("Cannot GET /nowhere");
  });

  it("fails closed for requests that bypassed the mesh server", async () => {
    const port = await listen(createHttpServer(app()));
    const response = await rawHttp1(
      plainSocket({ port }),
      "GET /whoami HTTP/1.1\r\nHost: foo\r\nConnection: close\r\n\r\n",
    );
    expect(response.status).toBe(403);
  });

  it("standalone: authorizes on the app's own TLS server built from identity.tlsServerOptions()", async () => {
    const port = await listen(
      createHttpsServer(identity.tlsServerOptions(), app({ identity, policy: policy(), port: 8080 })),
    );
    const allowed = await rawHttp1(
      meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, bar),
      "GET /whoami HTTP/1.1\r\nHost: foo\r\nL5D-Client-ID: spoofed\r\nConnection: close\r\n\r\n",
    );
    expect(allowed.status).toBe(200);
    expect(JSON.parse(allowed.body)).toMatchObject({ clientId: BAR, route: "default" });
    const denied = await rawHttp1(
      meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, baz),
      "GET /whoami HTTP/1.1\r\nHost: foo\r\nConnection: close\r\n\r\n",
    );
    expect(denied.status).toBe(403);
    expect(denied.headers["l5d-proxy-error"]).toBeDefined();
  });
});
