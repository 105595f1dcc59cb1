/**
 * Identity on the outbound path: the transport header through our own inbound side (contract §4.4), and
 * R2: once our certificate has expired, requests fail fast with a typed error and none is sent.
 */

import { type ControlPlane, createCertificateAuthority, startControlPlane } from "@inmesh/control-plane";
import { hasMeshErrorCode, MeshErrorCode } from "@inmesh/core";
import type { Discovery } from "@inmesh/destination";
import { createIdentityProvider, type IdentityProvider } from "@inmesh/identity";
import { freeLoopbackPort } from "@inmesh/testing/ports";
import { request } from "undici";
import { afterAll, describe, expect, it } from "vitest";
import { createMeshDispatcher } from "../../src/index.js";
import {
  CLIENT_POD,
  controlPlaneDiscovery,
  eventually,
  identityOf,
  manifests,
  NS,
  podIdentity,
  podYaml,
  serviceYaml,
  startMeshedBackend,
  startTestControlPlane,
  type TestBackend,
} from "./support.js";

describe("transport header through the inbound side", () => {
  const closers: (() => Promise<unknown>)[] = [];
  afterAll(async () => {
    for (const close of closers.reverse()) await close().catch(() => undefined);
  });

  it("reaches a meshed server on its inbound port with ALPN transport.l5d.io/v1 and a transport header", async () => {
    const appPort = await freeLoopbackPort();
    const inboundPort = await freeLoopbackPort();
    const pod = {
      name: "direct-0",
      sa: "direct",
      app: "direct",
      port: appPort,
      annotations: { "inmesh.dev/inbound-port": String(inboundPort) },
    };
    const cp = await startTestControlPlane(
      manifests(podYaml(CLIENT_POD), podYaml(pod), serviceYaml("direct", "direct")),
    );
    closers.push(() => cp.close());
    const client = await podIdentity(cp, CLIENT_POD.name, CLIENT_POD.sa);
    closers.push(() => client.close());
    const serverIdentity = await podIdentity(cp, pod.name, pod.sa);
    closers.push(() => serverIdentity.close());
    const backend = await startMeshedBackend("direct-0", serverIdentity, {
      port: appPort,
      transportHeaderPort: inboundPort,
    });
    closers.push(() => backend.close());
    const discovery = controlPlaneDiscovery(cp);
    closers.push(() => discovery.close());
    const endpoints = discovery.watchEndpoints("direct.default.svc.cluster.local:80");
    closers.push(() => endpoints.close());
    const set = await endpoints.ready({ timeoutMs: 5000 });
    expect(set.endpoints[0]?.opaqueTransportPort).toBe(inboundPort);

    const dispatcher = createMeshDispatcher({ identity: client, discovery });
    closers.push(() => dispatcher.close());
    const response = await request("http://direct.default.svc.cluster.local/through-4143", {
      dispatcher,
      method: "POST",
      body: "via the transport header",
    });
    expect(response.statusCode).toBe(200);
    await response.body.text();
    expect(backend.requests).toHaveLength(1);
    expect(backend.requests[0]?.url).toBe("/through-4143");
    expect(backend.requests[0]?.clientId).toBe(identityOf("client"));
    expect(backend.requests[0]?.bodyBytes).toBe("via the transport header".length);

    // The same service without the transport header goes straight to the application port.
    const direct = createMeshDispatcher({ identity: client, discovery, useTransportHeader: false });
    closers.push(() => direct.close());
    const second = await request("http://direct.default.svc.cluster.local/app-port", { dispatcher: direct });
    expect(second.statusCode).toBe(200);
    await second.body.text();
    expect(backend.requests[1]?.url).toBe("/app-port");
  });
});

describe("an expired identity (R2)", () => {
  let cp: ControlPlane | undefined;
  let client: IdentityProvider | undefined;
  let serverIdentity: IdentityProvider | undefined;
  let backend: TestBackend | undefined;
  let discovery: Discovery | undefined;

  afterAll(async () => {
    await backend?.close();
    await discovery?.close();
    await client?.close();
    await serverIdentity?.close();
    await cp?.close();
  });

  it("fails requests fast with MESH_ERR_IDENTITY_EXPIRED and sends none", async () => {
    const pod = { name: "books-0", sa: "books", app: "books", port: 1 };
    const certificateAuthority = await createCertificateAuthority({
      issuanceLifetimeMs: 3000,
      clockSkewAllowanceMs: 0,
    });
    const files = (port: number) =>
      manifests(podYaml(CLIENT_POD), podYaml({ ...pod, port }), serviceYaml("books", "books"));
    cp = await startControlPlane({
      manifests: files(1),
      ports: { identity: 0, destination: 0, policy: 0 },
      certificateAuthority,
      certificateLifetimeMs: 3000,
      watch: false,
    });
    const running = cp;
    const identityFor = (name: string, sa: string) =>
      createIdentityProvider({
        localName: identityOf(sa),
        trustAnchorsPem: running.trustAnchorsPem,
        identityServiceAddress: running.addresses.identity,
        identityServiceName: running.serverNames.identity,
        readToken: () => running.tokenFor(NS, name),
        // No refresh before expiry: the certificate runs out as if the identity service were down.
        minRefreshMs: 600_000,
      });
    client = identityFor(CLIENT_POD.name, CLIENT_POD.sa);
    serverIdentity = identityFor(pod.name, pod.sa);
    await client.ready({ signal: AbortSignal.timeout(5000) });
    await serverIdentity.ready({ signal: AbortSignal.timeout(5000) });
    backend = await startMeshedBackend(pod.name, serverIdentity);
    cp.setManifests(files(backend.port));
    discovery = controlPlaneDiscovery(cp);
    const dispatcher = createMeshDispatcher({ identity: client, discovery });
    try {
      const first = await request("http://books.default.svc.cluster.local/", { dispatcher });
      expect(first.statusCode).toBe(200);
      await first.body.text();

      const expiring = client;
      await eventually(() => expiring.state().status === "expired", 8000, "client certificate expiry");
      const started = performance.now();
      const error = await request("http://books.default.svc.cluster.local/", { dispatcher }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(hasMeshErrorCode(error, MeshErrorCode.IDENTITY_EXPIRED)).toBe(true);
      expect((error as Error).name).toBe("IdentityError");
      // Fail fast: no handshake, no queueing (a loose bound, not a latency target).
      expect(performance.now() - started).toBeLessThan(1000);
      expect(backend.arrivals).toBe(1);
    } finally {
      await dispatcher.close();
    }
  });
});
