import { X509Certificate } from "node:crypto";
import { status } from "@grpc/grpc-js";
import { type ControlPlane, createCertificateAuthority, startControlPlane } from "@inmesh/control-plane";
import { identity, timestampToMs } from "@inmesh/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  CLIENT,
  eventually,
  identityOf,
  linkerdCsr,
  makeCsr,
  plaintext,
  podYaml,
  tlsClient,
  unary,
  WEB_1,
} from "./helpers.js";

const EPHEMERAL = { identity: 0, destination: 0, policy: 0 };
const LIFETIME_MS = 60_000;
const WEB = identityOf("web");

describe("Identity.Certify", () => {
  let cp: ControlPlane;
  let client: identity.IdentityClient;
  let tlsIdentityClient: identity.IdentityClient;
  let webToken: Buffer;

  const certify = (request: Partial<identity.CertifyRequest>, via = client) =>
    unary<identity.CertifyResponse>((callback) =>
      via.certify(identity.CertifyRequest.fromPartial(request), callback),
    );

  beforeAll(async () => {
    cp = await startControlPlane({
      manifests: [
        { path: "web.yaml", text: podYaml(WEB_1) },
        { path: "client.yaml", text: podYaml(CLIENT) },
      ],
      ports: EPHEMERAL,
      certificateLifetimeMs: LIFETIME_MS,
    });
    client = new identity.IdentityClient(cp.addresses.identity, plaintext());
    const tls = await tlsClient(cp, cp.serverNames.identity);
    tlsIdentityClient = new identity.IdentityClient(cp.addresses.identity, tls.credentials, tls.options);
    webToken = Buffer.from(await cp.tokenFor("default", "web-1"));
  });
  afterAll(async () => {
    client?.close();
    tlsIdentityClient?.close();
    await cp?.close();
  });

  for (const transport of ["plaintext loopback", "TLS without a client certificate"] as const) {
    it(`issues a Linkerd leaf for the token's workload over ${transport}`, async () => {
      const via = transport === "plaintext loopback" ? client : tlsIdentityClient;
      const before = Date.now();
      const { response, error } = await certify(
        { identity: WEB, token: webToken, certificateSigningRequest: await linkerdCsr(WEB) },
        via,
      );
      expect(error).toBeUndefined();
      const leaf = new X509Certificate(response?.leafCertificate as Buffer);
      expect(leaf.subjectAltName).toBe(`DNS:${WEB}`);
      const [issuerDer] = response?.intermediateCertificates ?? [];
      const issuer = new X509Certificate(issuerDer as Buffer);
      expect(leaf.verify(issuer.publicKey)).toBe(true);
      const anchor = new X509Certificate(cp.trustAnchorsPem);
      expect(issuer.verify(anchor.publicKey)).toBe(true);
      const validUntil = timestampToMs(response?.validUntil) as number;
      expect(validUntil).toBe(new Date(leaf.validTo).getTime());
      expect(validUntil).toBeGreaterThan(before + LIFETIME_MS - 2000);
      expect(validUntil).toBeLessThan(Date.now() + LIFETIME_MS + 60_000);
    });
  }

  it("refuses empty fields and CSRs that are not DER with INVALID_ARGUMENT", async () => {
    const csr = await linkerdCsr(WEB);
    const cases: Partial<identity.CertifyRequest>[] = [
      { identity: "", token: webToken, certificateSigningRequest: csr },
      { identity: WEB, token: Buffer.alloc(0), certificateSigningRequest: csr },
      { identity: WEB, token: webToken, certificateSigningRequest: Buffer.alloc(0) },
      {
        identity: WEB,
        token: webToken,
        certificateSigningRequest: Buffer.from("-----BEGIN CERTIFICATE REQUEST-----"),
      },
    ];
    for (const request of cases) {
      const { error } = await certify(request);
      expect(error?.code, JSON.stringify(error?.details)).toBe(status.INVALID_ARGUMENT);
    }
  });

  it("refuses a token it never issued with FAILED_PRECONDITION", async () => {
    const { error } = await certify({
      identity: WEB,
      token: Buffer.from("bm90LWEtdG9rZW4tdGhhdC13ZS1pc3N1ZWQ"),
      certificateSigningRequest: await linkerdCsr(WEB),
    });
    expect(error?.code).toBe(status.FAILED_PRECONDITION);
    expect(error?.details).toContain("token could not be authenticated");
  });

  it("refuses an identity that is not the token's workload identity with FAILED_PRECONDITION", async () => {
    const other = identityOf("client");
    const { error } = await certify({
      identity: other,
      token: webToken,
      certificateSigningRequest: await linkerdCsr(other),
    });
    expect(error?.code).toBe(status.FAILED_PRECONDITION);
    expect(error?.details).toContain("did not match");
  });

  it("refuses CSRs that break checkCSR with FAILED_PRECONDITION", async () => {
    const csrs = [
      await makeCsr({ commonName: WEB, dnsNames: [identityOf("client")] }),
      await makeCsr({ commonName: WEB, dnsNames: [WEB, identityOf("client")] }),
      await makeCsr({ commonName: WEB, dnsNames: [WEB], uris: ["spiffe://cluster.local/ns/default/sa/web"] }),
      await makeCsr({ commonName: "someone-else", dnsNames: [WEB] }),
      await makeCsr({ commonName: WEB }),
    ];
    for (const certificateSigningRequest of csrs) {
      const { error } = await certify({ identity: WEB, token: webToken, certificateSigningRequest });
      expect(error?.code, error?.details).toBe(status.FAILED_PRECONDITION);
    }
  });

  it("answers UNAVAILABLE while its issuer cannot sign (expired)", async () => {
    const ca = await createCertificateAuthority();
    await using shortLived = await startControlPlane({
      manifests: [{ path: "web.yaml", text: podYaml(WEB_1) }],
      ports: EPHEMERAL,
      certificateAuthority: ca,
    });
    const token = Buffer.from(await shortLived.tokenFor("default", "web-1"));
    // Rotated only once the control plane runs, so a slow start can never meet an expired issuer.
    await ca.rotateIssuer({ lifetimeMs: 1000 });
    await eventually(() => ca.issuerNotAfterMs < Date.now(), 5000, "issuer expiry");
    const expiring = new identity.IdentityClient(shortLived.addresses.identity, plaintext());
    const request = identity.CertifyRequest.fromPartial({
      identity: WEB,
      token,
      certificateSigningRequest: await linkerdCsr(WEB),
    });
    const { error } = await unary<identity.CertifyResponse>((callback) =>
      expiring.certify(request, callback),
    );
    expiring.close();
    expect(error?.code).toBe(status.UNAVAILABLE);
  });
});
