/**
 * Accept and detect: the listening sockets, the connection cap, the hold for the port's first policy,
 * and detection on the first bytes (a ClientHello for our SNI, HTTP/1, prior-knowledge HTTP/2, or
 * opaque). Owns every raw socket until drain.
 *
 * Bounds: a connection is held for the first policy at most `initialPolicyWaitMs` (its requests then
 * wait only what is left of it); detection, the TLS handshake and the transport header together must
 * finish within one `detectTimeoutMs` of accept. At `maxConnections` a new connection is still
 * accepted and reaps an older one (see {@link REAP_ORDER}): a client that holds connections open
 * without using them cannot lock others out.
 */
import { createServer as createNetServer, type Server as NetServer, type Socket } from "node:net";
import { type PeerIdentity, PORT_SKIPPED_PEER } from "@inmesh/core";
import type { CompiledServerPolicy } from "@inmesh/policy";
import { connectionState, type MeshServerIdentity } from "./connection.js";
import { CLIENT_HELLO_MAX_BYTES, detectConnection } from "./detect.js";
import type { ConnectionState, GateConfig } from "./gate.js";
import {
  type Admission,
  type ConnectionActivity,
  chooseProtocol,
  debug,
  type Pipeline,
  remainingMs,
  swallow,
} from "./pipeline.js";
import type { MeshPolicySource } from "./policy-source.js";
import { readPrefix } from "./prefix.js";

export interface AcceptStageOptions {
  readonly identity: MeshServerIdentity;
  readonly source: MeshPolicySource;
  readonly gate: GateConfig;
  readonly port: number;
  readonly allowPlaintext: boolean;
  readonly detectTimeoutMs: number;
  /** Open connections per listener; at the cap a new one reaps an old one (see above). */
  readonly maxConnections: number;
  /** Also listen for Linkerd's direct (transport-header) connections. */
  readonly direct: boolean;
  readonly pipeline: Pipeline;
  /** Our SNI arrived: terminate TLS (the TLS stage). */
  terminateTls(admission: Admission, policy: CompiledServerPolicy, direct: boolean): void;
}

export interface AcceptStage {
  readonly server: NetServer;
  readonly directServer: NetServer | undefined;
  /** Open client connections (both listeners). */
  readonly connectionCount: number;
  /** The raw socket left detection (it is served now). */
  classified(raw: Socket): void;
  /**
   * Tracks a connection accepted elsewhere (the shared transport-header listener) for drain, as one
   * accepted here; the cap is that listener's own.
   */
  adopt(raw: Socket): void;
  setIdle(raw: Socket, idle: boolean): void;
  /**
   * The connection's activity marker, for a stage that flips it on every request (no lookup per
   * request); undefined once the connection is forgotten or when it was never tracked.
   */
  activity(raw: Socket): ConnectionActivity | undefined;
  /** Draining: connections still in detection or handshake are closed at once. */
  startDrain(): void;
  destroyAll(): void;
  /** Resolves once every accepted connection has closed. */
  whenEmpty(): Promise<void>;
}

/**
 * `detecting`: no protocol decided yet (silent, or bytes trickling in); `tls`: a ClientHello for our
 * identity arrived, the handshake or the detection after it is under way; `idle`: served protocol
 * between requests (HTTP/1 keep-alive, HTTP/2 with no open stream); `busy`: a request in progress, or
 * an opaque or handed-over connection.
 */
type Phase = "detecting" | "tls" | "idle" | "busy";

class Tracked implements ConnectionActivity {
  phase: Phase;
  /** A request has started on it: a client that did real work, reaped after those that did not. */
  served = false;
  readonly listener: Listener;

  constructor(phase: Phase, listener: Listener) {
    this.phase = phase;
    this.listener = listener;
  }

  setIdle(idle: boolean): void {
    this.phase = idle ? "idle" : "busy";
    if (!idle) this.served = true;
  }
}

/**
 * Which connection a new one reaps at the cap, first match oldest first: still detecting; idle without
 * ever having sent a whole request (preface only, headers never finished); in the TLS handshake (a
 * client that already sent a full ClientHello, like a legitimate newcomer); idle after serving requests;
 * else the oldest. A burst of new connections reaps its own kind (they start as `detecting`) before
 * a legitimate client in its handshake or between its requests.
 */
const REAP_ORDER: readonly ((entry: Tracked) => boolean)[] = [
  (entry) => entry.phase === "detecting",
  (entry) => entry.phase === "idle" && !entry.served,
  (entry) => entry.phase === "tls",
  (entry) => entry.phase === "idle",
];

/** One listening socket's connections, oldest first (Map keeps insertion order). */
type Listener = Map<Socket, Tracked>;

