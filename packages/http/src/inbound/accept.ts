/**
 * Accept and detect: the listening sockets, the connection cap, the hold for the port's first policy,
 * and detection on the first bytes (a ClientHello for our SNI, HTTP/1, prior-knowledge HTTP/2, or
 * opaque). Owns every raw socket until drain.
 */
import { createServer as createNetServer, type Server as NetServer, type Socket } from "node:net";
import type { PeerIdentity } from "@inmesh/core";
import type { CompiledServerPolicy } from "@inmesh/policy";
import { connectionState, type MeshServerIdentity } from "./connection.js";
import { CLIENT_HELLO_MAX_BYTES, detectConnection } from "./detect.js";
import type { ConnectionState, GateConfig } from "./gate.js";
import { chooseProtocol, debug, type Pipeline, swallow } from "./pipeline.js";
import type { MeshPolicySource } from "./policy-source.js";
import { readPrefix } from "./prefix.js";

export interface AcceptStageOptions {
  readonly identity: MeshServerIdentity;
  readonly source: MeshPolicySource;
  readonly gate: GateConfig;
  readonly port: number;
  readonly allowPlaintext: boolean;
  readonly detectTimeoutMs: number;
  readonly maxConnections: number;
  /** Also listen for Linkerd's direct (transport-header) connections. */
  readonly direct: boolean;
  readonly pipeline: Pipeline;
  /** Our SNI arrived: terminate TLS (the TLS stage). */
  terminateTls(raw: Socket, policy: CompiledServerPolicy, direct: boolean): void;
}

export interface AcceptStage {
  readonly server: NetServer;
  readonly directServer: NetServer | undefined;
  /** Open client connections (both listeners). */
  readonly connectionCount: number;
  /** The raw socket left detection (it is served now). */
  classified(raw: Socket): void;
  /** Draining: connections still in detection or handshake are closed at once. */
  startDrain(): void;
  destroyAll(): void;
  /** Resolves once every accepted connection has closed. */
  whenEmpty(): Promise<void>;
}

export function createAcceptStage(options: AcceptStageOptions): AcceptStage {
  const { identity, source, gate, port, detectTimeoutMs, pipeline } = options;
  const rawSockets = new Set<Socket>();
  /** Sockets still in detection or handshake: closed at once when draining starts. */
  const unclassified = new Set<Socket>();
  let emptyWaiter: (() => void) | undefined;

  const server = createNetServer({ noDelay: true }, (socket) => onRawConnection(socket, false));
  server.maxConnections = options.maxConnections;
  let directServer: NetServer | undefined;
  if (options.direct) {
    directServer = createNetServer({ noDelay: true }, (socket) => onRawConnection(socket, true));
    directServer.maxConnections = options.maxConnections;
  }
  // Accept failures once listening (EMFILE under a connection flood) must not end the process; the
  // listener keeps accepting once descriptors are free. `listen()` failures still reject `listen()`.
  for (const listener of [server, directServer]) {
    listener?.on("error", (error) => debug("inbound: listener error: %s", error.message));
  }

  function onRawConnection(raw: Socket, direct: boolean): void {
    if (pipeline.shutdown.closing) {
      raw.destroy();
      return;
    }
    raw.on("error", swallow);
    rawSockets.add(raw);
    unclassified.add(raw);
    raw.once("close", () => {
      rawSockets.delete(raw);
      unclassified.delete(raw);
      if (emptyWaiter !== undefined && rawSockets.size === 0) emptyWaiter();
    });
    const policy = source.policyFor(port);
    if (
      policy.status !== "not-loaded" ||
      source.waitForPolicy === undefined ||
      gate.initialPolicyWaitMs === 0
    ) {
      detect(raw, policy, direct);
      return;
    }
    // Strict mode: hold the connection (bounded) for the first policy; a still-missing one denies.
    source
      .waitForPolicy(port, { timeoutMs: gate.initialPolicyWaitMs })
      .catch(() => source.policyFor(port))
      .then((loaded) => {
        if (!raw.destroyed) detect(raw, loaded, direct);
      });
  }

  function plaintextState(raw: Socket): ConnectionState {
    return connectionState(raw, identity.peerIdentity(raw), { tls: false, transportHeader: false });
  }

  function detect(raw: Socket, policy: CompiledServerPolicy, direct: boolean): void {
    if (!direct && policy.protocol === "opaque") {
      // Linkerd skips TLS detection on opaque ports: meshed clients come through the direct port.
      pipeline.serveOpaque(raw, plaintextState(raw), policy, raw);
      return;
    }
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
        if (result.kind === "decided" && result.value.kind === "tls") {
          if (result.value.serverName === identity.localName) {
            options.terminateTls(raw, policy, direct);
            return;
          }
          if (direct) {
            raw.destroy();
            return;
          }
          // Not our SNI: Linkerd passes such TLS through untouched, so it is opaque traffic here.
          const peer: PeerIdentity =
            result.value.serverName === undefined
              ? identity.peerIdentity(raw)
              : { kind: "none", reason: "passthru" };
          pipeline.serveOpaque(
            raw,
            connectionState(raw, peer, { tls: false, transportHeader: false }),
            policy,
            raw,
          );
          return;
        }
        if (direct || !options.allowPlaintext) {
          raw.destroy();
          return;
        }
        const state = plaintextState(raw);
        if (policy.protocol === "tls") {
          pipeline.serveOpaque(raw, state, policy, raw);
          return;
        }
        const detected =
          result.kind === "decided" && result.value.kind === "plaintext" ? result.value.protocol : undefined;
        pipeline.serveProtocol(raw, state, policy, chooseProtocol(policy, detected), raw);
      },
    );
  }

  return {
    server,
    directServer,
    get connectionCount() {
      return rawSockets.size;
    },
    classified: (raw) => {
      unclassified.delete(raw);
    },
    startDrain() {
      for (const socket of unclassified) socket.destroy();
    },
    destroyAll() {
      for (const socket of rawSockets) socket.destroy();
    },
    whenEmpty() {
      if (rawSockets.size === 0) return Promise.resolve();
      return new Promise<void>((resolve) => {
        emptyWaiter = () => {
          emptyWaiter = undefined;
          resolve();
        };
      });
    },
  };
}
