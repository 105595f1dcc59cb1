import { X509Certificate } from "node:crypto";
import { isDnsName } from "@inmesh/core";
import { parseTrustAnchors, type TrustAnchors } from "./anchors.js";
import {
  type CertificateExtension,
  type DerError,
  KEY_USAGE,
  OID,
  type ParsedCertificate,
  parseBasicConstraints,
  parseCertificate,
  parseExtendedKeyUsage,
  parseGeneralNames,
  parseKeyUsage,
  parseNameConstraints,
} from "./der.js";

/**
 * Why a peer (or issued) certificate was refused. Stable strings: tests, metrics and logs use them.
 */
export type PeerCertificateFailureReason =
  | "malformed"
  | "too-large"
  | "chain-too-long"
  | "expired"
  | "not-yet-valid"
  | "self-signed"
  | "unknown-issuer"
  | "bad-signature"
  | "issuer-not-ca"
  | "path-length-exceeded"
  | "name-constraints"
  | "weak-signature-algorithm"
  | "weak-key"
  | "explicit-ec-parameters"
  | "leaf-key-not-p256"
  | "unknown-critical-extension"
  | "leaf-is-ca"
  | "key-usage"
  | "extended-key-usage"
  | "missing-san"
  | "san-count"
  | "san-not-dns"
  | "san-invalid-dns"
  /** A URI SAN that is not a strictly valid SPIFFE ID of a workload (`spiffe://<trust domain>/<path>`). */
  | "san-invalid-uri"
  | "identity-mismatch"
  /** node:tls (OpenSSL) refused the chain during the handshake; `detail` holds its code. */
  | "tls-unauthorized";

export interface PeerCertificateFailure {
  readonly reason: PeerCertificateFailureReason;
  readonly message: string;
  /** Position in the verified path (0 = leaf) when the failure is about one certificate. */
  readonly depth?: number;
}

export type PeerCertificateVerdict =
  | {
      readonly ok: true;
      readonly identity: string;
      readonly notBeforeMs: number;
      readonly notAfterMs: number;
    }
  | { readonly ok: false; readonly failure: PeerCertificateFailure };

/** Which EKU the leaf must carry: a peer connecting to us ("client"), a server we dial ("server"), our own ("both"). */
export type CertificatePurpose = "client" | "server" | "both";

export interface LeafCheckOptions {
  /** When set, the single SAN (DNS name or SPIFFE URI) must equal it. */
  expectedIdentity?: string;
  /** @default "client" */
  purpose?: CertificatePurpose;
  /** @default 16384 */
  maxCertificateBytes?: number;
}

export interface ChainVerifyOptions extends LeafCheckOptions {
  /** Wall-clock time to verify at. @default Date.now() */
  nowMs?: number;
  /** How far in the future a notBefore may be (clock skew between us and the issuer). @default 0 */
  clockSkewToleranceMs?: number;
  /** Intermediates beyond this are refused before any signature is checked. @default 8 */
  maxIntermediates?: number;
}

export const DEFAULT_MAX_CERTIFICATE_BYTES = 16 * 1024;
const DEFAULT_MAX_INTERMEDIATES = 8;

/**
 * Critical extensions we understand. Anything else marked critical is refused, as OpenSSL does
 * (OpenSSL additionally accepts critical certificate-policy extensions; we do not: Linkerd never sets them).
 */
const HANDLED_CRITICAL = new Set<string>([
  OID.basicConstraints,
  OID.keyUsage,
  OID.extKeyUsage,
  OID.subjectAltName,
  OID.nameConstraints,
]);

const STRONG_SIGNATURES = new Set<string>([
  OID.ecdsaWithSha256,
  OID.ecdsaWithSha384,
  OID.ecdsaWithSha512,
  OID.sha256WithRsa,
  OID.sha384WithRsa,
  OID.sha512WithRsa,
  OID.ed25519,
]);

const ISSUER_CURVES = new Set<string>([OID.prime256v1, OID.secp384r1, OID.secp521r1]);

class Refusal extends Error {
  readonly failure: PeerCertificateFailure;
  constructor(reason: PeerCertificateFailureReason, message: string, depth?: number) {
    super(message);
    this.failure = depth === undefined ? { reason, message } : { reason, message, depth };
  }
}

function refuse(reason: PeerCertificateFailureReason, message: string, depth?: number): never {
  throw new Refusal(reason, message, depth);
}

function extension(parsed: ParsedCertificate, oid: string): CertificateExtension | undefined {
  return parsed.extensions.find((item) => item.oid === oid);
}

