import net from "node:net";
import tls from "node:tls";
import { debuglog } from "node:util";
import { type ConnectionInjector, type Server, ServerCredentials } from "@grpc/grpc-js";
import { isLoopbackHost } from "@inmesh/core";

const debug = debuglog("mesh");

/** The first byte of every TLS connection: a handshake record. */
const TLS_HANDSHAKE_RECORD = 0x16;

/** Key material the listener serves; replaced as a whole when the serving certificate rotates. */
/** How long a closing listener waits for clients to close their connections before it destroys them. */
const SOCKET_END_GRACE_MS = 1000;

export interface ServingCredentials {
  /** PEM private key. */
  readonly keyPem: string;
  /** PEM leaf followed by its intermediates. */
  readonly certificateChainPem: string;
  /** PEM trust anchors, used to verify client certificates. */
  readonly trustAnchorsPem: string;
}

export interface GrpcListenerOptions {
  readonly host: string;
  /** 0 picks an ephemeral port. */
  readonly port: number;
  /** The grpc-js server holding this port's services; the listener hands it decrypted connections. */
  readonly server: Server;
  readonly credentials: ServingCredentials;
  /** Refuse TLS clients that do not present a certificate chaining to the trust anchors. */
  readonly requireClientCertificate: boolean;
  /** Accept plaintext gRPC from loopback clients (linkerd2-proxy's rule for loopback control planes). */
  readonly allowLoopbackPlaintext: boolean;
  /** A connection that sends nothing for this long is dropped before it is classified. */
  readonly firstByteTimeoutMs?: number;
  readonly handshakeTimeoutMs?: number;
}

export interface GrpcListener {
  readonly host: string;
  readonly port: number;
  setCredentials(credentials: ServingCredentials): void;
  /** Stops accepting and destroys every connection still open. */
  close(): Promise<void>;
}

function secureContextOptions(credentials: ServingCredentials): tls.SecureContextOptions {
  return {
    key: credentials.keyPem,
    cert: credentials.certificateChainPem,
    ca: credentials.trustAnchorsPem,
    minVersion: "TLSv1.3",
  };
}

/** IPv4-mapped IPv6 loopback (::ffff:127.x.y.z) counts as loopback too. */
function isLoopbackAddress(address: string | undefined): boolean {
  if (address === undefined) return false;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return isLoopbackHost(mapped?.[1] ?? address);
}

/**
 * One TCP port that speaks gRPC over TLS 1.3 to everyone and, when allowed, plaintext gRPC to loopback
 * clients. Why not grpc-js `bindAsync`: it serves either plaintext or TLS on a port, never both, and it
 * cannot restrict TLS to 1.3. Instead a node:net listener classifies each connection by its first byte
 * (0x16 opens a TLS handshake), a node:tls server that is never bound terminates TLS, and the decrypted
 * socket (or the loopback plaintext socket) goes to grpc-js through a plaintext connection injector.
 */
export async function startGrpcListener(options: GrpcListenerOptions): Promise<GrpcListener> {
  const firstByteTimeoutMs = options.firstByteTimeoutMs ?? 10_000;
  const injector: ConnectionInjector = options.server.createConnectionInjector(
    ServerCredentials.createInsecure(),
  );
  const sockets = new Set<net.Socket>();
  let allSocketsClosed: (() => void) | undefined;

  const tlsServer = tls.createServer({
    ...secureContextOptions(options.credentials),
    requestCert: options.requireClientCertificate,
    rejectUnauthorized: options.requireClientCertificate,
    // grpc-js clients offer h2; linkerd2-proxy offers no ALPN at all and speaks prior-knowledge HTTP/2.
    ALPNProtocols: ["h2"],
    handshakeTimeout: options.handshakeTimeoutMs ?? 10_000,
  });
  tlsServer.on("secureConnection", (socket: tls.TLSSocket) => {
    // node:http2 servers refuse TLS sockets that negotiated no ALPN (they expect HTTP/1.1 fallback), so a
    // proxy-style client without ALPN is marked as h2, which is what it speaks.
    if (socket.alpnProtocol === false)
      (socket as { alpnProtocol: string | false | null }).alpnProtocol = "h2";
    injector.injectConnection(socket);
  });
  tlsServer.on("tlsClientError", (error, socket) => {
    debug("control-plane: TLS client error from %s: %s", socket.remoteAddress, error.message);
    socket.destroy();
  });

  const route = (socket: net.Socket) => {
    if (!options.allowLoopbackPlaintext || !isLoopbackAddress(socket.remoteAddress)) {
      tlsServer.emit("connection", socket);
      return;
    }
    const onData = (chunk: Buffer) => {
      cleanup();
      socket.pause();
      socket.unshift(chunk);
      if (chunk[0] === TLS_HANDSHAKE_RECORD) tlsServer.emit("connection", socket);
      else injector.injectConnection(socket);
    };
    const onTimeout = () => {
      cleanup();
      socket.destroy();
    };
    const onEnd = () => {
      cleanup();
      socket.destroy();
    };
    const cleanup = () => {
      socket.off("data", onData);
      socket.off("timeout", onTimeout);
      socket.off("end", onEnd);
      socket.setTimeout(0);
    };
    socket.on("data", onData);
    socket.on("end", onEnd);
    socket.on("timeout", onTimeout);
    socket.setTimeout(firstByteTimeoutMs);
  };

  const netServer = net.createServer({ allowHalfOpen: false }, (socket) => {
    sockets.add(socket);
    socket.on("close", () => {
      sockets.delete(socket);
      if (sockets.size === 0) allSocketsClosed?.();
    });
    // Errors on a socket are the client's problem; they must never reach the process.
    socket.on("error", (error) => debug("control-plane: socket error: %s", error.message));
    route(socket);
  });

  await new Promise<void>((resolve, reject) => {
    netServer.once("error", reject);
    netServer.listen({ host: options.host, port: options.port }, () => {
      netServer.off("error", reject);
      resolve();
    });
  });
  netServer.on("error", (error) => debug("control-plane: listener error: %s", error.message));
  const address = netServer.address() as net.AddressInfo;

  let closing: Promise<void> | undefined;
  return {
    host: options.host,
    port: address.port,
    setCredentials(credentials) {
      tlsServer.setSecureContext(secureContextOptions(credentials));
    },
    close() {
      closing ??= (async () => {
        const listenerClosed = new Promise<void>((resolve) => netServer.close(() => resolve()));
        // grpc-js has sent GOAWAY and the streams' final statuses; clients close their side once those
        // arrive. Tearing the sessions down first would discard the statuses still being flushed (a
        // client then sees UNAVAILABLE instead of a clean end), so wait for that, within a bound.
        if (sockets.size > 0) {
          await new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, SOCKET_END_GRACE_MS);
            timer.unref();
            allSocketsClosed = () => {
              clearTimeout(timer);
              resolve();
            };
          });
        }
        injector.destroy();
        for (const socket of sockets) socket.destroy();
        sockets.clear();
        await listenerClosed;
      })();
      return closing;
    },
  };
}
