import { generateKeyPairSync, sign } from "node:crypto";
import { isDnsName, MeshError, MeshErrorCode } from "@inmesh/core";
import { oidHex } from "./der.js";

// The CSR is a fixed shape (one CN, one DNS SAN, P-256, ECDSA-SHA256), encoded here in DER directly:
// loading a general X.509 library for it cost ~100 ms of CPU at every process start (S11), and
// `openssl req -verify` plus the CA's checkCSR rules are the tests that judge the encoding.

function tlv(tag: number, content: Buffer): Buffer {
  const length = content.byteLength;
  let header: Buffer;
  if (length < 0x80) header = Buffer.from([tag, length]);
  else if (length < 0x100) header = Buffer.from([tag, 0x81, length]);
  else header = Buffer.from([tag, 0x82, length >> 8, length & 0xff]);
  return Buffer.concat([header, content]);
}
const sequence = (...items: Buffer[]) => tlv(0x30, Buffer.concat(items));
const set = (...items: Buffer[]) => tlv(0x31, Buffer.concat(items));
const oid = (dotted: string) => tlv(0x06, Buffer.from(oidHex(dotted), "hex"));

const OID_COMMON_NAME = "2.5.4.3";
const OID_EXTENSION_REQUEST = "1.2.840.113549.1.9.14";
const OID_SUBJECT_ALT_NAME = "2.5.29.17";
const OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2";

/** DER PKCS#10 (RFC 2986): subject CN=identity, extensionRequest with one DNS SAN, ECDSA-SHA256. */
function encodeCsr(identity: string, spki: Buffer, sign256: (data: Buffer) => Buffer): Buffer {
  const name = Buffer.from(identity, "utf8");
  const subject = sequence(set(sequence(oid(OID_COMMON_NAME), tlv(0x0c, name))));
  // GeneralNames with one dNSName ([2] IMPLICIT IA5String); the extension is not critical.
  const san = sequence(oid(OID_SUBJECT_ALT_NAME), tlv(0x04, sequence(tlv(0x82, name))));
  const attributes = tlv(0xa0, sequence(oid(OID_EXTENSION_REQUEST), set(sequence(san))));
  const info = sequence(tlv(0x02, Buffer.from([0])), subject, spki, attributes);
  const signature = sign256(info);
  return sequence(
    info,
    sequence(oid(OID_ECDSA_SHA256)),
    tlv(0x03, Buffer.concat([Buffer.from([0]), signature])),
  );
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
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const spki = publicKey.export({ format: "der", type: "spki" });
  // node:crypto signs ECDSA as a DER Ecdsa-Sig-Value, the form X.509 signatures carry.
  const csrDer = encodeCsr(identity, spki, (data) => sign("sha256", data, privateKey));
  return {
    identity,
    privateKeyPem: privateKey.export({ format: "pem", type: "pkcs8" }) as string,
    publicKeySpkiDer: spki,
    csrDer,
  };
}