function parseOrRefuse(der: Uint8Array, depth: number, maxBytes: number): ParsedCertificate {
  if (der.byteLength > maxBytes)
    refuse("too-large", `certificate of ${der.byteLength} bytes exceeds ${maxBytes}`, depth);
  try {
    return parseCertificate(der);
  } catch (error) {
    refuse("malformed", `certificate does not parse: ${(error as Error).message}`, depth);
  }
}

function checkCommon(parsed: ParsedCertificate, depth: number, isAnchor: boolean): void {
  for (const item of parsed.extensions) {
    if (item.critical && !HANDLED_CRITICAL.has(item.oid)) {
      refuse("unknown-critical-extension", "certificate carries an unknown critical extension", depth);
    }
  }
  // A trust anchor's own signature carries no meaning; every other signature must be strong.
  if (!isAnchor) {
    if (parsed.signatureAlgorithm !== parsed.tbsSignatureAlgorithm) {
      refuse("malformed", "signature algorithm differs from the one inside the TBS", depth);
    }
    if (!STRONG_SIGNATURES.has(parsed.signatureAlgorithm)) {
      refuse(
        "weak-signature-algorithm",
        "signature algorithm is not an allowed SHA-2/EdDSA algorithm",
        depth,
      );
    }
  }
}

function requiredUsages(purpose: CertificatePurpose): string[] {
  if (purpose === "client") return [OID.clientAuth];
  if (purpose === "server") return [OID.serverAuth];
  return [OID.serverAuth, OID.clientAuth];
}

const SPIFFE_PREFIX = "spiffe://";
/** SPIFFE ID spec §2.3: the longest SPIFFE ID is 2048 bytes. */
const MAX_SPIFFE_ID_BYTES = 2048;
const MAX_TRUST_DOMAIN_BYTES = 255;

/**
 * A SPIFFE ID exactly as the SPIFFE ID standard writes it, checked byte by byte: scheme `spiffe` in lower
 * case, a trust domain of `[a-z0-9._-]` (no userinfo, port, percent-encoding or upper case), then a
 * non-empty path of segments of `[A-Za-z0-9._-]` (no empty, `.` or `..` segment, no trailing slash), and
 * no query or fragment. A workload certificate names a workload, so a bare trust domain is refused.
 */
function spiffeId(bytes: Buffer): string {
  const bad = (why: string): never =>
    refuse("san-invalid-uri", `URI SAN is not a SPIFFE workload ID: ${why}`, 0);
  if (bytes.length > MAX_SPIFFE_ID_BYTES) bad(`longer than ${MAX_SPIFFE_ID_BYTES} bytes`);
  if (
    bytes.length < SPIFFE_PREFIX.length ||
    bytes.toString("latin1", 0, SPIFFE_PREFIX.length) !== SPIFFE_PREFIX
  )
    bad("the scheme is not spiffe://");
  let i = SPIFFE_PREFIX.length;
  const domainStart = i;
  while (i < bytes.length && bytes[i] !== 0x2f) {
    const byte = bytes[i] as number;
    const ok =
      (byte >= 0x61 && byte <= 0x7a) ||
      (byte >= 0x30 && byte <= 0x39) ||
      byte === 0x2e ||
      byte === 0x2d ||
      byte === 0x5f;
    if (!ok) bad(`trust domain holds byte 0x${byte.toString(16).padStart(2, "0")}`);
    i += 1;
  }
  if (i === domainStart) bad("empty trust domain");
  if (i - domainStart > MAX_TRUST_DOMAIN_BYTES) bad("trust domain too long");
  if (i === bytes.length) bad("no workload path");
  while (i < bytes.length) {
    // bytes[i] is "/": a segment follows.
    const start = i + 1;
    let end = start;
    while (end < bytes.length && bytes[end] !== 0x2f) {
      const byte = bytes[end] as number;
      const ok =
        (byte >= 0x61 && byte <= 0x7a) ||
        (byte >= 0x41 && byte <= 0x5a) ||
        (byte >= 0x30 && byte <= 0x39) ||
        byte === 0x2e ||
        byte === 0x2d ||
        byte === 0x5f;
      if (!ok) bad(`path holds byte 0x${byte.toString(16).padStart(2, "0")}`);
      end += 1;
    }
    if (end === start) bad("empty path segment");
    const segment = bytes.toString("latin1", start, end);
    if (segment === "." || segment === "..") bad("dot segment in the path");
    i = end;
  }
  return bytes.toString("latin1");
}

