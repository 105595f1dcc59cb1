import { MeshError, MeshErrorCode } from "@inmesh/core";
import { decodeMessage } from "./decode.js";
import { Header, type SessionProtocol } from "./gen/transport_header.js";

/** The 23-byte preface a client writes before the header: `transport.l5d.io/v1\r\n\r\n`. */
export const TRANSPORT_HEADER_PREFACE = Buffer.from("transport.l5d.io/v1\r\n\r\n", "latin1");
/** The ALPN protocol that announces a transport header on the inbound port. */
export const TRANSPORT_HEADER_ALPN = "transport.l5d.io/v1";
/** Linkerd reads with a 64 KiB buffer; a header that does not fit is refused. */
export const MAX_TRANSPORT_HEADER_BYTES = 64 * 1024;

export type SessionProtocolName = "http1" | "http2" | undefined;

export interface TransportHeader {
  /** The application port on the target, 1..65535. */
  readonly port: number;
  /** Empty unless the target is a multicluster gateway. */
  readonly name: string;
  /** undefined for opaque TCP. */
  readonly sessionProtocol: SessionProtocolName;
}

function protocolMessage(name: SessionProtocolName): SessionProtocol | undefined {
  if (name === "http1") return { kind: { $case: "http1", value: {} } };
  if (name === "http2") return { kind: { $case: "http2", value: {} } };
  return undefined;
}

function invalidHeader(message: string, cause?: unknown): MeshError {
  return new MeshError(MeshErrorCode.TRANSPORT_HEADER_INVALID, message, cause === undefined ? {} : { cause });
}

/** Encodes preface, u32 big-endian length and the protobuf Header. */
export function encodeTransportHeader(header: TransportHeader): Buffer {
  if (!Number.isInteger(header.port) || header.port < 1 || header.port > 65535) {
    throw invalidHeader(`transport header port ${header.port} is outside 1-65535`);
  }
  const body = Header.encode({
    port: header.port,
    name: header.name,
    sessionProtocol: protocolMessage(header.sessionProtocol),
  }).finish();
  const length = Buffer.alloc(4);
  length.writeUInt32BE(body.byteLength, 0);
  return Buffer.concat([TRANSPORT_HEADER_PREFACE, length, body]);
}

export type TransportHeaderParse =
  /** More bytes are needed; `needed` is how many in total, when known. */
  | { readonly complete: false; readonly needed: number | undefined }
  /** A header, and how many bytes of the input it used; the rest belongs to the application. */
  | { readonly complete: true; readonly header: TransportHeader; readonly consumed: number };

/**
 * Parses a transport header from the start of `input`. Returns `complete: false` while the bytes seen
 * so far are a valid prefix; throws a typed MeshError as soon as they cannot be one, or when the
 * declared length exceeds `maxBytes`, before any of that length is buffered.
 */
export function parseTransportHeader(
  input: Uint8Array,
  maxBytes = MAX_TRANSPORT_HEADER_BYTES,
): TransportHeaderParse {
  const preface = TRANSPORT_HEADER_PREFACE;
  const prefixLength = Math.min(input.byteLength, preface.byteLength);
  for (let i = 0; i < prefixLength; i += 1) {
    if (input[i] !== preface[i])
      throw invalidHeader("connection does not start with the transport.l5d.io/v1 preface");
  }
  if (input.byteLength < preface.byteLength + 4) return { complete: false, needed: undefined };
  const view = new DataView(input.buffer, input.byteOffset, input.byteLength);
  const length = view.getUint32(preface.byteLength, false);
  const total = preface.byteLength + 4 + length;
  if (length > maxBytes || total > maxBytes + preface.byteLength + 4) {
    throw new MeshError(
      MeshErrorCode.TRANSPORT_HEADER_TOO_LARGE,
      `transport header declares ${length} bytes, more than ${maxBytes}`,
      {
        details: { length, maxBytes },
      },
    );
  }
  if (input.byteLength < total) return { complete: false, needed: total };
  const decoded = decodeMessage(Header, input.subarray(preface.byteLength + 4, total), {
    name: "transport header",
  });
  if (decoded.port < 1 || decoded.port > 65535)
    throw invalidHeader(`transport header port ${decoded.port} is outside 1-65535`);
  const kind = decoded.sessionProtocol?.kind?.$case;
  return {
    complete: true,
    consumed: total,
    header: { port: decoded.port, name: decoded.name, sessionProtocol: kind },
  };
}

/**
 * Parses a header that must be entirely present, as when a connection has ended: a short input is a
 * typed truncation error.
 */
export function decodeTransportHeader(
  input: Uint8Array,
  maxBytes = MAX_TRANSPORT_HEADER_BYTES,
): TransportHeader & { consumed: number } {
  const result = parseTransportHeader(input, maxBytes);
  if (!result.complete) {
    throw new MeshError(
      MeshErrorCode.TRANSPORT_HEADER_TRUNCATED,
      `transport header truncated after ${input.byteLength} bytes`,
      {
        details: { received: input.byteLength, needed: result.needed },
      },
    );
  }
  return { ...result.header, consumed: result.consumed };
}
