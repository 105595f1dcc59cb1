/**
 * Protocol detection on the first bytes of an inbound connection, as linkerd2-proxy does it
 * (contract §4.3): a TLS ClientHello in one record (whose SNI decides whether we terminate it), the
 * HTTP/2 prior-knowledge preface, an HTTP/1 request line, or anything else (opaque). Pure functions over
 * a bounded prefix; the caller owns the reading, the byte cap and the timeout.
 */

/** The HTTP/2 connection preface a prior-knowledge client sends first. */
const H2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

/** Linkerd reads up to 1024 bytes to find an HTTP/1 request line. */
export const HTTP_DETECT_MAX_BYTES = 1024;
/** Linkerd buffers up to 8 KiB to find a ClientHello; a bigger first record is not terminated. */
export const CLIENT_HELLO_MAX_BYTES = 8 * 1024;

export type PlaintextProtocol = "h2" | "http1" | "opaque";

/** What the first bytes of a connection are. `more` asks for more bytes (within the caps). */
export type ConnectionDetection =
  | { readonly kind: "more" }
  | { readonly kind: "tls"; readonly serverName: string | undefined }
  | { readonly kind: "plaintext"; readonly protocol: PlaintextProtocol };

const MORE: ConnectionDetection = Object.freeze({ kind: "more" });
const PLAINTEXT_H2: ConnectionDetection = Object.freeze({ kind: "plaintext", protocol: "h2" });
const PLAINTEXT_HTTP1: ConnectionDetection = Object.freeze({ kind: "plaintext", protocol: "http1" });
const PLAINTEXT_OPAQUE: ConnectionDetection = Object.freeze({ kind: "plaintext", protocol: "opaque" });
const TLS_NO_SNI: ConnectionDetection = Object.freeze({ kind: "tls", serverName: undefined });

/**
 * Classifies the start of a connection. TLS is recognised only as linkerd2-proxy does: handshake record
 * (22) with record version 0x0301 or 0x0303 carrying a whole ClientHello; one that spans records or
 * exceeds {@link CLIENT_HELLO_MAX_BYTES} is reported as TLS without a server name (never terminated).
 * Everything else goes through {@link detectHttp}.
 */
export function detectConnection(buffer: Uint8Array): ConnectionDetection {
  if (buffer.byteLength === 0) return MORE;
  if (buffer[0] === 0x16) {
    if (buffer.byteLength < 3) return MORE;
    if (buffer[1] === 0x03 && (buffer[2] === 0x01 || buffer[2] === 0x03)) {
      if (buffer.byteLength < 5) return MORE;
      const recordLength = (buffer[3]! << 8) | buffer[4]!;
      if (5 + recordLength > CLIENT_HELLO_MAX_BYTES) return TLS_NO_SNI;
      if (buffer.byteLength < 5 + recordLength) return MORE;
      return { kind: "tls", serverName: clientHelloServerName(buffer.subarray(5, 5 + recordLength)) };
    }
  }
  const protocol = detectHttp(buffer);
  if (protocol === undefined) return buffer.byteLength >= HTTP_DETECT_MAX_BYTES ? PLAINTEXT_OPAQUE : MORE;
  return protocol === "h2" ? PLAINTEXT_H2 : protocol === "http1" ? PLAINTEXT_HTTP1 : PLAINTEXT_OPAQUE;
}

/** Whether a byte may appear in an HTTP method (RFC 9110 token). */
function isTokenByte(byte: number): boolean {
  if (byte >= 0x30 && byte <= 0x39) return true; // 0-9
  if (byte >= 0x41 && byte <= 0x5a) return true; // A-Z
  if (byte >= 0x61 && byte <= 0x7a) return true; // a-z
  // ! # $ % & ' * + - . ^ _ ` | ~
  return (
    byte === 0x21 ||
    (byte >= 0x23 && byte <= 0x27) ||
    byte === 0x2a ||
    byte === 0x2b ||
    byte === 0x2d ||
    byte === 0x2e ||
    byte === 0x5e ||
    byte === 0x5f ||
    byte === 0x60 ||
    byte === 0x7c ||
    byte === 0x7e
  );
}

const HTTP1_VERSION = /^HTTP\/1\.[01]$/;

/**
 * HTTP detection after TLS (or on plaintext): `h2` when the bytes start with the prior-knowledge preface,
 * `http1` when the first line is `METHOD SP target SP HTTP/1.x`, `opaque` as soon as they cannot be
 * either, undefined when more bytes are needed to tell.
 */
