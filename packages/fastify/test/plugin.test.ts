import type { Server } from "node:http";
import type { ControlPlane } from "@inmesh/control-plane";
import { createMeshServer, type MeshServer } from "@inmesh/http";
import type { IdentityProvider } from "@inmesh/identity";
import { compileServerPolicy } from "@inmesh/policy";
import Fastify, { type FastifyInstance } from "fastify";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  authz,
  type ClientCredentials,
  clientCredentials,
  eventually,
  h2Request,
  h2Session,
  identityOf,
  meshTlsSocket,
  podIdentity,
  podYaml,
  rawHttp1,
  serverMessage,
  startTestControlPlane,
} from "../../http/test/inbound/support.js";
import { fastifyMeshPlugin } from "../src/index.js";

const FOO = identityOf("foo");
const BAR = identityOf("bar");

describe("fastifyMeshPlugin", () => {
  let cp: ControlPlane;
  let identity: IdentityProvider;
  let bar: ClientCredentials;
  let baz: ClientCredentials;
  const apps: FastifyInstance[] = [];

  const policy = () =>
    compileServerPolicy(serverMessage({ authorizations: [authz("bar-only", { identities: [BAR] })] }), {
      port: 8080,
    });

  beforeAll(async () => {
    cp = await startTestControlPlane([
      { path: "pods.yaml", text: podYaml({ name: "foo", sa: "foo", ip: "10.1.0.1" }) },
    ]);
    identity = await podIdentity(cp, "foo", "foo");
    bar = await clientCredentials(cp, "bar");
    baz = await clientCredentials(cp, "baz");
  });
  afterEach(async () => {
    await Promise.all(apps.splice(0).map((app) => app.close()));
  });
  afterAll(async () => {
    await identity?.close();
    await cp?.close();
  });

  const get = (port: number, client: ClientCredentials | undefined, path: string) =>
    rawHttp1(
      meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, client),
      `GET ${path} HTTP/1.1\r\nHost: foo\r\nConnection: close\r\n\r\n`,
    );

  it("a real Fastify app served by createMeshServer through serverFactory", async () => {
    let mesh: MeshServer | undefined;
    const app = Fastify({
      serverFactory: (handler) => {
        mesh = createMeshServer({ identity, policy: policy(), port: 8080, handler });
        return mesh.server as unknown as Server;
      },
    });
    apps.push(app);
    await app.register(fastifyMeshPlugin);
    app.post("/echo", async (request) => ({
      peer: request.meshPeer,
      clientId: request.headers["l5d-client-id"] ?? null,
      route: request.mesh?.route.name,
      body: request.body,
    }));
    app.get("/whoami", async (request) => ({ peer: request.meshPeer }));
    await app.listen({ port: 0, host: "127.0.0.1" });
    const port = mesh?.address()?.port as number;

    expect(JSON.parse((await get(port, bar, "/whoami")).body)).toEqual({
      peer: { kind: "mesh", name: BAR, tls: "established" },
    });
    expect((await get(port, baz, "/whoami")).status).toBe(403);

    const session = h2Session(
      meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, bar),
      `https://${FOO}:${port}`,
    );
    try {
      const response = await h2Request(
        session,
        {
          ":method": "POST",
          ":path": "/echo",
          "content-type": "application/json",
          "l5d-orig-proto": "HTTP/1.1",
          "l5d-client-id": "spoofed",
        },
        JSON.stringify({ hello: "mesh" }),
      );
      expect(response.status).toBe(200);
      expect(JSON.parse(response.body)).toEqual({
        peer: { kind: "mesh", name: BAR, tls: "established" },
        clientId: BAR,
        route: "default",
        body: { hello: "mesh" },
      });
    } finally {
      session.close();
    }
    await app.close();
    await eventually(() => mesh?.connectionCount === 0, 2000, "connections closed");
  });

  it("standalone on Fastify's own HTTPS server: authorizes in onRequest, before the body is parsed", async () => {
    let parsed = 0;
    const app = Fastify({ https: identity.tlsServerOptions() });
    apps.push(app);
    app.addHook("preParsing", async () => {
      parsed += 1;
    });
    await app.register(fastifyMeshPlugin, { identity, policy: policy(), port: 8080 });
    app.get("/whoami", async (request) => ({ peer: request.meshPeer }));
    await app.listen({ port: 0, host: "127.0.0.1" });
    const port = (app.server.address() as { port: number }).port;
    expect((await get(port, baz, "/whoami")).status).toBe(403);
    expect(parsed).toBe(0);
    expect(JSON.parse((await get(port, bar, "/whoami")).body).peer.name).toBe(BAR);
    expect(parsed).toBe(1);
  });

  it("encapsulate: only routes that attach fastify.meshOnRequest are covered", async () => {
    const app = Fastify({ https: identity.tlsServerOptions() });
    apps.push(app);
    await app.register(fastifyMeshPlugin, { identity, policy: policy(), port: 8080, encapsulate: true });
    app.get("/open", async (request) => ({ peer: request.meshPeer }));
    app.get("/closed", { onRequest: app.meshOnRequest }, async (request) => ({ peer: request.meshPeer }));
    await app.listen({ port: 0, host: "127.0.0.1" });
    const port = (app.server.address() as { port: number }).port;
    expect(JSON.parse((await get(port, baz, "/open")).body)).toEqual({ peer: null });
    expect((await get(port, baz, "/closed")).status).toBe(403);
  });
});
