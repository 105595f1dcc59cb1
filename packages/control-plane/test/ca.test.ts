import { execFile } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdtemp, readFile, rm, stat, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError, MeshErrorCode } from "@inmesh/core";
import * as x509 from "@peculiar/x509";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type CertificateAuthority,
  CsrRejectedError,
  certificateAuthorityFromPem,
  createCertificateAuthority,
  loadOrCreateCertificateAuthority,
} from "../src/ca.js";

const OPENSSL = "/usr/bin/openssl";
const IDENTITY = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";

function run(args: string[], input?: Uint8Array): Promise<{ code: number; out: string; stdout: Buffer }> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      OPENSSL,
      args,
      { encoding: "buffer", timeout: 15_000 },
      (error, stdout, stderr) => {
        if (error && typeof error.code !== "number") {
          reject(error);
          return;
        }
        resolve({
          code: error ? (error.code as number) : 0,
          out: stdout.toString() + stderr.toString(),
          stdout,
        });
      },
    );
    child.stdin?.on("error", () => undefined);
    child.stdin?.end(input ?? "");
  });
}

function pem(der: Uint8Array): string {
  return `-----BEGIN CERTIFICATE-----\n${Buffer.from(der)
    .toString("base64")
    .replace(/.{1,64}/g, "$&\n")}-----END CERTIFICATE-----\n`;
}

