import { IncomingMessage } from "node:http";
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
