import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { type ControlPlane, startControlPlane } from "@inmesh/control-plane";
import { createMesh, type Mesh } from "@inmesh/mesh";
import { freeLoopbackPort } from "@inmesh/testing/ports";
import Fastify, { type FastifyInstance } from "fastify";
import { afterAll, expect, it } from "vitest";
import { h2GetThroughTransportHeader } from "../../../test/support/sidecar-client.js";
import { fastifyMeshPlugin } from "../src/index.js";

const SHELF_IP = "127.0.0.33";
const CLIENT_IP = "127.0.0.34";

const cleanup: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const step of cleanup.reverse()) await step().catch(() => {});
});

it("Fastify served through mesh.serverFactory gets the shared transport-header port", async () => {
  const stateDir = await mkdtemp(path.join(tmpdir(), "inmesh-fastify-th-"));
  cleanup.push(() => rm(stateDir, { recursive: true, force: true }));
  const appPort = await freeLoopbackPort(SHELF_IP);
  const inboundPort = await freeLoopbackPort(SHELF_IP);
  const controlPlane: ControlPlane = await startControlPlane({
    manifests: [
      {
        path: "app.yaml",
        text: `
apiVersion: v1
kind: Pod
metadata:
  name: shelf-0
  namespace: shop
  labels: { app: shelf, linkerd.io/control-plane-ns: linkerd }
  annotations: { inmesh.dev/inbound-port: "${inboundPort}" }
spec:
  serviceAccountName: shelf
  containers: [{ name: app, ports: [{ name: http, containerPort: ${appPort} }] }]
status: { podIP: ${SHELF_IP} }
---
apiVersion: v1
kind: Pod
metadata: { name: client-0, namespace: shop, labels: { app: client, linkerd.io/control-plane-ns: linkerd } }
spec: { serviceAccountName: client, containers: [{ name: app }] }
status: { podIP: ${CLIENT_IP} }
`,
      },
    ],
    stateDir,
    ports: { identity: 0, destination: 0, policy: 0 },
    watch: false,
  });
  cleanup.push(() => controlPlane.close());

  const mesh: Mesh = createMesh({
    env: (await controlPlane.writeEnv("shelf-0", { namespace: "shop" })).variables,
    admin: false,
    tracing: false,
  });
  cleanup.push(() => mesh.close());
  const app: FastifyInstance = Fastify({ serverFactory: mesh.serverFactory({ port: appPort }) });
  cleanup.push(() => app.close());
  await app.register(fastifyMeshPlugin);
  app.get("/shelf", async (request) => ({ app: "shelf", peer: request.meshPeer }));
  // Only Fastify's listen: the shared port starts with the first served port, before ready().
  await app.listen({ port: appPort, host: SHELF_IP });
  await expect.poll(() => mesh.transportHeader?.address()?.port, { timeout: 5000 }).toBe(inboundPort);
  await mesh.ready({ signal: AbortSignal.timeout(15_000) });

  const client = createMesh({
    env: (await controlPlane.writeEnv("client-0", { namespace: "shop" })).variables,
    admin: false,
    tracing: false,
    transportHeader: false,
  });
  cleanup.push(() => client.close());
  await client.ready({ signal: AbortSignal.timeout(15_000) });
  const answer = await h2GetThroughTransportHeader(
    client.identity,
    {
      host: SHELF_IP,
      inboundPort,
      serverName: "shelf.shop.serviceaccount.identity.linkerd.cluster.local",
      port: appPort,
    },
    "/shelf",
  );
  expect(answer.status).toBe(200);
  expect(JSON.parse(answer.body)).toEqual({
    app: "shelf",
    peer: {
      kind: "mesh",
      name: "client.shop.serviceaccount.identity.linkerd.cluster.local",
      tls: "established",
    },
  });
});