/**
 * The identity of a leaf: exactly one subjectAltName, either a dNSName (a Linkerd identity, lower-cased) or
 * a SPIFFE ID URI (ExternalWorkloads, SPIRE; Linkerd 2.15+). Any other combination is refused, even where
 * the proxy would pick the first usable name: one name per certificate leaves nothing to confuse
 * (CVE-2021-44531: several names, one of them chosen by a different rule than the policy assumed).
 */
function parseSan(parsed: ParsedCertificate): string {
  const san = extension(parsed, OID.subjectAltName);
  if (!san) refuse("missing-san", "certificate has no subjectAltName", 0);
  let names: ReturnType<typeof parseGeneralNames>;
  try {
    names = parseGeneralNames(san.value);
  } catch (error) {
    refuse("malformed", `subjectAltName does not parse: ${(error as DerError).message}`, 0);
  }
  if (names.length !== 1)
    refuse("san-count", `expected exactly one subjectAltName, found ${names.length}`, 0);
  const only = names[0] as { type: number; value: Buffer };
  if (only.type === 6) return spiffeId(only.value);
  if (only.type !== 2)
    refuse("san-not-dns", `subjectAltName is of type [${only.type}], not dNSName or a SPIFFE URI`, 0);
  // Byte-level check before any string conversion, so NUL, non-ASCII and separators cannot slip through.
  for (const byte of only.value) {
    const isLetter = (byte >= 0x61 && byte <= 0x7a) || (byte >= 0x41 && byte <= 0x5a);
    const isDigit = byte >= 0x30 && byte <= 0x39;
    if (!isLetter && !isDigit && byte !== 0x2d && byte !== 0x2e) {
      refuse("san-invalid-dns", `dNSName holds byte 0x${byte.toString(16).padStart(2, "0")}`, 0);
    }
  }
  // DNS names are case-insensitive; Linkerd lower-cases a client's DNS identity when it parses it.
  const name = only.value.toString("latin1").toLowerCase();
  if (!isDnsName(name)) refuse("san-invalid-dns", "dNSName is not a valid DNS name", 0);
  return name;
}

/** The leaf rules of a Linkerd identity, applied to a certificate whose chain is already verified. */
function checkLeaf(parsed: ParsedCertificate, options: LeafCheckOptions): string {
  checkCommon(parsed, 0, false);
  if (parsed.keyCurve === "explicit")
    refuse("explicit-ec-parameters", "leaf key uses explicit EC parameters", 0);
  if (parsed.keyCurve !== OID.prime256v1) refuse("leaf-key-not-p256", "leaf key is not ECDSA P-256", 0);
  let basic: ReturnType<typeof parseBasicConstraints> | undefined;
  let keyUsage: number | undefined;
  let extendedUsages: string[] | undefined;
  try {
    const basicExtension = extension(parsed, OID.basicConstraints);
    basic = basicExtension ? parseBasicConstraints(basicExtension.value) : undefined;
    const keyUsageExtension = extension(parsed, OID.keyUsage);
    keyUsage = keyUsageExtension ? parseKeyUsage(keyUsageExtension.value) : undefined;
    const ekuExtension = extension(parsed, OID.extKeyUsage);
    extendedUsages = ekuExtension ? parseExtendedKeyUsage(ekuExtension.value) : undefined;
  } catch (error) {
    refuse("malformed", `extension does not parse: ${(error as Error).message}`, 0);
  }
  if (basic?.ca) refuse("leaf-is-ca", "leaf certificate is a CA (basicConstraints CA:TRUE)", 0);
  if (keyUsage === undefined || (keyUsage & KEY_USAGE.digitalSignature) === 0) {
    refuse("key-usage", "leaf keyUsage must be present and include digitalSignature", 0);
  }
  if (keyUsage & KEY_USAGE.keyCertSign) refuse("key-usage", "leaf keyUsage includes keyCertSign", 0);
  for (const usage of requiredUsages(options.purpose ?? "client")) {
    if (!extendedUsages?.includes(usage)) {
      refuse("extended-key-usage", "leaf extendedKeyUsage lacks the purpose it is used for", 0);
    }
  }
  const name = parseSan(parsed);
  if (options.expectedIdentity !== undefined && name !== options.expectedIdentity) {
    refuse("identity-mismatch", mismatchMessage(name, options.expectedIdentity), 0);
  }
  return name;
}

