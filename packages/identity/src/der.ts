/**
 * A small, strict DER reader for the parts of an X.509 certificate that the identity check needs.
 * It only ever runs on certificates OpenSSL has already parsed (and, on the TLS path, verified), so it
 * is deliberately narrow: definite lengths, single-byte tags, iterative (no recursion), every length
 * checked against its parent. OIDs are compared as raw DER bytes, never decoded to 32-bit numbers
 * (node-forge CVE-2025-66030 truncated arcs and let one OID pass for another).
 */

export class DerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DerError";
  }
}

export interface Tlv {
  /** The identifier octet (class | constructed | number); multi-byte tags are refused. */
  readonly tag: number;
  /** Offset of the identifier octet. */
  readonly start: number;
  /** Offset of the first content octet. */
  readonly valueStart: number;
  /** Offset just past the content. */
  readonly end: number;
}

export const TAG = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  OID: 0x06,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  SEQUENCE: 0x30,
} as const;

export function readTlv(bytes: Uint8Array, offset: number, limit: number): Tlv {
  if (offset + 2 > limit) throw new DerError("truncated TLV header");
  const tag = bytes[offset] as number;
  if ((tag & 0x1f) === 0x1f) throw new DerError("multi-byte tags are not supported");
  let lengthByte = bytes[offset + 1] as number;
  let cursor = offset + 2;
  let length: number;
  if (lengthByte < 0x80) {
    length = lengthByte;
  } else {
    lengthByte &= 0x7f;
    if (lengthByte === 0) throw new DerError("indefinite length is not DER");
    if (lengthByte > 4) throw new DerError("length field too long");
    if (cursor + lengthByte > limit) throw new DerError("truncated length");
    length = 0;
    for (let index = 0; index < lengthByte; index += 1)
      length = length * 256 + (bytes[cursor + index] as number);
    cursor += lengthByte;
    if (length < 0x80) throw new DerError("non-minimal length encoding");
  }
  const end = cursor + length;
  if (end > limit) throw new DerError("content runs past its container");
  return { tag, start: offset, valueStart: cursor, end };
}

export function expectTlv(bytes: Uint8Array, offset: number, limit: number, tag: number, what: string): Tlv {
  const tlv = readTlv(bytes, offset, limit);
  if (tlv.tag !== tag)
    throw new DerError(`${what}: expected tag 0x${tag.toString(16)}, got 0x${tlv.tag.toString(16)}`);
  return tlv;
}

/** The direct children of a constructed TLV, bounded in count. */
export function children(bytes: Uint8Array, parent: Tlv, maxCount = 1024): Tlv[] {
  const items: Tlv[] = [];
  let offset = parent.valueStart;
  while (offset < parent.end) {
    if (items.length >= maxCount) throw new DerError(`more than ${maxCount} elements`);
    const item = readTlv(bytes, offset, parent.end);
    items.push(item);
    offset = item.end;
  }
  return items;
}

export function contentOf(bytes: Uint8Array, tlv: Tlv): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset + tlv.valueStart, tlv.end - tlv.valueStart);
}

/** DER content octets of an OID, as lower-case hex (for byte-exact comparison). */
export function oidHex(dotted: string): string {
  const arcs = dotted.split(".").map((arc) => BigInt(arc));
  const first = arcs[0] as bigint;
  const second = arcs[1] as bigint;
  const bytes: number[] = [];
  const pushArc = (arc: bigint) => {
    const groups: number[] = [Number(arc & 0x7fn)];
    let rest = arc >> 7n;
    while (rest > 0n) {
      groups.unshift(Number(rest & 0x7fn) | 0x80);
      rest >>= 7n;
    }
    bytes.push(...groups);
  };
  pushArc(first * 40n + second);
  for (const arc of arcs.slice(2)) pushArc(arc);
  return Buffer.from(bytes).toString("hex");
}

/** Dotted form of OID content octets, for messages only (arbitrary-size arcs, via BigInt). */
export function oidToString(content: Uint8Array): string {
  const arcs: bigint[] = [];
  let value = 0n;
  for (const byte of content) {
    value = (value << 7n) | BigInt(byte & 0x7f);
    if ((byte & 0x80) === 0) {
      if (arcs.length === 0) {
        const first = value < 80n ? value / 40n : 2n;
        arcs.push(first, value - first * 40n);
      } else {
        arcs.push(value);
      }
      value = 0n;
    }
  }
  return arcs.join(".");
}

