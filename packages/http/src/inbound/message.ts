import { IncomingMessage, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";

const kDistinct = Symbol("inmesh.headersDistinct");

type DistinctHeaders = Record<string, string[] | undefined>;

/** `headersDistinct` as node:http builds it, but from the whole (possibly edited) raw header list. */
export function distinctFromRaw(rawHeaders: readonly string[]): DistinctHeaders {
  const distinct: DistinctHeaders = {};
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!.toLowerCase();
    const values = distinct[name];
    if (values === undefined) distinct[name] = [rawHeaders[i + 1]!];
    else values.push(rawHeaders[i + 1]!);
  }
  return distinct;
}

/**
 * The request class of the mesh server's HTTP/1 server. node:http builds `headersDistinct` from the raw
 * headers it counted while parsing, so the `l5d-client-id` the gate appends to `rawHeaders` would be
 * missing from it; this class builds it from the edited raw list, and only if the application reads it
 * (building it for every request cost ~6% of CPU).
 */
export class MeshIncomingMessage extends IncomingMessage {
  /**
   * node:http "dumps" a request the application did not read once its response finished, by resuming
   * it: a tick to start flowing, a 'resume' event, a flow loop, then another tick to emit 'end'. For a
   * request whose body is all in (a GET: ended, nothing buffered, nobody listening for data) reading
   * nothing ends it the same way, with 'end' then 'close', in one tick.
   */
  _dump(): void {
    const internals = this as unknown as DumpInternals;
    const state = internals._readableState;
    if (!internals._dumped && state.ended && state.length === 0 && this.listenerCount("data") === 0) {
      internals._dumped = true;
      this.read(0);
      return;
    }
    dumpIncoming.call(this);
  }
}

interface DumpInternals {
  _dumped: boolean;
  _readableState: { ended: boolean; length: number };
}

const dumpIncoming = (IncomingMessage.prototype as unknown as { _dump: (this: IncomingMessage) => void })
  ._dump;

// An accessor on the prototype (node:http's own is one too; TypeScript types it as a data property).
Object.defineProperty(MeshIncomingMessage.prototype, "headersDistinct", {
  configurable: true,
  enumerable: false,
  get(this: { [kDistinct]?: DistinctHeaders; rawHeaders: string[] }): DistinctHeaders {
    let distinct = this[kDistinct];
    if (distinct === undefined) {
      distinct = distinctFromRaw(this.rawHeaders);
      this[kDistinct] = distinct;
    }
    return distinct;
  },
  set(this: { [kDistinct]?: DistinctHeaders }, value: DistinctHeaders) {
    this[kDistinct] = value;
  },
});

/** The largest head and first body chunk sent as one buffer: a TLS record's payload. */
export const COALESCED_WRITE_LIMIT = 16 * 1024;

type SendCallback = ((error?: Error | null) => void) | null | undefined;

interface SendInternals {
  _header: string | null;
  _headerSent: boolean;
  _writeRaw(data: Uint8Array, encoding: undefined, callback: SendCallback, byteLength: number): boolean;
}

type Send = (
  this: ServerResponse,
  data: string | Uint8Array,
  encoding: BufferEncoding | null | undefined,
  callback: SendCallback,
  byteLength?: number,
) => boolean;

const NOTHING = Buffer.alloc(0);
const sendResponse = (ServerResponse.prototype as unknown as { _send: Send })._send;

/**
 * `_send` for a mesh server's HTTP/1 responses (an own property, set per response: Express swaps the
 * response's prototype). node:http queues a response's head (a latin1 string), its first body chunk and
 * end()'s empty string (queued only to call back once everything before it is written) as separate
 * writes, and the socket's C++ side parses each string's encoding and encodes it, then, over TLS, copies
 * everything into one record anyway: ~7,000 instructions a request, a tenth of an mTLS request. Here the
 * head and the first chunk go as one buffer, and the empty write as an empty buffer, so the socket
 * receives buffers only.
 */