export function createAcceptStage(options: AcceptStageOptions): AcceptStage {
  const { identity, source, gate, port, detectTimeoutMs, pipeline } = options;
  const tracked = new Map<Socket, Tracked>();
  const mainConnections: Listener = new Map();
  const directConnections: Listener = new Map();
  const adoptedConnections: Listener = new Map();
  let emptyWaiter: (() => void) | undefined;

  const server = createNetServer({ noDelay: true }, (socket) => onRawConnection(socket, false));
  let directServer: NetServer | undefined;
  if (options.direct) {
    directServer = createNetServer({ noDelay: true }, (socket) => onRawConnection(socket, true));
  }
  // Accept failures once listening (EMFILE under a connection flood) must not end the process; the
  // listener keeps accepting once descriptors are free. `listen()` failures still reject `listen()`.
  for (const listener of [server, directServer]) {
    listener?.on("error", (error) => debug("inbound: listener error: %s", error.message));
  }

  /** Frees a slot for a new connection, in {@link REAP_ORDER}; one pass over the listener's connections. */
  function reap(listener: Listener): void {
    const candidates: (Socket | undefined)[] = REAP_ORDER.map(() => undefined);
    for (const [socket, entry] of listener) {
      const rank = REAP_ORDER.findIndex((matches) => matches(entry));
      if (rank < 0 || candidates[rank] !== undefined) continue;
      candidates[rank] = socket;
      if (rank === 0) break;
    }
    const victim = candidates.find((socket) => socket !== undefined) ?? listener.keys().next().value;
    if (victim === undefined) return;
    debug(
      "inbound: connection cap reached; closing %s connection from %s",
      tracked.get(victim)?.phase,
      victim.remoteAddress,
    );
    forget(victim);
    victim.destroy();
  }

  // One listener for every connection ('close' fires once): a `once` wrapper and a closure per
  // connection would stay in memory for the connection's whole life.
  function forgetOnClose(this: Socket): void {
    forget(this);
  }

  function forget(raw: Socket): void {
    const entry = tracked.get(raw);
    if (entry === undefined) return;
    tracked.delete(raw);
    entry.listener.delete(raw);
    if (emptyWaiter !== undefined && tracked.size === 0) emptyWaiter();
  }

  function onRawConnection(raw: Socket, direct: boolean): void {
    if (pipeline.shutdown.closing) {
      raw.destroy();
      return;
    }
    raw.on("error", swallow);
    const listener = direct ? directConnections : mainConnections;
    if (listener.size >= options.maxConnections) reap(listener);
    const entry = new Tracked("detecting", listener);
    tracked.set(raw, entry);
    listener.set(raw, entry);
    raw.on("close", forgetOnClose);
    const acceptedAt = Date.now();
    const admission: Admission = {
      raw,
      detectDeadline: acceptedAt + detectTimeoutMs,
      policyWaitUntil: acceptedAt + gate.initialPolicyWaitMs,
    };
    const policy = source.policyFor(port);
    if (
      policy.status !== "not-loaded" ||
      source.waitForPolicy === undefined ||
      gate.initialPolicyWaitMs === 0
    ) {
      detect(admission, policy, direct);
      return;
    }
    // Strict mode: hold the connection (bounded) for the first policy; a still-missing one denies.
    source
      .waitForPolicy(port, { timeoutMs: gate.initialPolicyWaitMs })
      .catch(() => source.policyFor(port))
      .then((loaded) => {
        if (!raw.destroyed) detect(admission, loaded, direct);
      });
  }

  function plaintextState(admission: Admission, peer?: PeerIdentity): ConnectionState {
    const raw = admission.raw;
    return connectionState(raw, peer ?? identity.peerIdentity(raw), {
      tls: false,
      transportHeader: false,
      policyWaitUntil: admission.policyWaitUntil,
    });
  }

  function detect(admission: Admission, policy: CompiledServerPolicy, direct: boolean): void {
    const raw = admission.raw;
    if (!direct && policy.protocol === "opaque") {
      // Linkerd skips TLS detection on opaque ports: meshed clients come through the direct port.
      pipeline.serveOpaque(raw, plaintextState(admission, PORT_SKIPPED_PEER), policy, raw);
      return;
    }
    readPrefix(
      raw,
      {
        maxBytes: CLIENT_HELLO_MAX_BYTES,
        timeoutMs: remainingMs(admission.detectDeadline),
        decide: (buffer) => {
          const detection = detectConnection(buffer);
          return detection.kind === "more" ? undefined : detection;
        },
      },
      (result) => {
        if (result.kind === "closed") return;
        if (result.kind === "decided" && result.value.kind === "tls") {
          if (result.value.serverName === identity.localName) {
            setPhase(raw, "tls");
            options.terminateTls(admission, policy, direct);
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
              : { kind: "none", reason: "passthru", sni: result.value.serverName };
          pipeline.serveOpaque(raw, plaintextState(admission, peer), policy, raw);
          return;
        }
        if (direct || !options.allowPlaintext) {
          raw.destroy();
          return;
        }
        const state = plaintextState(admission);
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

  function setPhase(raw: Socket, phase: Phase): void {
    const entry = tracked.get(raw);
    if (entry === undefined) return;
    entry.phase = phase;
  }

  return {
    server,
    directServer,
    get connectionCount() {
      return tracked.size;
    },
    classified: (raw) => setPhase(raw, "busy"),
    adopt(raw) {
      if (tracked.has(raw)) return;
      const entry = new Tracked("busy", adoptedConnections);
      tracked.set(raw, entry);
      adoptedConnections.set(raw, entry);
      raw.on("close", forgetOnClose);
    },
    setIdle(raw, idle) {
      tracked.get(raw)?.setIdle(idle);
    },
    activity: (raw) => tracked.get(raw),
    startDrain() {
      for (const [socket, entry] of tracked) {
        if (entry.phase === "detecting" || entry.phase === "tls") socket.destroy();
      }
    },
    destroyAll() {
      for (const socket of [...tracked.keys()]) socket.destroy();
    },
    whenEmpty() {
      if (tracked.size === 0) return Promise.resolve();
      return new Promise<void>((resolve) => {
        emptyWaiter = () => {
          emptyWaiter = undefined;
          resolve();
        };
      });
    },
  };
}
