/**
 * Direct connections (Linkerd's transport-header port, 4143 in a pod): after mesh TLS with ALPN
 * `transport.l5d.io/v1` and a client identity, reads the transport header naming our port and the
 * session protocol, then serves the rest as that protocol.
 */
import type { TLSSocket } from "node:tls";
import {
  MAX_TRANSPORT_HEADER_BYTES,
  parseTransportHeader,
  TRANSPORT_HEADER_ALPN,
  type TransportHeader,
} from "@inmesh/proto/serving";
import type { ConnectionState } from "./gate.js";
import { type Admission, debug, type Pipeline, remainingMs } from "./pipeline.js";
import type { MeshPolicySource } from "./policy-source.js";
import { readPrefix } from "./prefix.js";

export interface DirectStageOptions {
  readonly source: MeshPolicySource;
  readonly port: number;
  readonly detectTimeoutMs: number;
  readonly pipeline: Pipeline;
}

export interface DirectStage {
  serve(socket: TLSSocket, admission: Admission, state: ConnectionState): void;
}

export function createDirectStage(options: DirectStageOptions): DirectStage {
  const { source, port, detectTimeoutMs, pipeline } = options;

  function serve(socket: TLSSocket, admission: Admission, state: ConnectionState): void {
    const raw = admission.raw;
    // Linkerd's direct stack: ALPN transport.l5d.io/v1 and a client identity, or the connection is closed.
    if (socket.alpnProtocol !== TRANSPORT_HEADER_ALPN || !state.meshed) {
      debug(
        "inbound: direct connection refused (alpn %s, identity %s)",
        socket.alpnProtocol,
        state.facts.identity,
      );
      socket.destroy();
      return;
    }
    let invalid = false;
    readPrefix<{ header: TransportHeader; consumed: number }>(
      socket,
      {
        maxBytes: MAX_TRANSPORT_HEADER_BYTES + 64,
        timeoutMs: Math.min(detectTimeoutMs, remainingMs(admission.detectDeadline)),
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
        if (result.kind !== "decided" || invalid) {
          socket.destroy();
          return;
        }
        const { header, consumed } = result.value;
        if (header.name !== "" || header.port !== port) {
          debug("inbound: transport header for %s:%d is not served here", header.name, header.port);
          socket.destroy();
          return;
        }
        socket.read(consumed);
        const policy = source.policyFor(port);
        if (header.sessionProtocol === undefined) pipeline.serveOpaque(socket, state, policy, raw);
        else
          pipeline.serveProtocol(
            socket,
            state,
            policy,
            header.sessionProtocol === "http2" ? "h2" : "http1",
            raw,
          );
      },
    );
  }

  return { serve };
}
