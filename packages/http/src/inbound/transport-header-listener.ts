import {
  type AddressInfo,
  createServer as createNetServer,
  type Server as NetServer,
  type Socket,
} from "node:net";
import { createServer as createTlsServer, type TLSSocket, type Server as TlsServer } from "node:tls";
import { debuglog } from "node:util";
import { type Closable, checkDuration, closeOnce, MeshError, MeshErrorCode } from "@inmesh/core";
import {
  MAX_TRANSPORT_HEADER_BYTES,
  parseTransportHeader,
  TRANSPORT_HEADER_ALPN,
  type TransportHeader,
} from "@inmesh/proto/serving";
import type { MeshServerIdentity } from "./connection.js";
import { CLIENT_HELLO_MAX_BYTES, detectConnection } from "./detect.js";
import { checkPort } from "./policy-source.js";
import { readPrefix } from "./prefix.js";
import type { TransportHeaderTarget } from "./server.js";

const debug = debuglog("mesh");
const WHERE = "createTransportHeaderListener";

export interface TransportHeaderListenerOptions {
  /** The workload identity: the SNI a client must send, and the certificate that terminates TLS. */
  identity: MeshServerIdentity;
  /** Bound on the ClientHello, the handshake and the transport header, each. @default 10000 */
  detectTimeoutMs?: number;
  /** Connections accepted at once; more are dropped at accept. @default 10000 */
  maxConnections?: number;
}

export interface TransportHeaderListener extends Closable {
  /** The listening socket server (port 4143 in a pod). */
  readonly server: NetServer;
  /**
   * Routes connections whose transport header names `port` to `target` (a `MeshServer`). Returns the
   * function that removes the route. A port routes to one server at a time.
   */
  route(port: number, target: TransportHeaderTarget): () => void;
  /** The ports currently routed. */
  ports(): number[];
  listen(port: number, host?: string): Promise<AddressInfo>;
  address(): AddressInfo | undefined;
  /** Connections still being accepted here (not yet handed to a server). */
  readonly connectionCount: number;
}

function addressKey(socket: { remoteAddress?: string | undefined; remotePort?: number | undefined }): string {
  return `${socket.remoteAddress ?? ""}|${socket.remotePort ?? 0}`;
}

/**
 * Linkerd's direct stack (linkerd2-proxy `inbound/src/direct.rs`), shared by every port a process serves:
 * one listener that accepts mesh TLS for our SNI only, offers ALPN `transport.l5d.io/v1` and requires
 * it, requires a verified client identity, reads the transport header (bounded in bytes and time), and
 * hands the connection to the server for the header's port with the header's session protocol (none
 * meaning opaque). A header naming a gateway (`name`), a port nobody serves, or anything malformed
 * closes the connection without a byte written, as the proxy does.
 */