function verdictFrom(
  run: () => { identity: string; notBeforeMs: number; notAfterMs: number },
): PeerCertificateVerdict {
  try {
    return { ok: true, ...run() };
  } catch (error) {
    if (error instanceof Refusal) return { ok: false, failure: error.failure };
    // Anything unexpected is still a refusal, never a crash and never an acceptance.
    return {
      ok: false,
      failure: { reason: "malformed", message: (error as Error)?.message ?? String(error) },
    };
  }
}

/**
 * Leaf-only policy check for a certificate whose chain OpenSSL has already verified (the TLS path):
 * ECDSA P-256 key, not a CA, keyUsage digitalSignature, EKU for `purpose`, no unknown critical
 * extension, SHA-2 signature, and exactly one subjectAltName: a dNSName (lower-cased) or a SPIFFE workload
 * ID URI (equal to `expectedIdentity` when given). IP, email, other URIs and other SAN types are refused.
 */
export function checkLeafCertificate(
  leafDer: Uint8Array,
  options: LeafCheckOptions = {},
): PeerCertificateVerdict {
  const maxBytes = options.maxCertificateBytes ?? DEFAULT_MAX_CERTIFICATE_BYTES;
  const purpose = options.purpose ?? "client";
  const key = leafDer.byteLength <= maxBytes ? passedLeafKey(leafDer, purpose) : undefined;
  const passed = key === undefined ? undefined : passedLeaves.get(key);
  if (passed !== undefined) {
    // Most recently used last, so a busy client's leaf is not the next one evicted.
    passedLeaves.delete(key as string);
    passedLeaves.set(key as string, passed);
    return withExpectedIdentity(passed, options.expectedIdentity);
  }
  const verdict = verdictFrom(() => {
    const parsed = parseOrRefuse(leafDer, 0, maxBytes);
    return {
      identity: checkLeaf(parsed, { purpose }),
      notBeforeMs: parsed.notBeforeMs,
      notAfterMs: parsed.notAfterMs,
    };
  });
  if (!verdict.ok || key === undefined) return verdict;
  const frozen = Object.freeze(verdict);
  passedLeaves.set(key, frozen);
  if (passedLeaves.size > PASSED_LEAVES_MAX) {
    passedLeaves.delete(passedLeaves.keys().next().value as string);
  }
  return withExpectedIdentity(frozen, options.expectedIdentity);
}

/**
 * Leaves that passed checkLeaf, by purpose and DER. A peer presents the same leaf on every connection
 * for the day it is valid, and parsing it again cost ~30 µs of each new connection (S6). The verdict
 * depends on nothing but these bytes and the purpose (OpenSSL has checked the chain and the validity
 * period by the time a leaf gets here), so the same bytes get the same answer. Refused leaves are not
 * kept: a peer sending new ones cannot push the leaves of the clients that pass out of the cache.
 */
const passedLeaves = new Map<string, PeerCertificateVerdict & { ok: true }>();
const PASSED_LEAVES_MAX = 256;

/** For tests: how many passed leaves are remembered now. */
export function rememberedLeafCount(): number {
  return passedLeaves.size;
}

function passedLeafKey(leafDer: Uint8Array, purpose: CertificatePurpose): string {
  // latin1 maps each byte to one character, so equal keys are equal bytes.
  return purpose + Buffer.from(leafDer.buffer, leafDer.byteOffset, leafDer.byteLength).toString("latin1");
}

function withExpectedIdentity(
  verdict: PeerCertificateVerdict & { ok: true },
  expectedIdentity: string | undefined,
): PeerCertificateVerdict {
  if (expectedIdentity === undefined || verdict.identity === expectedIdentity) return verdict;
  return {
    ok: false,
    failure: {
      reason: "identity-mismatch",
      message: mismatchMessage(verdict.identity, expectedIdentity),
      depth: 0,
    },
  };
}

function mismatchMessage(identity: string, expectedIdentity: string): string {
  return `certificate is for ${identity}, expected ${expectedIdentity}`;
}

function signedBy(child: X509Certificate, parent: X509Certificate): "yes" | "no" | "bad-signature" {
  try {
    if (!child.checkIssued(parent)) return "no";
    return child.verify(parent.publicKey) ? "yes" : "bad-signature";
  } catch {
    return "bad-signature";
  }
}

/** Only used to word a refusal; never to accept anything. */
function isSelfSignature(certificate: X509Certificate): boolean {
  try {
    return certificate.verify(certificate.publicKey);
  } catch {
    return false;
  }
}

