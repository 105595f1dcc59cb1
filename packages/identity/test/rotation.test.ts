import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CertificateAuthority } from "../../control-plane/src/ca.js";
import { createIdentityProvider, type IdentityProvider, peerIdentity } from "../src/index.js";
import { nextEvent, waitFor } from "./support/events.js";
import {
  createTestCa,
  type IdentityServer,
  scratchDir,
  startIdentityServer,
} from "./support/identity-server.js";
import { type MeshTlsServer, type RoundTrip, startMeshTlsServer, tlsRoundTrip } from "./support/tls-peers.js";

const WEB = "web.shop.serviceaccount.identity.linkerd.cluster.local";
const CLIENT = "client.shop.serviceaccount.identity.linkerd.cluster.local";
const LAGGARD = "laggard.shop.serviceaccount.identity.linkerd.cluster.local";
const OLD_PEER = "old.shop.serviceaccount.identity.linkerd.cluster.local";

describe("trust-anchor rotation old → old+new → new under continuous connections (R1b)", () => {
  let ca: CertificateAuthority;
  let identityServer: IdentityServer;
  let dir: Awaited<ReturnType<typeof scratchDir>>;
  const providers: IdentityProvider[] = [];
  let meshServer: MeshTlsServer;

  function provider(localName: string): IdentityProvider {
    const created = createIdentityProvider({
      env: {},
      localName,
      trustAnchorsPem: ca.trustAnchorsPem,
      readToken: () => `token:${localName}`,
      identityServiceAddress: identityServer.address,
    });
    providers.push(created);
    return created;
  }

  beforeAll(async () => {
    ca = await createTestCa();
    dir = await scratchDir();
    identityServer = await startIdentityServer({
      ca,
      tokens: new Map([WEB, CLIENT, LAGGARD].map((name) => [`token:${name}`, name])),
    });
  });
  afterAll(async () => {
    await meshServer?.close();
    for (const created of providers) await created.close();
    await identityServer.close();
    await dir.remove();
  });

  it("never fails a handshake, presents new serials at once, and finally refuses the old anchor", async () => {
    const web = provider(WEB);
    const client = provider(CLIENT);
    const laggard = provider(LAGGARD);
    await Promise.all([web.ready(), client.ready(), laggard.ready()]);
    const oldAnchors = ca.trustAnchorsPem;
    // A peer that stays on the old root: issued now, never renewed.
    const oldPeer = await ca.issueCredentials(OLD_PEER);
    meshServer = await startMeshTlsServer(web.tlsServerOptions(), (socket) => web.peerIdentity(socket));

    const results: RoundTrip[] = [];
    let stop = false;
    const maxConnections = 4000;
    const worker = async () => {
      while (!stop && results.length < maxConnections) {
        results.push(await tlsRoundTrip(meshServer.port, client.tlsClientOptions(WEB)));
      }
    };
    const workers = Array.from({ length: 4 }, worker);
    const successes = () => results.filter((result) => result.ok).length;
    const runFor = async (count: number) => {
      const target = successes() + count;
      await waitFor(
        () => successes() >= target || results.length >= maxConnections,
        30_000,
        `${count} more connections`,
      );
    };

    await runFor(20);
    // Step 1: distribute the bundle [old, new]; nothing else changes.
    await ca.beginTrustAnchorRotation();
    const bundle = ca.trustAnchorsPem;
    for (const member of [web, client, laggard]) expect(member.setTrustAnchors(bundle)).toBe(true);
    await runFor(20);

    // Step 2: the issuer is re-signed by the new root; workloads renew (the laggard does not, yet).
    await ca.rotateIssuer();
    await web.refresh();
    const webSerial = web.state().serial;
    // The very next handshake already presents the new certificate.
    const next = await tlsRoundTrip(meshServer.port, client.tlsClientOptions(WEB));
    expect(next).toMatchObject({ ok: true, line: CLIENT, peerSerial: webSerial });
    await runFor(10);
    await client.refresh();
    await runFor(20);

    // Step 3: only the new root remains. The laggard's chain no longer verifies, so it renews by itself.
    await ca.completeTrustAnchorRotation();
    const newAnchors = ca.trustAnchorsPem;
    const laggardRenewed = nextEvent(laggard, "refreshed");
    for (const member of [web, client, laggard]) expect(member.setTrustAnchors(newAnchors)).toBe(true);
    await laggardRenewed;
    await runFor(20);

    stop = true;
    await Promise.all(workers);
    const failures = results.filter((result) => !result.ok);
    expect(failures).toEqual([]);
    expect(successes()).toBeGreaterThanOrEqual(90);
    expect(results.every((result) => result.ok && result.line === CLIENT)).toBe(true);
    expect(meshServer.handshakeErrors).toEqual([]);
    expect(web.state().trustAnchorsGeneration).toBe(3);

    // A client on the old anchor connects, but its certificate is not a mesh identity any more.
    const fromOldPeer = await tlsRoundTrip(meshServer.port, {
      key: oldPeer.privateKeyPem,
      cert: oldPeer.certificateChainPem,
      ca: oldAnchors,
      servername: WEB,
      minVersion: "TLSv1.3",
      // Only to observe the server's verdict; the server cert is refused by the old anchor anyway.
      rejectUnauthorized: false,
    });
    expect(fromOldPeer).toMatchObject({ ok: true, line: "none:unverified" });
    expect(meshServer.peers.at(-1)).toEqual({ kind: "none", reason: "unverified" });

    // A server on the old anchor is refused by a client on the new one.
    const oldServer = await startMeshTlsServer(
      { key: oldPeer.privateKeyPem, cert: oldPeer.certificateChainPem, minVersion: "TLSv1.3" },
      (socket) => peerIdentity(socket),
    );
    try {
      const toOldServer = await tlsRoundTrip(oldServer.port, client.tlsClientOptions(OLD_PEER));
      expect(toOldServer.ok).toBe(false);
      if (!toOldServer.ok) expect(toOldServer.error.message).toMatch(/certificate|verify|issuer/i);
    } finally {
      await oldServer.close();
    }
  });
});
