/**
 * TLS: terminates mesh TLS for connections whose ClientHello names our identity (client certificates
 * requested, an unverifiable one refused), then detects HTTP on the decrypted bytes unless the Server's
 * `proxyProtocol` fixes the protocol. Direct (transport-header) connections go on to the direct stage.
 */
import type { Socket } from "node:net";
import { createServer as createTlsServer, type TLSSocket, type Server as TlsServer } from "node:tls";
import type { CompiledServerPolicy } from "@inmesh/policy";
import { TRANSPORT_HEADER_ALPN } from "@inmesh/proto";
import { connectionState, type MeshServerIdentity } from "./connection.js";
import { detectHttp, HTTP_DETECT_MAX_BYTES } from "./detect.js";
import type { ConnectionState } from "./gate.js";
import { chooseProtocol, debug, type Pipeline, swallow } from "./pipeline.js";
import { readPrefix } from "./prefix.js";

export interface TlsStageOptions {
  readonly identity: MeshServerIdentity;
  readonly detectTimeoutMs: number;
  /** Also terminate Linkerd's direct connections (ALPN `transport.l5d.io/v1`). */
  readonly direct: boolean;
  readonly pipeline: Pipeline;
  /** A direct connection finished its handshake: read its transport header (the direct stage). */
  serveDirect(socket: TLSSocket, raw: Socket, state: ConnectionState): void;
}

export interface TlsStage {
  terminate(raw: Socket, policy: CompiledServerPolicy, direct: boolean): void;
}

interface PendingTls {
  readonly raw: Socket;
  readonly policy: CompiledServerPolicy;
}

function addressKey(socket: { remoteAddress?: string | undefined; remotePort?: number | undefined }): string {
  return `${socket.remoteAddress ?? ""}|${socket.remotePort ?? 0}`;
}

export function createTlsStage(options: TlsStageOptions): TlsStage {
  const { identity, detectTimeoutMs, pipeline } = options;
  const pendingTls = new Map<string, PendingTls>();
  const pendingDirectTls = new Map<string, PendingTls>();

  const tlsOptions = identity.tlsServerOptions();
  const tlsServer: TlsServer = createTlsServer({ ...tlsOptions, handshakeTimeout: detectTimeoutMs });
  tlsServer.on("secureConnection", (socket: TLSSocket) => onSecure(socket, pendingTls, false));
  tlsServer.on("tlsClientError", (error) => debug("inbound: TLS handshake failed: %s", error.message));
  let directTlsServer: TlsServer | undefined;
  if (options.direct) {
    directTlsServer = createTlsServer({
      ...tlsOptions,
      ALPNProtocols: [TRANSPORT_HEADER_ALPN],
      handshakeTimeout: detectTimeoutMs,
    });
    directTlsServer.on("secureConnection", (socket: TLSSocket) => onSecure(socket, pendingDirectTls, true));
    directTlsServer.on("tlsClientError", (error) =>
      debug("inbound: direct TLS handshake failed: %s", error.message),
    );
  }

  function terminate(raw: Socket, policy: CompiledServerPolicy, direct: boolean): void {
    const pending = direct ? pendingDirectTls : pendingTls;
    const key = addressKey(raw);
    pending.set(key, { raw, policy });
    raw.once("close", () => {
      if (pending.get(key)?.raw === raw) pending.delete(key);
    });
    ((direct ? directTlsServer : tlsServer) as TlsServer).emit("connection", raw);
  }

  function onSecure(socket: TLSSocket, pending: Map<string, PendingTls>, direct: boolean): void {
    socket.on("error", swallow);
    const key = addressKey(socket);
    const entry = pending.get(key);
    pending.delete(key);
    if (entry === undefined || pipeline.shutdown.closing) {
      socket.destroy();
      return;
    }
    const peer = identity.peerIdentity(socket);
    if (peer.kind === "none") {
      // A client certificate that does not verify against the trust anchors: linkerd2-proxy's verifier
      // fails such handshakes (only an absent certificate is allowed), so the connection ends here.
      debug("inbound: client certificate from %s refused", entry.raw.remoteAddress);
      socket.destroy();
      return;
    }
    const state = connectionState(entry.raw, peer, { tls: true, transportHeader: direct });
    if (direct) {
      options.serveDirect(socket, entry.raw, state);
      return;
    }
    const policy = entry.policy;
    if (policy.protocol === "tls") {
      pipeline.serveOpaque(socket, state, policy, entry.raw);
      return;
    }
    if (policy.protocol === "http2" || policy.protocol === "grpc") {
      pipeline.serveProtocol(socket, state, policy, "h2", entry.raw);
      return;
    }
    // A client proxy may have upgraded to HTTP/2 even on an HTTP/1 server, so detection always runs.
    readPrefix(
      socket,
      {
        maxBytes: HTTP_DETECT_MAX_BYTES,
        timeoutMs: policy.detectTimeoutMs ?? detectTimeoutMs,
        decide: (buffer, final) => detectHttp(buffer) ?? (final ? "opaque" : undefined),
      },
      (result) => {
        if (result.kind === "closed") return;
        const detected = result.kind === "decided" ? result.value : undefined;
        pipeline.serveProtocol(socket, state, policy, chooseProtocol(policy, detected), entry.raw);
      },
    );
  }

  return { terminate };
}