function dnsNameMatches(name: string, constraint: string): boolean {
  if (constraint === "") return true;
  if (constraint.startsWith(".")) return name.endsWith(constraint);
  return name === constraint || name.endsWith(`.${constraint}`);
}

function checkNameConstraints(parsed: ParsedCertificate, identity: string, depth: number): void {
  const item = extension(parsed, OID.nameConstraints);
  if (!item) return;
  let constraints: ReturnType<typeof parseNameConstraints>;
  try {
    constraints = parseNameConstraints(item.value);
  } catch (error) {
    refuse("malformed", `nameConstraints do not parse: ${(error as Error).message}`, depth);
  }
  // RFC 5280 §4.2.1.10: constraints apply per name type; a URI is constrained by its host (the trust domain).
  const isUri = identity.startsWith(SPIFFE_PREFIX);
  const type = isUri ? 6 : 2;
  const host = isUri
    ? identity.slice(SPIFFE_PREFIX.length, identity.indexOf("/", SPIFFE_PREFIX.length))
    : identity;
  const dns = (list: typeof constraints.permitted) =>
    list.filter((name) => name.type === type).map((name) => name.value.toString("latin1").toLowerCase());
  const permitted = dns(constraints.permitted);
  if (permitted.length > 0 && !permitted.some((constraint) => dnsNameMatches(host, constraint))) {
    refuse("name-constraints", `${identity} is outside the issuer's permitted names`, depth);
  }
  if (dns(constraints.excluded).some((constraint) => dnsNameMatches(host, constraint))) {
    refuse("name-constraints", `${identity} is in the issuer's excluded names`, depth);
  }
}

function checkIssuerKey(certificate: X509Certificate, parsed: ParsedCertificate, depth: number): void {
  if (parsed.keyCurve === "explicit")
    refuse("explicit-ec-parameters", "issuer key uses explicit EC parameters", depth);
  if (parsed.keyAlgorithm === OID.ecPublicKey) {
    if (!ISSUER_CURVES.has(parsed.keyCurve ?? ""))
      refuse("weak-key", "issuer key is on an unsupported curve", depth);
    return;
  }
  if (parsed.keyAlgorithm === OID.rsaEncryption) {
    const bits = certificate.publicKey.asymmetricKeyDetails?.modulusLength ?? 0;
    if (bits < 2048) refuse("weak-key", `issuer RSA key of ${bits} bits`, depth);
    return;
  }
  if (parsed.keyAlgorithm !== OID.ed25519) refuse("weak-key", "issuer key algorithm is not supported", depth);
}

/**
 * Verifies `leafDer` + `chainDer` (leaf→root order, as sent in TLS or CertifyResponse) against the
 * trust anchors, then applies the Linkerd leaf rules of `checkLeafCertificate`. Every signature is
 * checked by OpenSSL (`X509Certificate#checkIssued` + `#verify`); the DER reader only reads fields.
 * Never throws: bad input of any kind is a refusal with a typed reason.
 */
