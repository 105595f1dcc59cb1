/**
 * TLS: terminates mesh TLS for connections whose ClientHello names our identity (client certificates
 * requested, an unverifiable one refused), then detects HTTP on the decrypted bytes unless the Server's
 * `proxyProtocol` fixes the protocol. Direct (transport-header) connections go on to the direct stage.
 */
import { createServer as createTlsServer, type TLSSocket, type Server as TlsServer } from "node:tls";
import type { CompiledServerPolicy } from "@inmesh/policy";
import { TRANSPORT_HEADER_ALPN } from "@inmesh/proto/serving";
import { connectionState, type MeshServerIdentity } from "./connection.js";
import { detectHttp, HTTP_DETECT_MAX_BYTES } from "./detect.js";
import type { ConnectionState } from "./gate.js";
import { type Admission, chooseProtocol, debug, type Pipeline, remainingMs, swallow } from "./pipeline.js";
import { readPrefix } from "./prefix.js";

export interface TlsStageOptions {
  readonly identity: MeshServerIdentity;
  readonly detectTimeoutMs: number;
  /** Also terminate Linkerd's direct connections (ALPN `transport.l5d.io/v1`). */
  readonly direct: boolean;
  readonly pipeline: Pipeline;
  /** A direct connection finished its handshake: read its transport header (the direct stage). */
  serveDirect(socket: TLSSocket, admission: Admission, state: ConnectionState): void;
}

export interface TlsStage {
  terminate(admission: Admission, policy: CompiledServerPolicy, direct: boolean): void;
}

interface PendingTls {
  readonly admission: Admission;
  readonly policy: CompiledServerPolicy;
  readonly handshakeTimer: NodeJS.Timeout;
  readonly onRawClose: () => void;
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

  function terminate(admission: Admission, policy: CompiledServerPolicy, direct: boolean): void {
    const raw = admission.raw;
    const pending = direct ? pendingDirectTls : pendingTls;
    const key = addressKey(raw);
    // The handshake gets what is left of the connection's detect bound, not a fresh one.
    const handshakeTimer = setTimeout(() => {
      debug("inbound: TLS handshake from %s timed out", raw.remoteAddress);
      raw.destroy();
    }, remainingMs(admission.detectDeadline));
    handshakeTimer.unref();
    const onRawClose = () => {
      clearTimeout(handshakeTimer);
      if (pending.get(key)?.admission === admission) pending.delete(key);
    };
    pending.set(key, { admission, policy, handshakeTimer, onRawClose });
    // Removed once the handshake is done: it would keep the timer, the key and this closure for the
    // connection's whole life.
    raw.on("close", onRawClose);
    ((direct ? directTlsServer : tlsServer) as TlsServer).emit("connection", raw);
  }

  function onSecure(socket: TLSSocket, pending: Map<string, PendingTls>, direct: boolean): void {
    socket.on("error", swallow);
    const key = addressKey(socket);
    const entry = pending.get(key);
    pending.delete(key);
    if (entry !== undefined) {
      clearTimeout(entry.handshakeTimer);
      entry.admission.raw.removeListener("close", entry.onRawClose);
    }
    if (entry === undefined || pipeline.shutdown.closing) {
      socket.destroy();
      return;
    }
    const peer = identity.peerIdentity(socket);
    if (peer.kind === "none") {
      // A client certificate that does not verify against the trust anchors: linkerd2-proxy's verifier
      // fails such handshakes (only an absent certificate is allowed), so the connection ends here.
      debug("inbound: client certificate from %s refused", entry.admission.raw.remoteAddress);
      socket.destroy();
      return;
    }
    const { admission } = entry;
    const raw = admission.raw;
    const state = connectionState(raw, peer, {
      tls: true,
      transportHeader: direct,
      policyWaitUntil: admission.policyWaitUntil,
    });
    if (direct) {
      options.serveDirect(socket, admission, state);
      return;
    }
    const policy = entry.policy;
    if (policy.protocol === "tls") {
      pipeline.serveOpaque(socket, state, policy, raw);
      return;
    }
    if (policy.protocol === "http2" || policy.protocol === "grpc") {
      pipeline.serveProtocol(socket, state, policy, "h2", raw);
      return;
    }
    // A client proxy may have upgraded to HTTP/2 even on an HTTP/1 server, so detection always runs.
    readPrefix(
      socket,
      {
        maxBytes: HTTP_DETECT_MAX_BYTES,
        // The Server's detect timeout applies, within what is left of the connection's detect bound.
        timeoutMs: Math.min(policy.detectTimeoutMs ?? detectTimeoutMs, remainingMs(admission.detectDeadline)),
        decide: (buffer, final) => detectHttp(buffer) ?? (final ? "opaque" : undefined),
      },
      (result) => {
        if (result.kind === "closed") return;
        const detected = result.kind === "decided" ? result.value : undefined;
        pipeline.serveProtocol(socket, state, policy, chooseProtocol(policy, detected), raw);
      },
    );
  }

  return { terminate };
}
