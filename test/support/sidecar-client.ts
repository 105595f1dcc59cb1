/**
 * What a linkerd2-proxy sidecar does in Linkerd's default transport mode (linkerd-contract.md §4.4): mesh
 * TLS to the peer's inbound port with SNI = the peer's identity and ALPN `transport.l5d.io/v1`, then the
 * transport header naming the target port and session protocol, then the application bytes.
 */
import http2 from "node:http2";
import { connect, type TLSSocket } from "node:tls";
import type { IdentityProvider } from "@inmesh/identity";
import { encodeTransportHeader, TRANSPORT_HEADER_ALPN } from "@inmesh/proto";

export interface TransportHeaderTarget {
  readonly host: string;
  /** The peer's inbound (transport-header) port. */
  readonly inboundPort: number;
  /** The peer's identity: SNI and the name its certificate must carry. */
  readonly serverName: string;
  /** The application port the header names. */
  readonly port: number;
  /** Omitted for opaque traffic, as the proxy does. */
  readonly sessionProtocol?: "http1" | "http2";
}

export function connectWithTransportHeader(
  identity: IdentityProvider,
  target: TransportHeaderTarget,
): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = connect({
      host: target.host,
      port: target.inboundPort,
      ...identity.tlsClientOptions(target.serverName),
      ALPNProtocols: [TRANSPORT_HEADER_ALPN],
    });
    const timer = setTimeout(() => socket.destroy(new Error("transport-header connect timed out")), 10_000);
    socket.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    socket.once("secureConnect", () => {
      clearTimeout(timer);
      if (socket.alpnProtocol !== TRANSPORT_HEADER_ALPN) {
        socket.destroy();
        reject(new Error(`ALPN ${String(socket.alpnProtocol)} negotiated, not ${TRANSPORT_HEADER_ALPN}`));
        return;
      }
      // node:http2 asserts when handed a TLS socket with a write still in flight: wait for the header.
      socket.write(
        encodeTransportHeader({ port: target.port, name: "", sessionProtocol: target.sessionProtocol }),
        (error) => (error ? reject(error) : resolve(socket)),
      );
    });
  });
}

/** One prior-knowledge HTTP/2 GET through the transport header: status and body. */
export async function h2GetThroughTransportHeader(
  identity: IdentityProvider,
  target: Omit<TransportHeaderTarget, "sessionProtocol">,
  path: string,
): Promise<{ status: number; body: string; headers: http2.IncomingHttpHeaders }> {
  const socket = await connectWithTransportHeader(identity, { ...target, sessionProtocol: "http2" });
  const session = http2.connect(`http://${target.host}:${target.port}`, { createConnection: () => socket });
  try {
    return await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`GET ${path} timed out`)), 10_000);
      session.once("error", reject);
      const request = session.request({ ":method": "GET", ":path": path, ":authority": "books" });
      let headers: http2.IncomingHttpHeaders = {};
      const chunks: Buffer[] = [];
      request.on("response", (received) => {
        headers = received;
      });
      request.on("data", (chunk: Buffer) => chunks.push(chunk));
      request.once("error", reject);
      request.once("end", () => {
        clearTimeout(timer);
        resolve({
          status: Number(headers[":status"]),
          body: Buffer.concat(chunks).toString("utf8"),
          headers,
        });
      });
      request.end();
    });
  } finally {
    session.destroy();
  }
}

/** Writes `bytes` on an opaque transport-header connection and resolves with what comes back. */
export async function echoThroughTransportHeader(
  identity: IdentityProvider,
  target: Omit<TransportHeaderTarget, "sessionProtocol">,
  bytes: Buffer,
): Promise<Buffer> {
  const socket = await connectWithTransportHeader(identity, target);
  try {
    return await new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("echo timed out")), 10_000);
      const chunks: Buffer[] = [];
      let length = 0;
      socket.on("data", (chunk: Buffer) => {
        chunks.push(chunk);
        length += chunk.byteLength;
        if (length >= bytes.byteLength) {
          clearTimeout(timer);
          resolve(Buffer.concat(chunks));
        }
      });
      socket.once("close", () => {
        clearTimeout(timer);
        resolve(Buffer.concat(chunks));
      });
      socket.once("error", reject);
      socket.write(bytes);
    });
  } finally {
    socket.destroy();
  }
}

/** Resolves true when the server closed the connection without answering (a refusal). */
export function closedWithoutAnswer(socket: TLSSocket, send: Buffer): Promise<boolean> {
  return new Promise((resolve) => {
    let answered = false;
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(false);
    }, 10_000);
    socket.on("data", () => {
      answered = true;
    });
    socket.once("close", () => {
      clearTimeout(timer);
      resolve(!answered);
    });
    socket.on("error", () => {});
    socket.write(send);
  });
}