export function verifyPeerCertificateChain(
  leafDer: Uint8Array,
  chainDer: readonly Uint8Array[],
  anchors: TrustAnchors | string,
  options: ChainVerifyOptions = {},
): PeerCertificateVerdict {
  return verdictFrom(() => {
    const trust = typeof anchors === "string" ? parseTrustAnchors(anchors) : anchors;
    const maxBytes = options.maxCertificateBytes ?? DEFAULT_MAX_CERTIFICATE_BYTES;
    const maxIntermediates = options.maxIntermediates ?? DEFAULT_MAX_INTERMEDIATES;
    const nowMs = options.nowMs ?? Date.now();
    const toleranceMs = options.clockSkewToleranceMs ?? 0;
    // Cheap bounds first: a path-building bomb is refused before any signature work.
    if (chainDer.length > maxIntermediates) {
      refuse("chain-too-long", `${chainDer.length} intermediates exceed the limit of ${maxIntermediates}`);
    }
    const leafParsed = parseOrRefuse(leafDer, 0, maxBytes);
    const intermediatesParsed = chainDer.map((der, index) => parseOrRefuse(der, index + 1, maxBytes));
    const toX509 = (der: Uint8Array, depth: number) => {
      try {
        return new X509Certificate(der);
      } catch (error) {
        refuse("malformed", `OpenSSL cannot parse the certificate: ${(error as Error).message}`, depth);
      }
    };
    const leaf = toX509(leafDer, 0);
    const intermediates = chainDer.map((der, index) => toX509(der, index + 1));

    // Path building, linear and bounded: at each step prefer a trust anchor, else an unused intermediate.
    const path: { certificate: X509Certificate; parsed: ParsedCertificate; isAnchor: boolean }[] = [
      { certificate: leaf, parsed: leafParsed, isAnchor: false },
    ];
    const used = new Set<number>();
    let current = leaf;
    for (;;) {
      let sawBadSignature = false;
      const anchorIndex = trust.certificates.findIndex((anchor) => {
        const verdict = signedBy(current, anchor);
        sawBadSignature ||= verdict === "bad-signature";
        return verdict === "yes";
      });
      if (anchorIndex >= 0) {
        const anchor = trust.certificates[anchorIndex] as X509Certificate;
        path.push({
          certificate: anchor,
          parsed: parseCertificate(trust.ders[anchorIndex] as Buffer),
          isAnchor: true,
        });
        break;
      }
      if (path.length > maxIntermediates)
        refuse("chain-too-long", "no trust anchor within the path length limit");
      const nextIndex = intermediates.findIndex((candidate, index) => {
        if (used.has(index)) return false;
        const verdict = signedBy(current, candidate);
        sawBadSignature ||= verdict === "bad-signature";
        return verdict === "yes";
      });
      if (nextIndex < 0) {
        const depth = path.length - 1;
        if (sawBadSignature) refuse("bad-signature", "a signature in the chain does not verify", depth);
        if (current.subject === current.issuer && isSelfSignature(current)) {
          refuse(
            depth === 0 ? "self-signed" : "unknown-issuer",
            "the chain ends in a self-signed certificate that is not a trust anchor",
            depth,
          );
        }
        refuse("unknown-issuer", "the chain does not lead to a trust anchor", depth);
      }
      used.add(nextIndex);
      current = intermediates[nextIndex] as X509Certificate;
      path.push({
        certificate: current,
        parsed: intermediatesParsed[nextIndex] as ParsedCertificate,
        isAnchor: false,
      });
    }

    for (const [depth, entry] of path.entries()) {
      if (entry.parsed.notBeforeMs - toleranceMs > nowMs)
        refuse("not-yet-valid", "certificate is not valid yet", depth);
      if (entry.parsed.notAfterMs <= nowMs) refuse("expired", "certificate has expired", depth);
      checkCommon(entry.parsed, depth, entry.isAnchor);
      if (depth === 0) continue;
      let basic: ReturnType<typeof parseBasicConstraints> | undefined;
      let keyUsage: number | undefined;
      let extendedUsages: string[] | undefined;
      try {
        const basicExtension = extension(entry.parsed, OID.basicConstraints);
        basic = basicExtension ? parseBasicConstraints(basicExtension.value) : undefined;
        const keyUsageExtension = extension(entry.parsed, OID.keyUsage);
        keyUsage = keyUsageExtension ? parseKeyUsage(keyUsageExtension.value) : undefined;
        const ekuExtension = extension(entry.parsed, OID.extKeyUsage);
        extendedUsages = ekuExtension ? parseExtendedKeyUsage(ekuExtension.value) : undefined;
      } catch (error) {
        refuse("malformed", `extension does not parse: ${(error as Error).message}`, depth);
      }
      if (!basic?.ca) refuse("issuer-not-ca", "an issuing certificate is not a CA", depth);
      if (keyUsage !== undefined && (keyUsage & KEY_USAGE.keyCertSign) === 0) {
        refuse("issuer-not-ca", "an issuing certificate's keyUsage lacks keyCertSign", depth);
      }
      // Intermediate CAs below this one (the leaf is not counted).
      if (basic.pathLength !== undefined && depth - 1 > basic.pathLength) {
        refuse("path-length-exceeded", `pathLenConstraint ${basic.pathLength} exceeded`, depth);
      }
      if (extendedUsages && !extendedUsages.includes(OID.anyExtendedKeyUsage)) {
        for (const usage of requiredUsages(options.purpose ?? "client")) {
          if (!extendedUsages.includes(usage))
            refuse("extended-key-usage", "an issuer's EKU excludes the purpose", depth);
        }
      }
      checkIssuerKey(entry.certificate, entry.parsed, depth);
    }

    const identity = checkLeaf(leafParsed, options);
    for (const [depth, entry] of path.entries()) {
      if (depth > 0) checkNameConstraints(entry.parsed, identity, depth);
    }
    return { identity, notBeforeMs: leafParsed.notBeforeMs, notAfterMs: leafParsed.notAfterMs };
  });
}
