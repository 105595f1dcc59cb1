import {
  request as http1Request,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type Server,
} from "node:http";
import { constants as h2constants, type ServerHttp2Stream } from "node:http2";
import { Duplex } from "node:stream";
import { debuglog } from "node:util";
import { isConnectionSpecificHeader, L5D_ORIG_PROTO, type OrigProto } from "./headers.js";

const debug = debuglog("mesh");

/** Address facts an HTTP/1 application reads from `req.socket` (Express `req.ip`, `req.protocol`…). */
export interface BridgeAddress {
  readonly remoteAddress: string | undefined;
  readonly remotePort: number | undefined;
  readonly localAddress: string | undefined;
  readonly localPort: number | undefined;
  readonly encrypted: boolean;
}

function bridgeError(error: Error): void {
  debug("inbound: HTTP/1 bridge socket error: %s", error.message);
}

/** One end of an in-memory, back-pressured byte pipe that node:http accepts as a socket. */
class BridgeSocket extends Duplex {
  peer: BridgeSocket | undefined;
  private pendingWrite: (() => void) | undefined;
  readonly remoteAddress: string | undefined;
  readonly remotePort: number | undefined;
  readonly localAddress: string | undefined;
  readonly localPort: number | undefined;
  readonly encrypted: boolean;

  constructor(address: BridgeAddress) {
    super({ allowHalfOpen: true });
    this.remoteAddress = address.remoteAddress;
    this.remotePort = address.remotePort;
    this.localAddress = address.localAddress;
    this.localPort = address.localPort;
    this.encrypted = address.encrypted;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    const peer = this.peer;
    if (peer === undefined || peer.destroyed) {
      callback(new Error("bridge peer closed"));
      return;
    }
    if (peer.push(chunk)) callback();
    else peer.pendingWrite = callback;
  }

  override _read(): void {
    const pending = this.pendingWrite;
    if (pending !== undefined) {
      this.pendingWrite = undefined;
      pending();
    }
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.peer?.push(null);
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    const peer = this.peer;
    this.peer = undefined;
    if (peer !== undefined && !peer.destroyed) peer.destroy();
    callback(error);
  }

  setTimeout(): this {
    return this;
  }
  setNoDelay(): this {
    return this;
  }
  setKeepAlive(): this {
    return this;
  }
  address(): { address: string | undefined; port: number | undefined } {
    return { address: this.localAddress, port: this.localPort };
  }
}

function bridgePair(address: BridgeAddress): [server: BridgeSocket, client: BridgeSocket] {
  const server = new BridgeSocket(address);
  const client = new BridgeSocket(address);
  server.peer = client;
  client.peer = server;
  return [server, client];
}

/** Request headers an HTTP/2 request cannot forward as HTTP/1 ones (pseudo-headers handled apart). */
const DROP_REQUEST = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
  "te",
]);

/**
 * Serves one HTTP/2 request through an HTTP/1 `node:http` server, the way Linkerd downgrades requests for
 * an HTTP/1 application: the request is written as HTTP/1.1 into an in-memory connection the server
 * accepts (so the application gets real `IncomingMessage`/`ServerResponse` objects, which Express and
 * most frameworks need), and the HTTP/1 response is sent back on the stream, trailers included.
 * `onServerSocket` runs before the server sees the connection (to attach the request's mesh context).
 */
export function bridgeToHttp1(
  stream: ServerHttp2Stream,
  headers: IncomingHttpHeaders,
  options: {
    readonly server: Server;
    readonly address: BridgeAddress;
    readonly origProto: OrigProto | undefined;
    readonly onServerSocket: (socket: Duplex) => void;
  },
): void {
  const [serverSocket, clientSocket] = bridgePair(options.address);
  // node:http detaches its socket listeners once a request is done; a late write on a torn-down pipe
  // must not become an unhandled 'error'.
  serverSocket.on("error", bridgeError);
  clientSocket.on("error", bridgeError);
  const forwarded: Record<string, string | string[]> = {};
  for (const name of Object.keys(headers)) {
    if (name.charCodeAt(0) === 0x3a || DROP_REQUEST.has(name)) continue;
    const value = headers[name];
    if (value !== undefined) forwarded[name] = value;
  }
  const authority = headers[":authority"];
  if (forwarded.host === undefined) {
    forwarded.host =
      typeof authority === "string" && authority !== ""
        ? authority
        : `${options.address.localAddress ?? "localhost"}:${options.address.localPort ?? 80}`;
  }
  options.onServerSocket(serverSocket);
  options.server.emit("connection", serverSocket);

  const method = String(headers[":method"] ?? "GET");
  const upstream = http1Request({
    method,
    path: String(headers[":path"] ?? "/"),
    headers: forwarded,
    setHost: false,
    createConnection: () => clientSocket,
  });
  let responded = false;
  const fail = (error: Error) => {
    debug("inbound: HTTP/1 bridge failed: %s", error.message);
    if (!stream.destroyed) {
      if (!responded && !stream.headersSent) {
        stream.respond({ ":status": 502, "content-length": "0" }, { endStream: true });
      } else {
        stream.close(h2constants.NGHTTP2_INTERNAL_ERROR);
      }
    }
    serverSocket.destroy();
  };
  upstream.on("error", fail);
  stream.on("close", () => {
    if (!upstream.destroyed) upstream.destroy();
    if (!serverSocket.destroyed) serverSocket.destroy();
  });
  stream.on("error", () => upstream.destroy());

  upstream.on("response", (response: IncomingMessage) => {
    responded = true;
    if (stream.destroyed) {
      response.destroy();
      return;
    }
    const outgoing: Record<string, string | string[] | number> = { ":status": response.statusCode ?? 502 };
    const connectionTokens = response.headers.connection;
    for (const name of Object.keys(response.headers)) {
      if (isConnectionSpecificHeader(name)) continue;
      if (
        typeof connectionTokens === "string" &&
        connectionTokens
          .toLowerCase()
          .split(/\s*,\s*/)
          .includes(name)
      )
        continue;
      const value = response.headers[name];
      if (value !== undefined) outgoing[name] = value;
    }
    if (options.origProto !== undefined) outgoing[L5D_ORIG_PROTO] = options.origProto;
    const noBody = method === "HEAD" || response.statusCode === 204 || response.statusCode === 304;
    // Trailers are only known at the end of the body, so the stream always waits for them (an empty
    // trailer block just ends the stream).
    const hasTrailers = !noBody;
    try {
      stream.respond(outgoing, { endStream: noBody, waitForTrailers: hasTrailers });
    } catch (error) {
      fail(error as Error);
      response.destroy();
      return;
    }
    if (noBody) {
      response.resume();
      return;
    }
    if (hasTrailers) {
      stream.once("wantTrailers", () => {
        const trailers: Record<string, string> = {};
        for (const [name, value] of Object.entries(response.trailers)) {
          if (value !== undefined && !isConnectionSpecificHeader(name)) trailers[name] = value;
        }
        stream.sendTrailers(trailers);
      });
    }
    response.pipe(stream);
    response.on("error", (error) => fail(error));
  });
  stream.pipe(upstream);
}
