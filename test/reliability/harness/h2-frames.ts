// Hand-encoded HTTP/2 frames (RFC 9113 §4.1, §6) and HPACK header blocks (RFC 7541), so an attack can
// send exactly the bytes it means to, including the invalid ones a conforming client never would.

export const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

export const FrameType = {
  DATA: 0x0,
  HEADERS: 0x1,
  PRIORITY: 0x2,
  RST_STREAM: 0x3,
  SETTINGS: 0x4,
  PUSH_PROMISE: 0x5,
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
  PRIORITY: 0x20,
} as const;

export const Setting = {
  HEADER_TABLE_SIZE: 0x1,
  ENABLE_PUSH: 0x2,
  MAX_CONCURRENT_STREAMS: 0x3,
  INITIAL_WINDOW_SIZE: 0x4,
  MAX_FRAME_SIZE: 0x5,
  MAX_HEADER_LIST_SIZE: 0x6,
} as const;

/** One frame: 9-byte header (24-bit length, type, flags, 31-bit stream id) and the payload. */
export function frame(type: number, flags: number, streamId: number, payload: Uint8Array = Buffer.alloc(0)) {
  const header = Buffer.alloc(9);
  header.writeUIntBE(payload.length, 0, 3);
  header.writeUInt8(type & 0xff, 3);
  header.writeUInt8(flags & 0xff, 4);
  header.writeUInt32BE(streamId >>> 0, 5);
  return Buffer.concat([header, payload]);
}

/** A frame header declaring `declaredLength` whatever the payload really is (for length lies). */
export function frameWithLength(
  type: number,
  flags: number,
  streamId: number,
  declaredLength: number,
  payload: Uint8Array,
) {
  const encoded = frame(type, flags, streamId, payload);
  encoded.writeUIntBE(declaredLength & 0xffffff, 0, 3);
  return encoded;
}

export function settings(entries: readonly (readonly [number, number])[] = [], ack = false): Buffer {
  const payload = Buffer.alloc(entries.length * 6);
  entries.forEach(([id, value], index) => {
    payload.writeUInt16BE(id & 0xffff, index * 6);
    payload.writeUInt32BE(value >>> 0, index * 6 + 2);
  });
  return frame(FrameType.SETTINGS, ack ? Flag.ACK : 0, 0, payload);
}

export function windowUpdate(streamId: number, increment: number): Buffer {
  const payload = Buffer.alloc(4);
  payload.writeUInt32BE(increment >>> 0, 0);
  return frame(FrameType.WINDOW_UPDATE, 0, streamId, payload);
}

export function rstStream(streamId: number, errorCode = 0x8 /* CANCEL */): Buffer {
  const payload = Buffer.alloc(4);
  payload.writeUInt32BE(errorCode >>> 0, 0);
  return frame(FrameType.RST_STREAM, 0, streamId, payload);
}

export function ping(data: Uint8Array = Buffer.alloc(8), ack = false): Buffer {
  return frame(FrameType.PING, ack ? Flag.ACK : 0, 0, Buffer.from(data));
}

export function goaway(lastStreamId: number, errorCode: number, debug = Buffer.alloc(0)): Buffer {
  const payload = Buffer.alloc(8);
  payload.writeUInt32BE(lastStreamId >>> 0, 0);
  payload.writeUInt32BE(errorCode >>> 0, 4);
  return frame(FrameType.GOAWAY, 0, 0, Buffer.concat([payload, debug]));
}

export function priority(streamId: number, dependsOn: number, weight: number, exclusive = false): Buffer {
  const payload = Buffer.alloc(5);
  payload.writeUInt32BE(((exclusive ? 0x80000000 : 0) | (dependsOn & 0x7fffffff)) >>> 0, 0);
  payload.writeUInt8(weight & 0xff, 4);
  return frame(FrameType.PRIORITY, 0, streamId, payload);
}

export function data(streamId: number, body: Uint8Array, endStream: boolean): Buffer {
  return frame(FrameType.DATA, endStream ? Flag.END_STREAM : 0, streamId, body);
}

export function headers(
  streamId: number,
  block: Uint8Array,
  options: { endStream?: boolean; endHeaders?: boolean } = {},
): Buffer {
  const flags =
    (options.endStream ? Flag.END_STREAM : 0) | (options.endHeaders === false ? 0 : Flag.END_HEADERS);
  return frame(FrameType.HEADERS, flags, streamId, block);
}

export function continuation(streamId: number, block: Uint8Array, endHeaders: boolean): Buffer {
  return frame(FrameType.CONTINUATION, endHeaders ? Flag.END_HEADERS : 0, streamId, block);
}

/** HPACK integer with an N-bit prefix (RFC 7541 §5.1); `firstByteBits` are the bits above the prefix. */
export function hpackInteger(value: number, prefixBits: number, firstByteBits = 0): Buffer {
  const max = (1 << prefixBits) - 1;
  if (value < max) return Buffer.from([firstByteBits | value]);
  const bytes = [firstByteBits | max];
  let rest = value - max;
  while (rest >= 128) {
    bytes.push((rest % 128) + 128);
    rest = Math.floor(rest / 128);
  }
  bytes.push(rest);
  return Buffer.from(bytes);
}

function hpackString(text: string | Uint8Array): Buffer {
  const bytes = typeof text === "string" ? Buffer.from(text, "latin1") : Buffer.from(text);
  return Buffer.concat([hpackInteger(bytes.length, 7, 0), bytes]);
}

/** A literal header field without indexing, new name (RFC 7541 §6.2.2): nothing enters the table. */
export function hpackLiteral(name: string, value: string | Uint8Array): Buffer {
  return Buffer.concat([Buffer.from([0x00]), hpackString(name), hpackString(value)]);
}

/** A header block of literals, in order (pseudo-headers first, as the caller lists them). */
export function headerBlock(fields: readonly (readonly [string, string])[]): Buffer {
  return Buffer.concat(fields.map(([name, value]) => hpackLiteral(name, value)));
}

/** The pseudo-headers of a request, then `extra`. */
export function requestBlock(
  options: { method?: string; path?: string; authority?: string; scheme?: string },
  extra: readonly (readonly [string, string])[] = [],
): Buffer {
  return headerBlock([
    [":method", options.method ?? "GET"],
    [":scheme", options.scheme ?? "http"],
    [":path", options.path ?? "/"],
    [":authority", options.authority ?? "localhost"],
    ...extra,
  ]);
}

/**
 * The request that crashed the process in issue 11: the client preface, SETTINGS, a POST whose HEADERS
 * declare `content-length: 1`, then DATA longer than that, all in one buffer so it arrives in the first
 * segment (the bytes protocol detection reads and hands back).
 */
export function contentLengthCrash(authority = "localhost", scheme = "http"): Buffer {
  return Buffer.concat([
    PREFACE,
    settings(),
    headers(1, requestBlock({ method: "POST", path: "/", authority, scheme }, [["content-length", "1"]]), {
      endStream: false,
    }),
    data(1, Buffer.alloc(64, 0x61), true),
  ]);
}