export function createTransportHeaderListener(
  options: TransportHeaderListenerOptions,
): TransportHeaderListener {
  if (typeof options !== "object" || options === null) {
    throw new MeshError(MeshErrorCode.INVALID_ARG, `${WHERE}: options are required`);
  }
  const identity = options.identity;
  if (
    typeof identity?.tlsServerOptions !== "function" ||
    typeof identity.peerIdentity !== "function" ||
    typeof identity.localName !== "string"
  ) {
    throw new MeshError(MeshErrorCode.INVALID_ARG, `${WHERE}: identity must be an IdentityProvider`);
  }
  const detectTimeoutMs = checkDuration(options.detectTimeoutMs, 10_000, "detectTimeoutMs", WHERE);
  const maxConnections = options.maxConnections ?? 10_000;
  if (!Number.isInteger(maxConnections) || maxConnections <= 0) {
    throw new MeshError(MeshErrorCode.INVALID_ARG, `${WHERE}: maxConnections must be a positive integer`);
  }

  const routes = new Map<number, TransportHeaderTarget>();
  /** Sockets not yet handed to a server: destroyed when the listener closes. */
  const accepting = new Set<Socket>();
  const pendingTls = new Map<string, Socket>();
  let closing = false;

  const tlsServer: TlsServer = createTlsServer({
    ...identity.tlsServerOptions(),
    ALPNProtocols: [TRANSPORT_HEADER_ALPN],
    handshakeTimeout: detectTimeoutMs,
  });
  tlsServer.on("secureConnection", onSecure);
  tlsServer.on("tlsClientError", (error) =>
    debug("inbound: transport-header TLS handshake failed: %s", error.message),
  );

  const server = createNetServer({ noDelay: true }, onConnection);
  server.maxConnections = maxConnections;

  function swallow(error: Error): void {
    debug("inbound: transport-header connection error: %s", error.message);
  }

  function onConnection(raw: Socket): void {
    if (closing) {
      raw.destroy();
      return;
    }
    raw.on("error", swallow);
    accepting.add(raw);
    raw.once("close", () => accepting.delete(raw));
    readPrefix(
      raw,
      {
        maxBytes: CLIENT_HELLO_MAX_BYTES,
        timeoutMs: detectTimeoutMs,
        decide: (buffer) => {
          const detection = detectConnection(buffer);
          return detection.kind === "more" ? undefined : detection;
        },
      },
      (result) => {
        if (result.kind === "closed") return;
        // Plaintext, or TLS for another name: the direct stack has no identity to terminate it with.
        if (
          result.kind !== "decided" ||
          result.value.kind !== "tls" ||
          result.value.serverName !== identity.localName
        ) {
          debug("inbound: transport-header connection from %s is not mesh TLS for us", raw.remoteAddress);
          raw.destroy();
          return;
        }
        const key = addressKey(raw);
        pendingTls.set(key, raw);
        raw.once("close", () => {
          if (pendingTls.get(key) === raw) pendingTls.delete(key);
        });
        tlsServer.emit("connection", raw);
      },
    );
  }

  function onSecure(socket: TLSSocket): void {
    socket.on("error", swallow);
    const key = addressKey(socket);
    const raw = pendingTls.get(key);
    pendingTls.delete(key);
    if (raw === undefined || closing) {
      socket.destroy();
      return;
    }
    const peer = identity.peerIdentity(socket);
    // RefusedNoIdentity and TransportHeaderRequired in linkerd2-proxy: both close the connection.
    if (peer.kind !== "mesh" || socket.alpnProtocol !== TRANSPORT_HEADER_ALPN) {
      debug(
        "inbound: direct connection from %s refused (identity %s, alpn %s)",
        raw.remoteAddress,
        peer.kind,
        socket.alpnProtocol,
      );
      socket.destroy();
      return;
    }
    let invalid = false;
    readPrefix<{ header: TransportHeader; consumed: number }>(
      socket,
      {
        maxBytes: MAX_TRANSPORT_HEADER_BYTES + 64,
        timeoutMs: detectTimeoutMs,
        decide: (buffer) => {
          try {
            const parsed = parseTransportHeader(buffer);
            return parsed.complete ? { header: parsed.header, consumed: parsed.consumed } : undefined;
          } catch (error) {
            debug("inbound: bad transport header: %s", (error as Error).message);
            invalid = true;
            return { header: { port: 0, name: "", sessionProtocol: undefined }, consumed: 0 };
          }
        },
      },
      (result) => {
        if (result.kind !== "decided" || invalid || closing) {
          socket.destroy();
          return;
        }
        const { header, consumed } = result.value;
        // A name asks for the multicluster gateway stack, which a workload does not have.
        const target = header.name === "" ? routes.get(header.port) : undefined;
        if (target === undefined) {
          debug("inbound: transport header for %s:%d is not served here", header.name, header.port);
          socket.destroy();
          return;
        }
        socket.read(consumed);
        accepting.delete(raw);
        target.acceptTransportHeaderConnection(socket, raw, peer, header.sessionProtocol);
      },
    );
  }

  const lifecycle = closeOnce(() => {
    closing = true;
    for (const socket of accepting) socket.destroy();
    accepting.clear();
    // Stop accepting only: the servers own (and drain) the connections already handed to them, which
    // net.Server's close callback would otherwise wait for.
    if (server.listening) server.close();
    tlsServer.close();
  });

  return {
    server,
    route(port, target) {
      checkPort(port, "port", `${WHERE}.route`);
      if (typeof target?.acceptTransportHeaderConnection !== "function") {
        throw new MeshError(MeshErrorCode.INVALID_ARG, `${WHERE}.route: target must be a MeshServer`);
      }
      const existing = routes.get(port);
      if (existing !== undefined && existing !== target) {
        throw new MeshError(
          MeshErrorCode.INVALID_ARG,
          `${WHERE}.route: port ${port} is already served by another server`,
          { details: { port } },
        );
      }
      routes.set(port, target);
      return () => {
        if (routes.get(port) === target) routes.delete(port);
      };
    },
    ports: () => [...routes.keys()].sort((a, b) => a - b),
    listen(port, host) {
      if (closing) return Promise.reject(new MeshError(MeshErrorCode.CLOSED, "the listener is closed"));
      checkPort(port, "listen port", `${WHERE}.listen`, true);
      return new Promise<AddressInfo>((resolve, reject) => {
        const onError = (error: Error) => reject(error);
        server.once("error", onError);
        server.listen(port, host, () => {
          server.removeListener("error", onError);
          resolve(server.address() as AddressInfo);
        });
      });
    },
    address: () => (server.address() as AddressInfo | null) ?? undefined,
    get connectionCount() {
      return accepting.size;
    },
    close: lifecycle.close,
    [Symbol.asyncDispose]: lifecycle.close,
  };
}