export const OID = {
  subjectAltName: oidHex("2.5.29.17"),
  basicConstraints: oidHex("2.5.29.19"),
  keyUsage: oidHex("2.5.29.15"),
  extKeyUsage: oidHex("2.5.29.37"),
  nameConstraints: oidHex("2.5.29.30"),
  subjectKeyIdentifier: oidHex("2.5.29.14"),
  authorityKeyIdentifier: oidHex("2.5.29.35"),
  serverAuth: oidHex("1.3.6.1.5.5.7.3.1"),
  clientAuth: oidHex("1.3.6.1.5.5.7.3.2"),
  anyExtendedKeyUsage: oidHex("2.5.29.37.0"),
  ecPublicKey: oidHex("1.2.840.10045.2.1"),
  rsaEncryption: oidHex("1.2.840.113549.1.1.1"),
  ed25519: oidHex("1.3.101.112"),
  prime256v1: oidHex("1.2.840.10045.3.1.7"),
  secp384r1: oidHex("1.3.132.0.34"),
  secp521r1: oidHex("1.3.132.0.35"),
  ecdsaWithSha256: oidHex("1.2.840.10045.4.3.2"),
  ecdsaWithSha384: oidHex("1.2.840.10045.4.3.3"),
  ecdsaWithSha512: oidHex("1.2.840.10045.4.3.4"),
  sha256WithRsa: oidHex("1.2.840.113549.1.1.11"),
  sha384WithRsa: oidHex("1.2.840.113549.1.1.12"),
  sha512WithRsa: oidHex("1.2.840.113549.1.1.13"),
} as const;

export interface CertificateExtension {
  /** OID content octets as hex. */
  readonly oid: string;
  readonly critical: boolean;
  /** extnValue content (the DER of the extension's own structure). */
  readonly value: Buffer;
}

export interface ParsedCertificate {
  /** Signature algorithm OID (hex), outer and as repeated in the TBS. */
  readonly signatureAlgorithm: string;
  readonly tbsSignatureAlgorithm: string;
  readonly notBeforeMs: number;
  readonly notAfterMs: number;
  /** SubjectPublicKeyInfo algorithm OID (hex). */
  readonly keyAlgorithm: string;
  /** Named curve OID (hex) for EC keys; "explicit" when parameters are spelled out; undefined otherwise. */
  readonly keyCurve: string | undefined;
  readonly extensions: readonly CertificateExtension[];
}

function parseTime(bytes: Uint8Array, tlv: Tlv): number {
  const text = contentOf(bytes, tlv).toString("latin1");
  let match: RegExpExecArray | null;
  let year: number;
  if (tlv.tag === TAG.UTC_TIME) {
    match = /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text);
    if (!match) throw new DerError("malformed UTCTime");
    const yy = Number(match[1]);
    year = yy >= 50 ? 1900 + yy : 2000 + yy;
  } else if (tlv.tag === TAG.GENERALIZED_TIME) {
    match = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text);
    if (!match) throw new DerError("malformed GeneralizedTime");
    year = Number(match[1]);
  } else {
    throw new DerError("validity time has an unexpected tag");
  }
  const [, , month, day, hour, minute, second] = match.map(Number) as number[];
  const ms = Date.UTC(year, (month as number) - 1, day, hour, minute, second);
  if (!Number.isFinite(ms)) throw new DerError("invalid date");
  return ms;
}

function algorithmOid(
  bytes: Uint8Array,
  tlv: Tlv,
  what: string,
): { oid: string; parameters: Tlv | undefined } {
  if (tlv.tag !== TAG.SEQUENCE) throw new DerError(`${what}: expected AlgorithmIdentifier`);
  const parts = children(bytes, tlv, 2);
  const oid = parts[0];
  if (oid?.tag !== TAG.OID) throw new DerError(`${what}: expected OID`);
  return { oid: contentOf(bytes, oid).toString("hex"), parameters: parts[1] };
}

