/**
 * Hand-built HTTP/2 frames (RFC 9113) for tests that must send exactly what a hostile client would,
 * frame by frame, in one write: node:http2's client refuses to send most of these sequences.
 */

export const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

export const FrameType = {
  DATA: 0x0,
  HEADERS: 0x1,
  PRIORITY: 0x2,
  RST_STREAM: 0x3,
  SETTINGS: 0x4,
  PING: 0x6,
  GOAWAY: 0x7,
  WINDOW_UPDATE: 0x8,
  CONTINUATION: 0x9,
} as const;

export const Flag = {
  END_STREAM: 0x1,
  ACK: 0x1,
  END_HEADERS: 0x4,
  PADDED: 0x8,
} as const;

export function frame(
  type: number,
  flags: number,
  streamId: number,
  payload: Uint8Array = Buffer.alloc(0),
): Buffer {
  const header = Buffer.alloc(9);
  header.writeUIntBE(payload.byteLength, 0, 3);
  header[3] = type;
  header[4] = flags;
  header.writeUInt32BE(streamId & 0x7fffffff, 5);
  return Buffer.concat([header, payload]);
}

/** HPACK integer with an N-bit prefix (RFC 7541 §5.1). */
function hpackInteger(value: number, prefixBits: number, firstByte: number): number[] {
  const max = (1 << prefixBits) - 1;
  if (value < max) return [firstByte | value];
  const bytes = [firstByte | max];
  let rest = value - max;
  while (rest >= 128) {
    bytes.push((rest % 128) + 128);
    rest = Math.floor(rest / 128);
  }
  bytes.push(rest);
  return bytes;
}

function hpackString(text: string): Buffer {
  const bytes = Buffer.from(text, "latin1");
  return Buffer.concat([Buffer.from(hpackInteger(bytes.byteLength, 7, 0)), bytes]);
}

/** A header block of literal fields without indexing (no Huffman): decodable by any HPACK decoder. */
export function headerBlock(headers: readonly (readonly [string, string])[]): Buffer {
  return Buffer.concat(
    headers.map(([name, value]) =>
      Buffer.concat([Buffer.from([0x00]), hpackString(name), hpackString(value)]),
    ),
  );
}

export function settings(values: readonly (readonly [number, number])[] = []): Buffer {
  const payload = Buffer.alloc(6 * values.length);
  values.forEach(([id, value], index) => {
    payload.writeUInt16BE(id, index * 6);
    payload.writeUInt32BE(value, index * 6 + 2);
  });
  return frame(FrameType.SETTINGS, 0, 0, payload);
}

export const settingsAck = (): Buffer => frame(FrameType.SETTINGS, Flag.ACK, 0);

export function headers(
  streamId: number,
  fields: readonly (readonly [string, string])[],
  options: { endStream?: boolean; endHeaders?: boolean } = {},
): Buffer {
  const flags =
    (options.endStream ? Flag.END_STREAM : 0) | (options.endHeaders === false ? 0 : Flag.END_HEADERS);
  return frame(FrameType.HEADERS, flags, streamId, headerBlock(fields));
}

export function continuation(
  streamId: number,
  fields: readonly (readonly [string, string])[],
  endHeaders: boolean,
): Buffer {
  return frame(FrameType.CONTINUATION, endHeaders ? Flag.END_HEADERS : 0, streamId, headerBlock(fields));
}

export function data(streamId: number, body: Uint8Array | string, endStream = false): Buffer {
  const payload = typeof body === "string" ? Buffer.from(body) : body;
  return frame(FrameType.DATA, endStream ? Flag.END_STREAM : 0, streamId, payload);
}

export function rstStream(streamId: number, code = 0x8): Buffer {
  const payload = Buffer.alloc(4);
  payload.writeUInt32BE(code);
  return frame(FrameType.RST_STREAM, 0, streamId, payload);
}

export function windowUpdate(streamId: number, increment: number): Buffer {
  const payload = Buffer.alloc(4);
  payload.writeUInt32BE(increment);
  return frame(FrameType.WINDOW_UPDATE, 0, streamId, payload);
}

export function ping(ack = false): Buffer {
  return frame(FrameType.PING, ack ? Flag.ACK : 0, 0, Buffer.alloc(8));
}

/** Request pseudo-headers for a POST to `path`, plus extra fields. */
export function post(
  path: string,
  extra: readonly (readonly [string, string])[] = [],
): (readonly [string, string])[] {
  return [[":method", "POST"], [":scheme", "http"], [":path", path], [":authority", "foo.test"], ...extra];
}

export function get(
  path: string,
  extra: readonly (readonly [string, string])[] = [],
): (readonly [string, string])[] {
  return [[":method", "GET"], [":scheme", "http"], [":path", path], [":authority", "foo.test"], ...extra];
}

export interface ParsedFrame {
  readonly type: number;
  readonly flags: number;
  readonly streamId: number;
  readonly payload: Buffer;
}

/** Splits received bytes into frames (the server sends no preface, only frames). */
export function parseFrames(bytes: Buffer): ParsedFrame[] {
  const frames: ParsedFrame[] = [];
  let offset = 0;
  while (offset + 9 <= bytes.byteLength) {
    const length = bytes.readUIntBE(offset, 3);
    if (offset + 9 + length > bytes.byteLength) break;
    frames.push({
      type: bytes[offset + 3] as number,
      flags: bytes[offset + 4] as number,
      streamId: bytes.readUInt32BE(offset + 5) & 0x7fffffff,
      payload: bytes.subarray(offset + 9, offset + 9 + length),
    });
    offset += 9 + length;
  }
  return frames;
}
