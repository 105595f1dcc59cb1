import { generateKeyPairSync, webcrypto } from "node:crypto";
import { isDnsName, MeshError, MeshErrorCode } from "@inmesh/core";
import * as x509 from "@peculiar/x509";

const EC_P256 = { name: "ECDSA", namedCurve: "P-256" } as const;
const ECDSA_SHA256 = { name: "ECDSA", hash: "SHA-256" } as const;

let providerInstalled = false;
/** @peculiar/x509 needs a WebCrypto implementation on Node; it only builds the CSR, it never verifies. */
function ensureCryptoProvider(): void {
  if (providerInstalled) return;
  x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);
  providerInstalled = true;
}

/** A workload key and its CSR. The private key exists only in this process's memory. */
export interface IdentityKey {
  readonly identity: string;
  /** PKCS#8 PEM, because tls.createSecureContext accepts no KeyObject. Never written anywhere. */
  readonly privateKeyPem: string;
  /** DER SubjectPublicKeyInfo, to check that an issued leaf carries our key. */
  readonly publicKeySpkiDer: Buffer;
  /** DER PKCS#10: CN and exactly one DNS SAN equal to `identity`, ECDSA-SHA256 (contract §3.1). */
  readonly csrDer: Buffer;
}

/**
 * Generates an ECDSA P-256 key with node:crypto and a DER CSR for `identity`, as linkerd2's
 * proxy-identity does (CN=<identity>, DNSNames=[<identity>], no other SAN).
 */
export async function createIdentityKey(identity: string): Promise<IdentityKey> {
  if (!isDnsName(identity)) {
    throw new MeshError(
      MeshErrorCode.INVALID_ARG,
      `identity ${JSON.stringify(identity)} is not a lower-case DNS name`,
    );
  }
  ensureCryptoProvider();
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const pkcs8 = privateKey.export({ format: "der", type: "pkcs8" });
  const spki = publicKey.export({ format: "der", type: "spki" });
  let signingKey: webcrypto.CryptoKey;
  try {
    signingKey = await webcrypto.subtle.importKey("pkcs8", pkcs8, EC_P256, false, ["sign"]);
  } finally {
    pkcs8.fill(0);
  }
  const verifyKey = await webcrypto.subtle.importKey("spki", spki, EC_P256, true, ["verify"]);
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    // isDnsName admits only [a-z0-9.-], so the name cannot inject RDN syntax.
    name: `CN=${identity}`,
    keys: { privateKey: signingKey, publicKey: verifyKey } as never,
    signingAlgorithm: ECDSA_SHA256,
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: "dns", value: identity }], false)],
  });
  return {
    identity,
    privateKeyPem: privateKey.export({ format: "pem", type: "pkcs8" }) as string,
    publicKeySpkiDer: spki,
    csrDer: Buffer.from(csr.rawData),
  };
}
