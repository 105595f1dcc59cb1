import { X509Certificate } from "node:crypto";
import { IdentityError, MeshErrorCode } from "@inmesh/core";
import { DerError, OID, parseBasicConstraints, parseCertificate } from "./der.js";
import { derToPem, pemToDers } from "./pem.js";

/** A parsed, validated trust-anchor bundle. Immutable; replaced as a whole on rotation. */
export interface TrustAnchors {
  /** Normalized PEM (only the CERTIFICATE blocks, re-encoded), what OpenSSL is given. */
  readonly pem: string;
  readonly ders: readonly Buffer[];
  /** Parsed by OpenSSL (node:crypto). */
  readonly certificates: readonly X509Certificate[];
  /** SHA-256 fingerprints, colon-separated hex, in bundle order. */
  readonly fingerprints: readonly string[];
}

/** A bundle larger than this is not a trust-anchor bundle. */
export const MAX_TRUST_ANCHORS = 64;
const MAX_ANCHOR_BYTES = 16 * 1024;

function invalid(message: string, cause?: unknown): IdentityError {
  return new IdentityError(MeshErrorCode.TRUST_ANCHORS_INVALID, `invalid trust anchors: ${message}`, {
    ...(cause === undefined ? {} : { cause }),
  });
}

/**
 * Parses a PEM bundle of CA certificates. Each must parse in OpenSSL and carry basicConstraints
 * CA:TRUE. Expired anchors are kept (a bundle may hold an outgoing root); they simply verify nothing.
 * Throws IdentityError(MESH_ERR_TRUST_ANCHORS_INVALID).
 */
export function parseTrustAnchors(pem: string): TrustAnchors {
  if (typeof pem !== "string") throw invalid("expected a PEM string");
  let ders: Buffer[];
  try {
    ders = pemToDers(pem, MAX_TRUST_ANCHORS);
  } catch (error) {
    throw invalid((error as Error).message, error);
  }
  if (ders.length === 0) throw invalid("no PEM CERTIFICATE block found");
  const certificates: X509Certificate[] = [];
  for (const [index, der] of ders.entries()) {
    if (der.byteLength > MAX_ANCHOR_BYTES)
      throw invalid(`certificate #${index} is larger than ${MAX_ANCHOR_BYTES} bytes`);
    let certificate: X509Certificate;
    let isCa = false;
    try {
      certificate = new X509Certificate(der);
      const basic = parseCertificate(der).extensions.find(
        (extension) => extension.oid === OID.basicConstraints,
      );
      isCa = basic !== undefined && parseBasicConstraints(basic.value).ca;
    } catch (error) {
      const why = error instanceof DerError ? error.message : "not a DER certificate";
      throw invalid(`certificate #${index}: ${why}`, error);
    }
    if (!isCa)
      throw invalid(`certificate #${index} (${certificate.subject.replace(/\n/g, ", ")}) is not a CA`);
    certificates.push(certificate);
  }
  return {
    pem: ders.map((der) => derToPem(der)).join(""),
    ders,
    certificates,
    fingerprints: certificates.map((certificate) => certificate.fingerprint256),
  };
}
