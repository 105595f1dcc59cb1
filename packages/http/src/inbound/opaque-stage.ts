/**
 * Opaque connections: one connection-level authorization, then the socket goes to `onConnection` (or is
 * closed without a byte written, as Linkerd drops denied connections). Allowed connections are
 * re-checked on every policy update and closed when revoked.
 */
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import type { TLSSocket } from "node:tls";
import type { CompiledServerPolicy, PolicyWatchEvent } from "@inmesh/policy";
import type { MeshConnectionInfo } from "./context.js";
import type { ConnectionState } from "./gate.js";
import { debug, type Pipeline } from "./pipeline.js";
import type { MeshPolicySource } from "./policy-source.js";
import { observeTcp, publishTcpAuthz } from "./telemetry.js";

export interface OpaqueStageOptions {
  readonly source: MeshPolicySource;
  readonly port: number;
  readonly onConnection: ((socket: Duplex, info: MeshConnectionInfo) => void) | undefined;
  readonly pipeline: Pipeline;
}

export interface OpaqueStage {
  serve(socket: Socket | TLSSocket, state: ConnectionState, policy: CompiledServerPolicy, raw: Socket): void;
  /** Stops re-checking on policy updates. */
  close(): void;
}

export function createOpaqueStage(options: OpaqueStageOptions): OpaqueStage {
  const { source, port, onConnection, pipeline } = options;
  const connections = new Set<{ readonly socket: Duplex; readonly state: ConnectionState }>();

  const unsubscribe =
    onConnection !== undefined && source.subscribe !== undefined
      ? source.subscribe((event: PolicyWatchEvent) => {
          if (event.type !== "updated" || event.port !== port) return;
          // Linkerd re-checks authorized TCP connections on every policy change and ends revoked ones.
          for (const entry of connections) {
            const decision = event.policy.authorizeConnection(entry.state.facts);
            if (!decision.allowed) {
              debug("inbound: policy update revoked an opaque connection from %s", entry.state.facts.address);
              publishTcpAuthz(entry.state, port, decision, true);
              entry.socket.destroy();
            }
          }
        })
      : undefined;

  function serve(
    socket: Socket | TLSSocket,
    state: ConnectionState,
    policy: CompiledServerPolicy,
    raw: Socket,
  ): void {
    pipeline.classified(raw);
    const decision = policy.authorizeConnection(state.facts);
    observeTcp(raw, port, state.peer)?.(decision);
    publishTcpAuthz(state, port, decision, false);
    if (!decision.allowed || onConnection === undefined || pipeline.shutdown.closing) {
      // Linkerd drops denied connections without writing anything.
      if (debug.enabled) {
        debug(
          "inbound: opaque connection from %s closed (%s)%s",
          state.facts.address,
          decision.reason ?? "no onConnection",
          decision.allowed ? "" : `:\n${policy.explainConnection(decision, state.facts).text}`,
        );
      }
      socket.destroy();
      return;
    }
    const entry = { socket, state };
    connections.add(entry);
    socket.once("close", () => connections.delete(entry));
    onConnection(socket, {
      peer: state.peer,
      clientAddress: state.facts.address,
      port,
      tls: state.tls,
      transportHeader: state.transportHeader,
      decision,
      policy,
    });
  }

  return {
    serve,
    close: () => unsubscribe?.(),
  };
}
