/**
 * What the inbound stages share: where a classified connection goes next, the drain flag, and the
 * protocol choice. `server.ts` builds one of these and hands it to every stage.
 */
import type { Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import { debuglog } from "node:util";
import type { CompiledServerPolicy } from "@inmesh/policy";
import type { PlaintextProtocol } from "./detect.js";
import type { ConnectionState } from "./gate.js";

export const debug = debuglog("mesh");

export type ServedProtocol = PlaintextProtocol;

/** Set once `close()` (or `closeIdleConnections()`) starts draining; every stage reads it. */
export interface ShutdownFlag {
  readonly closing: boolean;
}

/** What the accept stage decided for one connection; the later stages honour its deadlines. */
export interface Admission {
  readonly raw: Socket;
  /** Epoch ms by which detection, the TLS handshake and a transport header must all be done. */
  readonly detectDeadline: number;
  /** Epoch ms until which the connection, then its requests, may wait for the port's first policy. */
  readonly policyWaitUntil: number;
}

/** Milliseconds left before `deadline` (at least 1, so a timer still fires after what is queued). */
export function remainingMs(deadline: number): number {
  return Math.max(1, deadline - Date.now());
}

/** Whether a served connection is between requests: idle connections are reaped first at the cap. */
export interface ConnectionActivity {
  setIdle(idle: boolean): void;
}

/** How a stage passes a connection on once it knows what it is. */
export interface Pipeline {
  readonly shutdown: ShutdownFlag;
  /** The raw socket left detection: draining no longer destroys it at once. */
  classified(raw: Socket): void;
  /**
   * Whether a served connection is between requests (HTTP/1 keep-alive, HTTP/2 with no open stream):
   * at the connection cap, idle connections are reaped first after those still in detection.
   */
  setIdle(raw: Socket, idle: boolean): void;
  /** The same marker as an object a stage keeps per connection and flips per request. */
  activity(raw: Socket): ConnectionActivity | undefined;
  serveOpaque(
    socket: Socket | TLSSocket,
    state: ConnectionState,
    policy: CompiledServerPolicy,
    raw: Socket,
  ): void;
  serveProtocol(
    socket: Socket | TLSSocket,
    state: ConnectionState,
    policy: CompiledServerPolicy,
    protocol: ServedProtocol,
    raw: Socket,
  ): void;
}

/** Which protocol to serve: detection decides, except where the Server's `proxyProtocol` fixes it. */
export function chooseProtocol(
  policy: CompiledServerPolicy,
  detected: ServedProtocol | undefined,
): ServedProtocol {
  if (policy.protocol === "http2" || policy.protocol === "grpc") return "h2";
  if (detected === "h2" || detected === "http1") return detected;
  return policy.protocol === "http1" ? "http1" : "opaque";
}

export function swallow(error: Error): void {
  debug("inbound: connection error: %s", error.message);
}
