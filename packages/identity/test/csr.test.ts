import { createPrivateKey, createPublicKey } from "node:crypto";
import { MeshErrorCode } from "@inmesh/core";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CertificateAuthority } from "../../control-plane/src/ca.js";
import { createIdentityKey } from "../src/index.js";
import { createTestCa, openssl, scratchDir, WORKLOAD } from "./support/identity-server.js";

describe("workload key and CSR", () => {
  let ca: CertificateAuthority;
  let dir: Awaited<ReturnType<typeof scratchDir>>;

  beforeAll(async () => {
    ca = await createTestCa();
    dir = await scratchDir();
  });
  afterAll(() => dir.remove());

  it("is a DER PKCS#10 that `openssl req -verify` accepts: CN and one DNS SAN = identity, P-256, ECDSA-SHA256", async () => {
    const key = await createIdentityKey(WORKLOAD);
    const csrFile = await dir.write("csr.der", key.csrDer);
    const verified = await openssl(["req", "-inform", "DER", "-in", csrFile, "-verify", "-noout"]);
    expect(verified.code, verified.stderr).toBe(0);
    expect(verified.stdout + verified.stderr).toMatch(/verify OK/i);
    const text = (await openssl(["req", "-inform", "DER", "-in", csrFile, "-noout", "-text"])).stdout;
    expect(text).toContain(`Subject: CN = ${WORKLOAD}`);
    expect(text).toContain("NIST CURVE: P-256");
    expect(text).toContain("Signature Algorithm: ecdsa-with-SHA256");
    const sanLines = text.split("\n").filter((line) => /DNS:|URI:|IP Address:|email:/.test(line));
    expect(sanLines.map((line) => line.trim())).toEqual([`DNS:${WORKLOAD}`]);

    const privateKey = createPrivateKey(key.privateKeyPem);
    expect(privateKey.asymmetricKeyDetails?.namedCurve).toBe("prime256v1");
    expect(
      createPublicKey(privateKey).export({ format: "der", type: "spki" }).equals(key.publicKeySpkiDer),
    ).toBe(true);
    const publicFromCsr = await openssl(["req", "-inform", "DER", "-in", csrFile, "-noout", "-pubkey"]);
    expect(
      createPublicKey(publicFromCsr.stdout)
        .export({ format: "der", type: "spki" })
        .equals(key.publicKeySpkiDer),
    ).toBe(true);
  });

  it("passes linkerd2's checkCSR rules for any well-formed identity (property, with openssl as the second judge)", async () => {
    const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?$/);
    await fc.assert(
      fc.asyncProperty(label, label, async (serviceAccount, namespace) => {
        const name = `${serviceAccount}.${namespace}.serviceaccount.identity.linkerd.cluster.local`;
        const key = await createIdentityKey(name);
        // The CA applies checkCSR and throws CsrRejectedError on any violation.
        const issued = await ca.issue(key.csrDer, name);
        expect(issued.leafDer.byteLength).toBeGreaterThan(0);
        const file = await dir.write("property.der", key.csrDer);
        expect((await openssl(["req", "-inform", "DER", "-in", file, "-verify", "-noout"])).code).toBe(0);
      }),
      { numRuns: 25 },
    );
  });

  it("generates a fresh key each time and refuses names that are not identities", async () => {
    const [first, second] = await Promise.all([createIdentityKey(WORKLOAD), createIdentityKey(WORKLOAD)]);
    expect(first.publicKeySpkiDer.equals(second.publicKeySpkiDer)).toBe(false);
    for (const bad of ["", "UPPER.case", "a..b", "x,DNS:evil", "*.wild.card", "nul\u0000byte", "é.example"]) {
      await expect(createIdentityKey(bad), bad).rejects.toMatchObject({ code: MeshErrorCode.INVALID_ARG });
    }
  });
});