/** Parses the fields of a DER certificate that identity checks use. Throws DerError on anything unexpected. */
export function parseCertificate(der: Uint8Array): ParsedCertificate {
  const certificate = expectTlv(der, 0, der.byteLength, TAG.SEQUENCE, "Certificate");
  if (certificate.end !== der.byteLength) throw new DerError("trailing bytes after the certificate");
  const [tbs, outerAlgorithm, signature, ...extra] = children(der, certificate, 4);
  if (
    !tbs ||
    !outerAlgorithm ||
    signature?.tag !== TAG.BIT_STRING ||
    extra.length > 0 ||
    tbs.tag !== TAG.SEQUENCE
  ) {
    throw new DerError("Certificate must be SEQUENCE { tbs, algorithm, signature }");
  }
  const fields = children(der, tbs, 10);
  let index = 0;
  if (fields[index]?.tag === 0xa0) index += 1; // version
  const serial = fields[index++];
  const tbsAlgorithm = fields[index++];
  const issuer = fields[index++];
  const validity = fields[index++];
  const subject = fields[index++];
  const spki = fields[index++];
  if (
    serial?.tag !== TAG.INTEGER ||
    !tbsAlgorithm ||
    issuer?.tag !== TAG.SEQUENCE ||
    validity?.tag !== TAG.SEQUENCE ||
    subject?.tag !== TAG.SEQUENCE ||
    spki?.tag !== TAG.SEQUENCE
  ) {
    throw new DerError("malformed TBSCertificate");
  }
  const times = children(der, validity, 2);
  if (times.length !== 2) throw new DerError("Validity must hold two times");
  const notBeforeMs = parseTime(der, times[0] as Tlv);
  const notAfterMs = parseTime(der, times[1] as Tlv);

  const spkiParts = children(der, spki, 2);
  const key = algorithmOid(der, spkiParts[0] as Tlv, "SubjectPublicKeyInfo");
  let keyCurve: string | undefined;
  if (key.oid === OID.ecPublicKey) {
    if (key.parameters?.tag === TAG.OID) keyCurve = contentOf(der, key.parameters).toString("hex");
    else keyCurve = "explicit";
  }

  const extensions: CertificateExtension[] = [];
  const seen = new Set<string>();
  for (const field of fields.slice(index)) {
    if (field.tag === 0x81 || field.tag === 0x82 || field.tag === 0xa1 || field.tag === 0xa2) continue; // unique IDs
    if (field.tag !== 0xa3) throw new DerError(`unexpected TBSCertificate field 0x${field.tag.toString(16)}`);
    const [list, ...rest] = children(der, field, 1);
    if (list?.tag !== TAG.SEQUENCE || rest.length > 0) throw new DerError("malformed extensions");
    for (const extension of children(der, list, 64)) {
      if (extension.tag !== TAG.SEQUENCE) throw new DerError("malformed extension");
      const parts = children(der, extension, 3);
      const oid = parts[0];
      if (oid?.tag !== TAG.OID) throw new DerError("extension without OID");
      let critical = false;
      let valueTlv = parts[1];
      if (valueTlv?.tag === TAG.BOOLEAN) {
        const flag = contentOf(der, valueTlv);
        if (flag.length !== 1) throw new DerError("malformed critical flag");
        critical = flag[0] !== 0;
        valueTlv = parts[2];
      } else if (parts.length > 2) {
        throw new DerError("malformed extension");
      }
      if (valueTlv?.tag !== TAG.OCTET_STRING) throw new DerError("extension value is not an OCTET STRING");
      const oidText = contentOf(der, oid).toString("hex");
      if (seen.has(oidText)) throw new DerError(`duplicate extension ${oidToString(contentOf(der, oid))}`);
      seen.add(oidText);
      extensions.push({ oid: oidText, critical, value: contentOf(der, valueTlv) });
    }
  }
  return {
    signatureAlgorithm: algorithmOid(der, outerAlgorithm, "signatureAlgorithm").oid,
    tbsSignatureAlgorithm: algorithmOid(der, tbsAlgorithm, "TBS signature").oid,
    notBeforeMs,
    notAfterMs,
    keyAlgorithm: key.oid,
    keyCurve,
    extensions,
  };
}