describe("certificate authority", () => {
  let dir: string;
  let ca: CertificateAuthority;
  const file = async (name: string, content: string | Uint8Array) => {
    const path = join(dir, name);
    await writeFile(path, content);
    return path;
  };

  /** A CSR made by the openssl CLI, an implementation independent of ours. */
  async function opensslCsr(options: {
    subject: string;
    sans?: string;
    keyAlgorithm?: string[];
  }): Promise<Buffer> {
    const keyFile = join(
      dir,
      `key-${Math.abs(options.subject.length * 7919 + (options.sans?.length ?? 0))}-${Date.now()}.pem`,
    );
    const keyArgs = options.keyAlgorithm ?? ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
    expect((await run(["genpkey", ...keyArgs, "-out", keyFile])).code).toBe(0);
    const args = ["req", "-new", "-key", keyFile, "-subj", options.subject, "-outform", "DER"];
    if (options.sans) args.push("-addext", `subjectAltName=${options.sans}`);
    const result = await run(args);
    expect(result.code, result.out).toBe(0);
    return result.stdout;
  }

  async function opensslVerify(
    anchorsPem: string,
    chainDer: readonly Uint8Array[],
    leafDer: Uint8Array,
    purpose = "sslclient",
  ) {
    const anchors = await file("verify-anchors.pem", anchorsPem);
    const chain = await file("verify-chain.pem", chainDer.map(pem).join(""));
    const leaf = await file("verify-leaf.pem", pem(leafDer));
    return run([
      "verify",
      "-x509_strict",
      "-purpose",
      purpose,
      "-CAfile",
      anchors,
      "-untrusted",
      chain,
      leaf,
    ]);
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "inmesh-ca-"));
    ca = await createCertificateAuthority();
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("creates a P-256 root and a P-256 issuer named identity.<cpns>.<td>", async () => {
    const root = new X509Certificate(ca.trustAnchorsPem);
    const issuer = new X509Certificate(ca.issuerChainDer[0] as Buffer);
    expect(ca.issuerChainDer).toHaveLength(1);
    expect(root.ca).toBe(true);
    expect(issuer.ca).toBe(true);
    expect(issuer.subject).toBe("CN=identity.linkerd.cluster.local");
    expect(ca.issuerName).toBe("identity.linkerd.cluster.local");
    for (const certificate of [root, issuer]) {
      expect(certificate.publicKey.asymmetricKeyDetails?.namedCurve).toBe("prime256v1");
    }
    expect(issuer.checkIssued(root) && issuer.verify(root.publicKey)).toBe(true);
    const text = (await run(["x509", "-noout", "-text"], Buffer.from(ca.issuerCertPem))).out;
    expect(text).toMatch(/Basic Constraints: critical\s+CA:TRUE, pathlen:0/);
    expect(text).toMatch(/Key Usage: critical\s+Certificate Sign, CRL Sign/);

    const custom = await createCertificateAuthority({
      trustDomain: "example.org",
      controlPlaneNamespace: "mesh",
    });
    expect(new X509Certificate(custom.issuerCertPem).subject).toBe("CN=identity.mesh.example.org");
  });

  it("issues leaves exactly as linkerd2's identity controller does (contract §3.4)", async () => {
    const csr = await opensslCsr({ subject: `/CN=${IDENTITY}`, sans: `DNS:${IDENTITY}` });
    const nowMs = Date.now();
    const lifetimeMs = 3_600_000;
    const issued = await ca.issue(csr, IDENTITY, { lifetimeMs, nowMs });
    const leaf = new X509Certificate(issued.leafDer);
    const parsed = new x509.X509Certificate(issued.leafDer);
    expect(issued.chainDer).toEqual(ca.issuerChainDer);
    expect(leaf.subject).toBe(`CN=${IDENTITY}`);
    expect(leaf.subjectAltName).toBe(`DNS:${IDENTITY}`);
    expect(leaf.ca).toBe(false);
    expect(parsed.signatureAlgorithm).toMatchObject({ name: "ECDSA", hash: { name: "SHA-256" } });
    const keyUsage = parsed.getExtension(x509.KeyUsagesExtension);
    expect(keyUsage?.critical).toBe(true);
    expect(keyUsage?.usages).toBe(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment);
    expect(parsed.getExtension(x509.ExtendedKeyUsageExtension)?.usages).toEqual([
      x509.ExtendedKeyUsage.serverAuth,
      x509.ExtendedKeyUsage.clientAuth,
    ]);
    const sans = parsed.getExtension(x509.SubjectAlternativeNameExtension)?.names.items ?? [];
    expect(sans.map((name) => [name.type, name.value])).toEqual([["dns", IDENTITY]]);
    // Validity window: now − skew (20 s) … now + lifetime + skew, at second precision.
    const second = (ms: number) => Math.floor(ms / 1000) * 1000;
    expect(parsed.notBefore.getTime()).toBe(second(nowMs - 20_000));
    expect(parsed.notAfter.getTime()).toBe(second(nowMs + lifetimeMs + 20_000));
    expect(issued.validUntilMs).toBe(parsed.notAfter.getTime());
    expect(issued.serial).toBe(leaf.serialNumber.toLowerCase().replace(/^0+/, "").padStart(16, "0"));

    for (const purpose of ["sslclient", "sslserver"]) {
      const verdict = await opensslVerify(ca.trustAnchorsPem, issued.chainDer, issued.leafDer, purpose);
      expect(verdict.out).toContain(": OK");
    }

    const next = await ca.issue(csr, IDENTITY);
    const third = await ca.issue(csr, IDENTITY);
    expect(BigInt(`0x${next.serial}`)).toBeGreaterThan(BigInt(`0x${issued.serial}`));
    expect(BigInt(`0x${third.serial}`)).toBeGreaterThan(BigInt(`0x${next.serial}`));
    expect(new X509Certificate(next.leafDer).validTo).not.toBe(leaf.validTo);
  });

  it("accepts an empty CN, making the SAN critical as RFC 5280 asks", async () => {
    const csr = await opensslCsr({ subject: "/", sans: `DNS:${IDENTITY}` });
    const issued = await ca.issue(csr, IDENTITY);
    const parsed = new x509.X509Certificate(issued.leafDer);
    expect(parsed.subject).toBe("");
    expect(parsed.getExtension(x509.SubjectAlternativeNameExtension)?.critical).toBe(true);
    expect((await opensslVerify(ca.trustAnchorsPem, issued.chainDer, issued.leafDer)).out).toContain(": OK");
  });

  it("rejects CSRs that linkerd's checkCSR rejects, with a typed reason", async () => {
    const cases: { name: string; csr: () => Promise<Uint8Array>; identity?: string; reason: string }[] = [
      {
        name: "two DNS SANs",
        reason: "dns-san-count",
        csr: () => opensslCsr({ subject: `/CN=${IDENTITY}`, sans: `DNS:${IDENTITY},DNS:other.example` }),
      },
      { name: "no SAN", reason: "dns-san-count", csr: () => opensslCsr({ subject: `/CN=${IDENTITY}` }) },
      {
        name: "DNS SAN for another identity",
        reason: "dns-san-mismatch",
        csr: () =>
          opensslCsr({
            subject: "/",
            sans: "DNS:admin.kube-system.serviceaccount.identity.linkerd.cluster.local",
          }),
      },
      {
        name: "CN for another identity",
        reason: "common-name-mismatch",
        csr: () => opensslCsr({ subject: "/CN=admin", sans: `DNS:${IDENTITY}` }),
      },
      {
        name: "URI SAN",
        reason: "forbidden-san",
        csr: () =>
          opensslCsr({
            subject: `/CN=${IDENTITY}`,
            sans: `DNS:${IDENTITY},URI:spiffe://cluster.local/ns/emojivoto/sa/web`,
          }),
      },
      {
        name: "IP SAN",
        reason: "forbidden-san",
        csr: () => opensslCsr({ subject: `/CN=${IDENTITY}`, sans: `DNS:${IDENTITY},IP:10.0.0.1` }),
      },
      {
        name: "email SAN",
        reason: "forbidden-san",
        csr: () => opensslCsr({ subject: `/CN=${IDENTITY}`, sans: `DNS:${IDENTITY},email:a@b.example` }),
      },
      {
        name: "RSA key",
        reason: "key-not-p256",
        csr: () =>
          opensslCsr({
            subject: `/CN=${IDENTITY}`,
            sans: `DNS:${IDENTITY}`,
            keyAlgorithm: ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
          }),
      },
      {
        name: "P-384 key",
        reason: "key-not-p256",
        csr: () =>
          opensslCsr({
            subject: `/CN=${IDENTITY}`,
            sans: `DNS:${IDENTITY}`,
            keyAlgorithm: ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
          }),
      },
      {
        name: "not DER",
        reason: "malformed",
        csr: async () => Buffer.from("-----BEGIN CERTIFICATE REQUEST-----"),
      },
      { name: "oversized", reason: "too-large", csr: async () => Buffer.alloc(64 * 1024, 0x30) },
      {
        name: "tampered signature",
        reason: "bad-signature",
        csr: async () => {
          const der = Buffer.from(await opensslCsr({ subject: `/CN=${IDENTITY}`, sans: `DNS:${IDENTITY}` }));
          // The CN sits inside the signed CertificationRequestInfo; change one letter of it.
          const at = der.indexOf(Buffer.from(IDENTITY));
          der[at] = "x".charCodeAt(0);
          return der;
        },
        identity: `xeb.emojivoto.serviceaccount.identity.linkerd.cluster.local`,
      },
      {
        name: "identity that is not a DNS name",
        reason: "invalid-identity",
        identity: "Web_Admin",
        csr: () => opensslCsr({ subject: "/", sans: `DNS:${IDENTITY}` }),
      },
    ];
    for (const testCase of cases) {
      const error = await ca
        .issue(await testCase.csr(), testCase.identity ?? IDENTITY)
        .catch((caught: unknown) => caught);
      expect(error, testCase.name).toBeInstanceOf(CsrRejectedError);
      expect(error, testCase.name).toMatchObject({
        reason: testCase.reason,
        code: MeshErrorCode.IDENTITY_CSR_REJECTED,
      });
    }
  });

  it("clamps a leaf's notAfter to the issuer's expiry", async () => {
    const shortIssuer = await createCertificateAuthority({
      issuerLifetimeMs: 60_000,
      clockSkewAllowanceMs: 0,
    });
    const issued = await shortIssuer.issueCredentials(IDENTITY, { lifetimeMs: 3_600_000 });
    expect(issued.validUntilMs).toBeLessThanOrEqual(shortIssuer.issuerNotAfterMs);
    expect(issued.validUntilMs).toBeLessThanOrEqual(Date.now() + 60_000);
    const leaf = new X509Certificate(issued.leafDer);
    expect(Date.parse(leaf.validTo)).toBe(issued.validUntilMs);
  });

  it("issueCredentials returns a key and chain that openssl accepts together", async () => {
    const credentials = await ca.issueCredentials(IDENTITY);
    const keyFile = await file("credentials.key", credentials.privateKeyPem);
    const leafFile = await file("credentials.crt", credentials.leafPem);
    const fromKey = await run(["pkey", "-in", keyFile, "-pubout"]);
    const fromCert = await run(["x509", "-in", leafFile, "-noout", "-pubkey"]);
    expect(fromKey.out).toBe(fromCert.out);
    expect(credentials.certificateChainPem.startsWith(credentials.leafPem)).toBe(true);
    expect(credentials.certificateChainPem).toContain(ca.issuerCertPem.trim());
  });

  it("rotates trust anchors old → old+new → new, re-signing the issuer under the new root", async () => {
    const rotating = await createCertificateAuthority();
    const changes: string[] = [];
    const off = rotating.onChange((change) => changes.push(change.kind));
    const oldAnchors = rotating.trustAnchorsPem;
    const oldLeaf = await rotating.issueCredentials(IDENTITY);

    await rotating.beginTrustAnchorRotation();
    const bundle = rotating.trustAnchorsPem;
    expect(bundle.startsWith(oldAnchors)).toBe(true);
    expect(bundle.match(/BEGIN CERTIFICATE/g)).toHaveLength(2);
    expect((await opensslVerify(bundle, oldLeaf.chainDer, oldLeaf.leafDer)).out).toContain(": OK");
    await expect(rotating.completeTrustAnchorRotation()).rejects.toThrow(/rotate the issuer/);

    await rotating.rotateIssuer();
    const newLeaf = await rotating.issueCredentials(IDENTITY);
    const newAnchors = bundle.slice(oldAnchors.length);
    expect((await opensslVerify(bundle, newLeaf.chainDer, newLeaf.leafDer)).out).toContain(": OK");
    expect((await opensslVerify(newAnchors, newLeaf.chainDer, newLeaf.leafDer)).out).toContain(": OK");
    expect((await opensslVerify(oldAnchors, newLeaf.chainDer, newLeaf.leafDer)).code).not.toBe(0);

    await rotating.completeTrustAnchorRotation();
    expect(rotating.trustAnchorsPem).toBe(newAnchors);
    expect((await opensslVerify(rotating.trustAnchorsPem, oldLeaf.chainDer, oldLeaf.leafDer)).code).not.toBe(
      0,
    );
    expect(changes).toEqual(["trust-anchors", "issuer", "trust-anchors"]);
    off();
  });

  it("persists root and issuer (0600 files in a 0700 directory) and reloads them", async () => {
    const stateDir = join(dir, "state");
    const first = await loadOrCreateCertificateAuthority(stateDir);
    expect((await stat(stateDir)).mode & 0o777).toBe(0o700);
    for (const name of [
      "trust-anchors.pem",
      "root.crt.pem",
      "root.key.pem",
      "issuer.crt.pem",
      "issuer.key.pem",
    ]) {
      expect((await stat(join(stateDir, name))).mode & 0o777, name).toBe(0o600);
    }
    const again = await loadOrCreateCertificateAuthority(stateDir);
    expect(again.trustAnchorsPem).toBe(first.trustAnchorsPem);
    expect(again.issuerCertPem).toBe(first.issuerCertPem);
    const leaf = await again.issueCredentials(IDENTITY);
    expect((await opensslVerify(first.trustAnchorsPem, leaf.chainDer, leaf.leafDer)).out).toContain(": OK");
    const earlier = await first.issueCredentials(IDENTITY);
    expect(BigInt(`0x${leaf.serial}`)).not.toBe(BigInt(`0x${earlier.serial}`));

    // Rotations are persisted too.
    await again.beginTrustAnchorRotation();
    await again.rotateIssuer();
    const reloaded = await loadOrCreateCertificateAuthority(stateDir);
    expect(reloaded.trustAnchorsPem).toBe(again.trustAnchorsPem);
    expect(reloaded.issuerCertPem).toBe(again.issuerCertPem);

    await unlink(join(stateDir, "issuer.key.pem"));
    await expect(loadOrCreateCertificateAuthority(stateDir)).rejects.toBeInstanceOf(ConfigError);
  });

  it("replaces a persisted issuer that would expire within one issuance lifetime", async () => {
    const stateDir = join(dir, "short-issuer");
    const first = await loadOrCreateCertificateAuthority(stateDir, { issuerLifetimeMs: 3_600_000 });
    const reloaded = await loadOrCreateCertificateAuthority(stateDir, { issuerLifetimeMs: 3_600_000 });
    expect(reloaded.trustAnchorsPem).toBe(first.trustAnchorsPem);
    expect(reloaded.issuerCertPem).not.toBe(first.issuerCertPem);
    expect(await readFile(join(stateDir, "issuer.crt.pem"), "utf8")).toBe(reloaded.issuerCertPem);
  });

  it("loads root and issuer made by the openssl CLI (SEC1 keys), and validates them", async () => {
    const ext = await file(
      "ca.ext",
      "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n",
    );
    const rootKey = join(dir, "ext-root.key");
    const rootCrt = join(dir, "ext-root.crt");
    const issuerKey = join(dir, "ext-issuer.key");
    const issuerCsr = join(dir, "ext-issuer.csr");
    const issuerCrt = join(dir, "ext-issuer.crt");
    const commands = [
      ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", rootKey],
      [
        "req",
        "-x509",
        "-new",
        "-key",
        rootKey,
        "-subj",
        "/CN=root.linkerd.cluster.local",
        "-days",
        "30",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        rootCrt,
      ],
      ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", issuerKey],
      ["req", "-new", "-key", issuerKey, "-subj", "/CN=identity.linkerd.cluster.local", "-out", issuerCsr],
      [
        "x509",
        "-req",
        "-in",
        issuerCsr,
        "-CA",
        rootCrt,
        "-CAkey",
        rootKey,
        "-CAcreateserial",
        "-days",
        "7",
        "-extfile",
        ext,
        "-out",
        issuerCrt,
      ],
    ];
    for (const command of commands) expect((await run(command)).code).toBe(0);
    const material = {
      rootPem: await readFile(rootCrt, "utf8"),
      issuerCertPem: await readFile(issuerCrt, "utf8"),
      issuerKeyPem: await readFile(issuerKey, "utf8"),
    };
    expect(material.issuerKeyPem).toContain("BEGIN EC PRIVATE KEY");
    const external = await certificateAuthorityFromPem(material);
    const leaf = await external.issueCredentials(IDENTITY);
    expect((await opensslVerify(material.rootPem, leaf.chainDer, leaf.leafDer)).out).toContain(": OK");
    await expect(external.rotateIssuer()).rejects.toThrow(/root private key/);

    await expect(
      certificateAuthorityFromPem({ ...material, issuerKeyPem: await readFile(rootKey, "utf8") }),
    ).rejects.toMatchObject({
      details: { variable: "issuerKeyPem" },
    });
    await expect(
      certificateAuthorityFromPem({ ...material, rootPem: ca.trustAnchorsPem }),
    ).rejects.toMatchObject({
      details: { variable: "issuerCertPem" },
    });
    await expect(certificateAuthorityFromPem({ ...material, rootPem: "no pem here" })).rejects.toMatchObject({
      details: { variable: "rootPem" },
    });
    const withRootKey = await certificateAuthorityFromPem({
      ...material,
      rootKeyPem: await readFile(rootKey, "utf8"),
    });
    await withRootKey.rotateIssuer();
    const rotatedLeaf = await withRootKey.issueCredentials(IDENTITY);
    expect((await opensslVerify(material.rootPem, rotatedLeaf.chainDer, rotatedLeaf.leafDer)).out).toContain(
      ": OK",
    );
  });

  it("validates its options", async () => {
    await expect(createCertificateAuthority({ trustDomain: "Not A Domain" })).rejects.toMatchObject({
      details: { variable: "trustDomain" },
    });
    await expect(createCertificateAuthority({ controlPlaneNamespace: "a.b" })).rejects.toMatchObject({
      details: { variable: "controlPlaneNamespace" },
    });
    await expect(createCertificateAuthority({ issuanceLifetimeMs: -1 })).rejects.toMatchObject({
      details: { variable: "issuanceLifetimeMs" },
    });
  });
});