export function sendHeadWithFirstChunk(
  this: ServerResponse,
  data: string | Uint8Array,
  encoding: BufferEncoding | null | undefined,
  callback: SendCallback,
  byteLength?: number,
): boolean {
  const internals = this as unknown as SendInternals;
  const head = internals._header;
  if (internals._headerSent || head === null) {
    if (data === "") return internals._writeRaw(NOTHING, undefined, callback, 0);
    return sendResponse.call(this, data, encoding, callback, byteLength);
  }
  const whole = headWithChunk(head, data, encoding);
  if (whole === undefined) return sendResponse.call(this, data, encoding, callback, byteLength);
  internals._headerSent = true;
  return internals._writeRaw(whole, undefined, callback, whole.byteLength);
}

/**
 * The head and a first chunk as one buffer; undefined past one TLS record (the copy would cost more than
 * it saves) and for the encodings node:http writes apart (base64, hex…).
 */
function headWithChunk(
  head: string,
  data: string | Uint8Array,
  encoding: BufferEncoding | null | undefined,
): Buffer | undefined {
  let whole: Buffer;
  if (typeof data !== "string") {
    const size = head.length + data.byteLength;
    if (size > COALESCED_WRITE_LIMIT) return undefined;
    whole = Buffer.allocUnsafe(size);
    whole.set(data, head.length);
  } else {
    const latin1 = encoding === "latin1";
    if ((!latin1 && encoding && encoding !== "utf8") || data.length > COALESCED_WRITE_LIMIT) return undefined;
    const size = head.length + (latin1 ? data.length : Buffer.byteLength(data, "utf8"));
    if (size > COALESCED_WRITE_LIMIT) return undefined;
    whole = Buffer.allocUnsafe(size);
    whole.write(data, head.length, latin1 ? "latin1" : "utf8");
  }
  // node:http refuses header values outside latin1, so the head is exactly its latin1 bytes.
  whole.write(head, 0, "latin1");
  return whole;
}

/**
 * For a request from a server the application created (a plain IncomingMessage): replaces its
 * `headersDistinct` with one built lazily from the edited raw headers, so nothing is built unless read.
 */
export function deferHeadersDistinct(message: object): void {
  if (message instanceof MeshIncomingMessage) return;
  const raw = (message as { rawHeaders?: string[] }).rawHeaders;
  if (raw === undefined) return;
  let distinct: DistinctHeaders | undefined;
  Object.defineProperty(message, "headersDistinct", {
    configurable: true,
    enumerable: false,
    get: () => {
      distinct ??= distinctFromRaw(raw);
      return distinct;
    },
    set: (value: DistinctHeaders) => {
      distinct = value;
    },
  });
}

/**
 * Draining for the HTTP/1 connections of one server, tracked per connection rather than per request:
 * at drain time the response in flight on each connection (node:http's `_httpMessage`) is told to close
 * the connection, or, if its headers are already out, the connection is closed once it is idle again.
 */
export class Http1Drain {
  /** The served connections (the keep-alive sweep walks them too). */
  readonly sockets = new Set<Duplex>();
  private draining = false;
  // Shared by every socket ('close' fires once): no wrapper or closure kept per connection.
  private readonly untrack: (this: Duplex) => void;

  constructor() {
    const sockets = this.sockets;
    this.untrack = function (this: Duplex) {
      sockets.delete(this);
    };
  }

  track(socket: Duplex): void {
    this.sockets.add(socket);
    socket.on("close", this.untrack);
  }

  start(closeIdle: () => void): void {
    if (this.draining) return;
    this.draining = true;
    for (const socket of this.sockets) {
      const res = (socket as { _httpMessage?: import("node:http").ServerResponse | null })._httpMessage;
      if (res === undefined || res === null) continue;
      if (!res.headersSent) res.setHeader("connection", "close");
      else res.once("close", () => setImmediate(closeIdle));
    }
    closeIdle();
  }
}