/** One entry of a GeneralNames sequence: the context tag number (0..8) and its content. */
export interface GeneralName {
  /** 0 otherName, 1 rfc822Name, 2 dNSName, 3 x400Address, 4 directoryName, 5 ediPartyName, 6 URI, 7 iPAddress, 8 registeredID */
  readonly type: number;
  readonly value: Buffer;
}

function generalName(bytes: Uint8Array, tlv: Tlv): GeneralName {
  if ((tlv.tag & 0xc0) !== 0x80) throw new DerError("GeneralName must be context-specific");
  return { type: tlv.tag & 0x1f, value: contentOf(bytes, tlv) };
}

/** subjectAltName extnValue → every GeneralName, whatever its type (so none can hide). */
export function parseGeneralNames(value: Uint8Array): GeneralName[] {
  const sequence = expectTlv(value, 0, value.byteLength, TAG.SEQUENCE, "GeneralNames");
  if (sequence.end !== value.byteLength) throw new DerError("trailing bytes after GeneralNames");
  return children(value, sequence, 256).map((item) => generalName(value, item));
}

export interface BasicConstraints {
  readonly ca: boolean;
  readonly pathLength: number | undefined;
}

export function parseBasicConstraints(value: Uint8Array): BasicConstraints {
  const sequence = expectTlv(value, 0, value.byteLength, TAG.SEQUENCE, "BasicConstraints");
  let ca = false;
  let pathLength: number | undefined;
  for (const item of children(value, sequence, 2)) {
    const content = contentOf(value, item);
    if (item.tag === TAG.BOOLEAN && content.length === 1) ca = content[0] !== 0;
    else if (
      item.tag === TAG.INTEGER &&
      content.length >= 1 &&
      content.length <= 4 &&
      ((content[0] as number) & 0x80) === 0
    ) {
      pathLength = content.readUIntBE(0, content.length);
    } else throw new DerError("malformed BasicConstraints");
  }
  return { ca, pathLength };
}

/** KeyUsage BIT STRING → bit set, bit 0 = digitalSignature (the MSB of the first content byte). */
export function parseKeyUsage(value: Uint8Array): number {
  const bits = expectTlv(value, 0, value.byteLength, TAG.BIT_STRING, "KeyUsage");
  const content = contentOf(value, bits);
  if (content.length < 1 || content.length > 3) throw new DerError("malformed KeyUsage");
  let flags = 0;
  for (let bit = 0; bit < (content.length - 1) * 8; bit += 1) {
    const byte = content[1 + (bit >> 3)] as number;
    if (byte & (0x80 >> (bit & 7))) flags |= 1 << bit;
  }
  return flags;
}

export const KEY_USAGE = { digitalSignature: 1 << 0, keyEncipherment: 1 << 2, keyCertSign: 1 << 5 } as const;

/** ExtendedKeyUsage → OIDs as hex. */
export function parseExtendedKeyUsage(value: Uint8Array): string[] {
  const sequence = expectTlv(value, 0, value.byteLength, TAG.SEQUENCE, "ExtKeyUsage");
  return children(value, sequence, 64).map((item) => {
    if (item.tag !== TAG.OID) throw new DerError("ExtKeyUsage entry is not an OID");
    return contentOf(value, item).toString("hex");
  });
}

export interface NameConstraints {
  readonly permitted: readonly GeneralName[];
  readonly excluded: readonly GeneralName[];
}

export function parseNameConstraints(value: Uint8Array): NameConstraints {
  const sequence = expectTlv(value, 0, value.byteLength, TAG.SEQUENCE, "NameConstraints");
  const permitted: GeneralName[] = [];
  const excluded: GeneralName[] = [];
  for (const subtrees of children(value, sequence, 2)) {
    const target = subtrees.tag === 0xa0 ? permitted : subtrees.tag === 0xa1 ? excluded : undefined;
    if (!target) throw new DerError("malformed NameConstraints");
    for (const subtree of children(value, subtrees, 256)) {
      if (subtree.tag !== TAG.SEQUENCE) throw new DerError("malformed GeneralSubtree");
      const base = children(value, subtree, 3)[0];
      if (!base) throw new DerError("GeneralSubtree without base");
      target.push(generalName(value, base));
    }
  }
  return { permitted, excluded };
}