export function detectHttp(buffer: Uint8Array): PlaintextProtocol | undefined {
  const length = buffer.byteLength;
  if (length === 0) return undefined;
  // Still a prefix of the H2 preface: wait for the rest.
  let prefaceMatch = true;
  const prefaceBytes = Math.min(length, H2_PREFACE.byteLength);
  for (let i = 0; i < prefaceBytes; i += 1) {
    if (buffer[i] !== H2_PREFACE[i]) {
      prefaceMatch = false;
      break;
    }
  }
  if (prefaceMatch) return length >= H2_PREFACE.byteLength ? "h2" : undefined;

  const limit = Math.min(length, HTTP_DETECT_MAX_BYTES);
  let i = 0;
  while (i < limit && isTokenByte(buffer[i]!)) i += 1;
  if (i === limit) return undefined;
  if (i === 0 || buffer[i] !== 0x20) return "opaque";
  const targetStart = i + 1;
  let lineEnd = -1;
  for (let j = targetStart; j < limit; j += 1) {
    const byte = buffer[j]!;
    if (byte === 0x0a) {
      lineEnd = j > 0 && buffer[j - 1] === 0x0d ? j - 1 : j;
      break;
    }
    // Control bytes other than CR/HTAB never appear in a request line.
    if ((byte < 0x20 && byte !== 0x0d && byte !== 0x09) || byte === 0x7f) return "opaque";
  }
  if (lineEnd < 0) return undefined;
  const line = Buffer.from(buffer.buffer, buffer.byteOffset + targetStart, lineEnd - targetStart).toString(
    "latin1",
  );
  const space = line.lastIndexOf(" ");
  if (space <= 0) return "opaque";
  const target = line.slice(0, space);
  if (target.includes(" ")) return "opaque";
  return HTTP1_VERSION.test(line.slice(space + 1)) ? "http1" : "opaque";
}

/** Whether `buffer` is (a prefix of) the HTTP/2 preface. */
export function isH2PrefacePrefix(buffer: Uint8Array): boolean {
  const n = Math.min(buffer.byteLength, H2_PREFACE.byteLength);
  for (let i = 0; i < n; i += 1) if (buffer[i] !== H2_PREFACE[i]) return false;
  return true;
}

/**
 * The `server_name` (SNI host_name) of a ClientHello handshake message that fills `record` (a TLS
 * record's payload); undefined when absent, malformed, or spanning records. Never throws.
 */
export function clientHelloServerName(record: Uint8Array): string | undefined {
  const view = record;
  const end = view.byteLength;
  if (end < 4 || view[0] !== 0x01) return undefined;
  const handshakeLength = (view[1]! << 16) | (view[2]! << 8) | view[3]!;
  if (4 + handshakeLength > end) return undefined;
  const limit = 4 + handshakeLength;
  let p = 4 + 2 + 32; // client_version, random
  if (p + 1 > limit) return undefined;
  p += 1 + view[p]!; // session_id
  if (p + 2 > limit) return undefined;
  p += 2 + ((view[p]! << 8) | view[p + 1]!); // cipher_suites
  if (p + 1 > limit) return undefined;
  p += 1 + view[p]!; // compression_methods
  if (p + 2 > limit) return undefined;
  const extensionsEnd = p + 2 + ((view[p]! << 8) | view[p + 1]!);
  if (extensionsEnd > limit) return undefined;
  p += 2;
  while (p + 4 <= extensionsEnd) {
    const type = (view[p]! << 8) | view[p + 1]!;
    const length = (view[p + 2]! << 8) | view[p + 3]!;
    const body = p + 4;
    if (body + length > extensionsEnd) return undefined;
    if (type === 0) {
      if (length < 2) return undefined;
      const listEnd = body + 2 + ((view[body]! << 8) | view[body + 1]!);
      if (listEnd > body + length) return undefined;
      let q = body + 2;
      while (q + 3 <= listEnd) {
        const nameType = view[q]!;
        const nameLength = (view[q + 1]! << 8) | view[q + 2]!;
        if (q + 3 + nameLength > listEnd) return undefined;
        if (nameType === 0) {
          return Buffer.from(view.buffer, view.byteOffset + q + 3, nameLength).toString("latin1");
        }
        q += 3 + nameLength;
      }
      return undefined;
    }
    p = body + length;
  }
  return undefined;
}
