import { createPrivateKey, X509Certificate } from "node:crypto";
import { subscribe, unsubscribe } from "node:diagnostics_channel";
import { writeFile } from "node:fs/promises";
import { hasMeshErrorCode, MeshErrorCode } from "@inmesh/core";
import { timestampFromMs } from "@inmesh/proto";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { CertificateAuthority } from "../../control-plane/src/ca.js";
import {
  createIdentityProvider,
  type IdentityProvider,
  type IdentityProviderOptions,
  peerIdentity,
  refreshDelayMs,
} from "../src/index.js";
import { nextEvent } from "./support/events.js";
import {
  createTestCa,
  IDENTITY_SERVICE_NAME,
  type IdentityServer,
  openssl,
  scratchDir,
  startIdentityServer,
  startTlsTerminator,
  TOKEN,
  WORKLOAD,
} from "./support/identity-server.js";
import { type MeshTlsServer, startMeshTlsServer, tlsRoundTrip } from "./support/tls-peers.js";

describe("createIdentityProvider against a loopback identity service", () => {
  let ca: CertificateAuthority;
  let dir: Awaited<ReturnType<typeof scratchDir>>;
  let tokenFile: string;
  const cleanups: (() => Promise<void>)[] = [];

  beforeAll(async () => {
    // No skew allowance, so short lifetimes really are short.
    ca = await createTestCa({ clockSkewAllowanceMs: 0 });
    dir = await scratchDir();
    tokenFile = await dir.write("token", TOKEN);
  });
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });
  afterAll(async () => {
    await dir.remove();
  });

  async function server(
    options: Partial<Parameters<typeof startIdentityServer>[0]> = {},
  ): Promise<IdentityServer> {
    const started = await startIdentityServer({ ca, ...options });
    cleanups.push(() => started.close());
    return started;
  }

  function provider(address: string, options: IdentityProviderOptions = {}): IdentityProvider {
    const created = createIdentityProvider({
      env: {
        LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS: ca.trustAnchorsPem,
        LINKERD2_PROXY_IDENTITY_LOCAL_NAME: WORKLOAD,
        LINKERD2_PROXY_IDENTITY_TOKEN_FILE: tokenFile,
        LINKERD2_PROXY_IDENTITY_SVC_ADDR: address,
        LINKERD2_PROXY_IDENTITY_SVC_NAME: IDENTITY_SERVICE_NAME,
        LINKERD2_PROXY_IDENTITY_DIR: "/ignored/because/keys/stay/in/memory",
      },
      ...options,
    });
    cleanups.push(() => created.close());
    return created;
  }

  async function meshServer(identity: IdentityProvider): Promise<MeshTlsServer> {
    const started = await startMeshTlsServer(identity.tlsServerOptions(), (socket) => peerIdentity(socket));
    cleanups.push(() => started.close());
    return started;
  }

  it("obtains its first certificate over plaintext loopback, and openssl verifies the chain", async () => {
    const identityServer = await server();
    const published: unknown[] = [];
    const onIssued = (message: unknown) => published.push(message);
    subscribe("mesh:identity:issued", onIssued);
    cleanups.push(async () => {
      unsubscribe("mesh:identity:issued", onIssued);
    });
    const identity = provider(identityServer.address);
    const issued = nextEvent(identity, "issued");
    await identity.ready();
    const event = await issued;
    expect(published).toEqual([event]);
    const state = identity.state();
    expect(state).toMatchObject({
      status: "ready",
      ready: true,
      localName: WORKLOAD,
      certificateGeneration: 1,
    });
    expect(state.serial).toBe(event.serial);
    expect(state.notAfterMs).toBeGreaterThan(Date.now() + 23 * 3_600_000);
    expect(state.nextRefreshInMs).toBeGreaterThan(0);

    const material = identity.material();
    const leaf = new X509Certificate(material.certificateChainPem);
    expect(leaf.subjectAltName).toBe(`DNS:${WORKLOAD}`);
    expect(leaf.checkPrivateKey(createPrivateKey(material.privateKeyPem))).toBe(true);
    const chainFile = await dir.write("chain.pem", material.certificateChainPem);
    const anchorsFile = await dir.write("anchors.pem", material.trustAnchorsPem);
    const leafFile = await dir.write("leaf.pem", leaf.toString());
    for (const purpose of ["sslclient", "sslserver"]) {
      const result = await openssl([
        "verify",
        "-x509_strict",
        "-purpose",
        purpose,
        "-CAfile",
        anchorsFile,
        "-untrusted",
        chainFile,
        leafFile,
      ]);
      expect(result.stdout + result.stderr).toContain(": OK");
      expect(result.code).toBe(0);
    }
  });

  it("uses TLS when forced on loopback: SNI and identity are SVC_NAME, checked against the anchors", async () => {
    const identityServer = await server({ tls: true });
    const identity = provider(identityServer.address, { tlsOnLoopback: true });
    await identity.ready({ signal: AbortSignal.timeout(20_000) });
    expect(identity.state().ready).toBe(true);
  });

  it("forced TLS works through a terminator that negotiates no ALPN, as the identity pod's proxy does", async () => {
    const identityServer = await server();
    const terminator = await startTlsTerminator({
      ca,
      serverName: IDENTITY_SERVICE_NAME,
      backendPort: identityServer.port,
    });
    cleanups.push(() => terminator.close());
    const identity = provider(`127.0.0.1:${terminator.port}`, { tlsOnLoopback: true });
    await identity.ready({ signal: AbortSignal.timeout(20_000) });
    expect(identity.state().certificateGeneration).toBe(1);
  });

  it("forced TLS refuses an identity service whose certificate names another identity", async () => {
    const identityServer = await server();
    const terminator = await startTlsTerminator({
      ca,
      serverName: "impostor.linkerd.serviceaccount.identity.linkerd.cluster.local",
      backendPort: identityServer.port,
    });
    cleanups.push(() => terminator.close());
    const identity = provider(`127.0.0.1:${terminator.port}`, { tlsOnLoopback: true });
    const failed = await nextEvent(identity, "failed");
    expect(failed.operation).toBe("certify");
    expect(failed.error.code).toBe(MeshErrorCode.IDENTITY_CERTIFY_FAILED);
    expect(failed.error.message).toContain("server certificate refused (identity-mismatch)");
    expect(failed.hasValidCertificate).toBe(false);
    expect(identity.state().ready).toBe(false);
    expect(identityServer.tokensSeen).toEqual([]);
  });

  it("refreshes short-lived certificates at 70% of their lifetime, with increasing serials", async () => {
    const identityServer = await server({ lifetimeMs: 3000 });
    const identity = provider(identityServer.address, { minRefreshMs: 100 });
    await identity.ready();
    const first = identity.state();
    const refreshed = await nextEvent(identity, "refreshed");
    const second = await nextEvent(identity, "refreshed");
    expect(refreshed.certificateGeneration).toBe(2);
    expect(second.certificateGeneration).toBe(3);
    const serials = [first.serial, refreshed.serial, second.serial].map((serial) => BigInt(`0x${serial}`));
    expect(serials[1]).toBeGreaterThan(serials[0] as bigint);
    expect(serials[2]).toBeGreaterThan(serials[1] as bigint);
    expect(identity.state().ready).toBe(true);
    // Each generation has its own contexts.
    expect(identity.material().certificateGeneration).toBe(3);
  });

  it("keeps serving while the identity service is down, expires failing fast, then recovers", async () => {
    // Long enough that the checks between the first failure and expiry fit on a loaded machine.
    const identityServer = await server({ lifetimeMs: 8000 });
    const identity = provider(identityServer.address, { minRefreshMs: 200, maxRefreshMs: 60_000 });
    await identity.ready();
    const meshTls = await meshServer(identity);
    const before = identity.state();
    await identityServer.stop();

    const failed = await nextEvent(identity, "failed");
    expect(failed.hasValidCertificate).toBe(true);
    expect(failed.nextAttemptInMs).toBeGreaterThan(0);
    // The current certificate is still served, in and out.
    expect(identity.state()).toMatchObject({ status: "ready", serial: before.serial });
    const stillServing = await tlsRoundTrip(meshTls.port, identity.tlsClientOptions(WORKLOAD));
    expect(stillServing).toMatchObject({ ok: true, line: WORKLOAD });

    const expired = await nextEvent(identity, "expired");
    expect(expired.serial).toBe(before.serial);
    expect(identity.state()).toMatchObject({ status: "expired", ready: false });
    let thrown: unknown;
    try {
      identity.tlsClientOptions(WORKLOAD);
    } catch (error) {
      thrown = error;
    }
    expect(hasMeshErrorCode(thrown, MeshErrorCode.IDENTITY_EXPIRED)).toBe(true);
    expect(() => identity.serverSecureContext()).toThrow(/expired/);
    expect(() => identity.material()).toThrow(/expired/);
    // Inbound: the SNI callback refuses, so the expired certificate is never presented.
    const refused = await tlsRoundTrip(meshTls.port, {
      servername: WORKLOAD,
      rejectUnauthorized: false,
      minVersion: "TLSv1.3",
    });
    expect(refused.ok).toBe(false);

    let readyResolved = false;
    const readyAgain = identity.ready().then(() => {
      readyResolved = true;
    });
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(readyResolved).toBe(false);

    await identityServer.start();
    const recovered = await nextEvent(identity, "refreshed");
    await readyAgain;
    expect(recovered.serial).not.toBe(before.serial);
    expect(identity.state()).toMatchObject({ status: "ready", ready: true, consecutiveFailures: 0 });
    const afterRecovery = await tlsRoundTrip(meshTls.port, identity.tlsClientOptions(WORKLOAD));
    expect(afterRecovery).toMatchObject({ ok: true, line: WORKLOAD });
  });

  it("re-reads the token file on every attempt", async () => {
    const rotated = "rotated-token";
    const identityServer = await server({
      tokens: new Map([
        [TOKEN, WORKLOAD],
        [rotated, WORKLOAD],
      ]),
    });
    const file = await dir.write("rotating-token", TOKEN);
    const identity = provider(identityServer.address, { tokenFile: file });
    await identity.ready();
    await writeFile(file, rotated);
    await identity.refresh();
    expect(identityServer.tokensSeen).toEqual([TOKEN, rotated]);
    await writeFile(file, "");
    await expect(identity.refresh()).rejects.toMatchObject({ code: MeshErrorCode.IDENTITY_CERTIFY_FAILED });
    expect(identity.state().ready).toBe(true);
  });

  it("refuses unusable Certify responses and keeps the current certificate", async () => {
    const identityServer = await server();
    const identity = provider(identityServer.address);
    await identity.ready();
    const serial = identity.state().serial;
    const other = await ca.issueCredentials("other.emojivoto.serviceaccount.identity.linkerd.cluster.local");
    const sameNameOtherKey = await ca.issueCredentials(WORKLOAD);
    const foreignCa = await createTestCa();
    const foreign = await foreignCa.issueCredentials(WORKLOAD);
    const cases: { respond: () => ReturnType<NonNullable<IdentityServer["respond"]>>; reason: string }[] = [
      {
        reason: "identity-mismatch",
        respond: () => ({
          leafCertificate: other.leafDer,
          intermediateCertificates: other.chainDer,
          validUntil: timestampFromMs(other.validUntilMs),
        }),
      },
      {
        reason: "key-mismatch",
        respond: () => ({
          leafCertificate: sameNameOtherKey.leafDer,
          intermediateCertificates: sameNameOtherKey.chainDer,
          validUntil: timestampFromMs(sameNameOtherKey.validUntilMs),
        }),
      },
      {
        reason: "unknown-issuer",
        respond: () => ({
          leafCertificate: foreign.leafDer,
          intermediateCertificates: foreign.chainDer,
          validUntil: timestampFromMs(foreign.validUntilMs),
        }),
      },
      {
        reason: "no-valid-until",
        respond: () => ({
          leafCertificate: other.leafDer,
          intermediateCertificates: [],
          validUntil: undefined,
        }),
      },
      {
        reason: "expired",
        respond: () => ({
          leafCertificate: other.leafDer,
          intermediateCertificates: [],
          validUntil: timestampFromMs(Date.now() - 1000),
        }),
      },
      {
        reason: "malformed",
        respond: () => ({
          leafCertificate: Buffer.from("not a certificate"),
          intermediateCertificates: [],
          validUntil: timestampFromMs(Date.now() + 60_000),
        }),
      },
    ];
    for (const testCase of cases) {
      identityServer.respond = testCase.respond;
      const error = await identity.refresh().catch((caught: unknown) => caught);
      expect(error, testCase.reason).toMatchObject({
        code: MeshErrorCode.IDENTITY_INVALID_CERTIFICATE,
        details: { reason: testCase.reason },
      });
      expect(identity.state()).toMatchObject({ status: "ready", serial });
    }
  });

  it("watches a trust-anchor file: valid bundles replace the anchors, invalid ones are reported and ignored", async () => {
    const identityServer = await server();
    const anchorsFile = await dir.write("watched-anchors.pem", ca.trustAnchorsPem);
    const identity = provider(identityServer.address, {
      trustAnchorsFile: anchorsFile,
      trustAnchorsPollIntervalMs: 50,
    });
    await identity.ready();
    const extra = await createTestCa();
    const updated = nextEvent(identity, "anchors-updated");
    await writeFile(anchorsFile, ca.trustAnchorsPem + extra.trustAnchorsPem);
    expect((await updated).fingerprints).toHaveLength(2);
    expect(identity.state().trustAnchorsGeneration).toBe(2);
    expect(identity.material().trustAnchorsGeneration).toBe(2);

    const rejected = nextEvent(identity, "failed");
    await writeFile(
      anchorsFile,
      "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    );
    const failure = await rejected;
    expect(failure.operation).toBe("trust-anchors");
    expect(failure.error.code).toBe(MeshErrorCode.TRUST_ANCHORS_INVALID);
    expect(identity.trustAnchors().fingerprints).toHaveLength(2);
  });

  it("accepts issuer clock skew within clockSkewToleranceMs and fails closed beyond it (R12)", async () => {
    const identityServer = await server();
    identityServer.clockOffsetMs = 30_000;
    const identity = provider(identityServer.address, { clockSkewToleranceMs: 60_000 });
    await identity.ready();
    identityServer.clockOffsetMs = 5 * 60_000;
    const error = await identity.refresh().catch((caught: unknown) => caught);
    expect(error).toMatchObject({
      code: MeshErrorCode.IDENTITY_INVALID_CERTIFICATE,
      details: { reason: "not-yet-valid" },
    });
    expect((error as Error).message).toContain("not valid yet");
    expect(identity.state().ready).toBe(true);
  });

  it("ready() honours its signal, and close() rejects waiters and stops all work", async () => {
    // Nothing listens here: the provider keeps retrying with backoff.
    const identity = provider("127.0.0.1:1", { minRefreshMs: 200 });
    await expect(identity.ready({ signal: AbortSignal.timeout(50) })).rejects.toMatchObject({
      code: MeshErrorCode.DEADLINE,
    });
    expect(() => identity.tlsClientOptions(WORKLOAD)).toThrow(
      expect.objectContaining({ code: MeshErrorCode.IDENTITY_NOT_READY }),
    );
    const waiting = identity.ready();
    await identity.close();
    await expect(waiting).rejects.toMatchObject({ code: MeshErrorCode.CLOSED });
    expect(identity.state().status).toBe("closed");
    await identity.close();
  });
});

describe("refreshDelayMs", () => {
  const limits = { minRefreshMs: 10_000, maxRefreshMs: 86_400_000, jitterRatio: 0.1 };
  it("is 70% of the remaining lifetime, shortened by at most the jitter, clamped to [min, max]", () => {
    expect(refreshDelayMs(100_000, { ...limits, random: () => 0 })).toBe(70_000);
    expect(refreshDelayMs(100_000, { ...limits, random: () => 0.999 })).toBeCloseTo(63_007, 0);
    expect(refreshDelayMs(1000, { ...limits, random: () => 0 })).toBe(10_000);
    expect(refreshDelayMs(-5, { ...limits, random: () => 0 })).toBe(10_000);
    expect(refreshDelayMs(10 * 86_400_000, { ...limits, random: () => 0 })).toBe(86_400_000);
  });
});
