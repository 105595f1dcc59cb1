import type { Socket } from "node:net";
import {
  type ConnectionOptions,
  connect,
  createServer,
  type Server,
  type TLSSocket,
  type TlsOptions,
} from "node:tls";
import type { PeerIdentity } from "@inmesh/core";
import { listen, portOf } from "./identity-server.js";

export interface MeshTlsServer {
  readonly port: number;
  /** Peer identities of accepted connections, in order. */
  readonly peers: PeerIdentity[];
  readonly handshakeErrors: Error[];
  close(): Promise<void>;
}

/**
 * A node:tls server: on each secure connection it records `identify(socket)` and writes the peer's
 * name (or kind) back, then ends the connection.
 */
export async function startMeshTlsServer(
  options: TlsOptions,
  identify: (socket: TLSSocket) => PeerIdentity,
): Promise<MeshTlsServer> {
  const peers: PeerIdentity[] = [];
  const handshakeErrors: Error[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer(options, (socket) => {
    const peer = identify(socket);
    peers.push(peer);
    socket.on("error", () => undefined);
    socket.end(
      `${peer.kind === "mesh" ? peer.name : peer.kind === "none" ? `none:${peer.reason}` : peer.kind}\n`,
    );
  });
  server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  server.on("tlsClientError", (error) => handshakeErrors.push(error));
  await listen(server);
  return {
    port: portOf(server),
    peers,
    handshakeErrors,
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

export type RoundTrip =
  | { ok: true; line: string; peerSerial: string | undefined }
  | { ok: false; error: Error };

/** One TLS connection; resolves with what the server wrote, or the client-side error. Bounded by a timeout. */
export function tlsRoundTrip(
  port: number,
  options: ConnectionOptions,
  timeoutMs = 10_000,
): Promise<RoundTrip> {
  return new Promise((resolve) => {
    let data = "";
    let settled = false;
    let peerSerial: string | undefined;
    const socket = connect({ host: "127.0.0.1", port, ...options });
    socket.once("secureConnect", () => {
      peerSerial = socket.getPeerX509Certificate()?.serialNumber;
    });
    const finish = (result: RoundTrip) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => finish({ ok: false, error: new Error("timeout") }), timeoutMs);
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      data += chunk;
    });
    socket.on("end", () => {
      if (data.endsWith("\n")) finish({ ok: true, line: data.trim(), peerSerial });
      else
        finish({ ok: false, error: new Error(`connection ended without a reply (${JSON.stringify(data)})`) });
    });
    socket.on("error", (error) => finish({ ok: false, error }));
    socket.on("close", () => finish({ ok: false, error: new Error("closed without a reply") }));
  });
}
