// Attacker-side sockets: raw TCP and TLS (our SNI, no client certificate, or an intruder's certificate),
// writing exactly the bytes an attack needs and watching how and when the server answers and closes.
import { connect as netConnect, type Socket } from "node:net";
import { type ConnectionOptions, type TLSSocket, connect as tlsConnect } from "node:tls";
import { FrameType } from "./h2-frames.js";

/** What an attacker keeps of the server's answer: its first bytes, and whether it closed. */
export interface Watched {
  readonly socket: Socket;
  readonly openedAtMs: number;
  /** First bytes received (capped). */
  received(): Buffer;
  /** ms from open to close, undefined while open. */
  closedAfterMs(): number | undefined;
  /** Resolves with ms from open to close, or undefined if still open after `limitMs`. */
  closed(limitMs: number): Promise<number | undefined>;
  /** Resolves once some bytes arrived (true), or false after `limitMs` or on close without bytes. */
  answered(limitMs: number): Promise<boolean>;
  /** The socket error's code (ECONNRESET when the server's close came as a reset), if any. */
  errorCode(): string | undefined;
}

const MAX_KEPT_BYTES = 64 * 1024;

export function watch(socket: Socket, openedAtMs = performance.now()): Watched {
  const chunks: Buffer[] = [];
  let kept = 0;
  let closedAt: number | undefined;
  const dataWaiters = new Set<() => void>();
  const closeWaiters = new Set<() => void>();
  socket.on("data", (chunk: Buffer) => {
    if (kept < MAX_KEPT_BYTES) {
      chunks.push(chunk.subarray(0, MAX_KEPT_BYTES - kept));
      kept += chunk.length;
    }
    for (const wake of dataWaiters) wake();
  });
  // Attack sockets see resets and protocol errors as a matter of course.
  let errorCode: string | undefined;
  socket.on("error", (error: NodeJS.ErrnoException) => {
    errorCode ??= error.code ?? error.message;
  });
  socket.on("close", () => {
    closedAt ??= performance.now();
    for (const wake of closeWaiters) wake();
    for (const wake of dataWaiters) wake();
  });
  return {
    socket,
    openedAtMs,
    received: () => Buffer.concat(chunks),
    errorCode: () => errorCode,
    closedAfterMs: () => (closedAt === undefined ? undefined : closedAt - openedAtMs),
    closed(limitMs) {
      if (closedAt !== undefined) return Promise.resolve(closedAt - openedAtMs);
      return new Promise((resolve) => {
        const wake = () => {
          clearTimeout(timer);
          closeWaiters.delete(wake);
          resolve(closedAt === undefined ? undefined : closedAt - openedAtMs);
        };
        const timer = setTimeout(wake, limitMs);
        closeWaiters.add(wake);
      });
    },
    answered(limitMs) {
      if (kept > 0) return Promise.resolve(true);
      if (closedAt !== undefined) return Promise.resolve(false);
      return new Promise((resolve) => {
        const wake = () => {
          clearTimeout(timer);
          dataWaiters.delete(wake);
          resolve(kept > 0);
        };
        const timer = setTimeout(wake, limitMs);
        dataWaiters.add(wake);
      });
    },
  };
}

export interface Endpoint {
  readonly host: string;
  readonly port: number;
}

export function connectPlain(target: Endpoint, localAddress?: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = netConnect({ host: target.host, port: target.port, noDelay: true, localAddress });
    socket.once("connect", () => {
      socket.removeListener("error", reject);
      resolve(socket);
    });
    socket.once("error", reject);
  });
}

/**
 * TLS to a meshed server as an unauthenticated peer: our SNI (the server's identity), so the server
 * terminates TLS, and no client certificate. `extra` adds an intruder's certificate, ALPN, …
 */
export function connectTls(
  target: Endpoint & { identity: string },
  extra: ConnectionOptions = {},
): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({
      host: target.host,
      port: target.port,
      servername: target.identity,
      rejectUnauthorized: false,
      minVersion: "TLSv1.3",
      ...extra,
    });
    socket.setNoDelay(true);
    socket.once("secureConnect", () => {
      socket.removeListener("error", reject);
      resolve(socket);
    });
    socket.once("error", reject);
  });
}

export type Transport = "plaintext" | "tls";

export function connectWith(
  transport: Transport,
  target: Endpoint & { identity: string },
): Promise<Socket | TLSSocket> {
  return transport === "tls" ? connectTls(target) : connectPlain(target);
}

/** Writes `bytes` in one call: on loopback, one segment (or one TLS record) when it fits. */
export function writeAll(socket: Socket, bytes: Uint8Array): Promise<void> {
  return new Promise((resolve) => {
    if (socket.destroyed) {
      resolve();
      return;
    }
    socket.write(bytes, () => resolve());
  });
}

export interface ParsedFrame {
  readonly type: number;
  readonly flags: number;
  readonly streamId: number;
  readonly payload: Buffer;
}

/** The whole frames in `bytes` (a server's answer), ignoring a trailing partial one. */
export function parseFrames(bytes: Buffer): ParsedFrame[] {
  const frames: ParsedFrame[] = [];
  let offset = 0;
  while (offset + 9 <= bytes.length) {
    const length = bytes.readUIntBE(offset, 3);
    if (offset + 9 + length > bytes.length) break;
    frames.push({
      type: bytes.readUInt8(offset + 3),
      flags: bytes.readUInt8(offset + 4),
      streamId: bytes.readUInt32BE(offset + 5) & 0x7fffffff,
      payload: bytes.subarray(offset + 9, offset + 9 + length),
    });
    offset += 9 + length;
  }
  return frames;
}

/** The error code of the server's GOAWAY, if it sent one. */
export function goawayCode(bytes: Buffer): number | undefined {
  const goaway = parseFrames(bytes).find((frame) => frame.type === FrameType.GOAWAY);
  return goaway && goaway.payload.length >= 8 ? goaway.payload.readUInt32BE(4) : undefined;
}

/** The status line of the first HTTP/1 response in `bytes`, e.g. 400, or undefined. */
export function http1Status(bytes: Buffer): number | undefined {
  const match = /^HTTP\/1\.[01] (\d{3})/.exec(bytes.subarray(0, 64).toString("latin1"));
  return match ? Number(match[1]) : undefined;
}

/** How many HTTP/1 responses `bytes` holds (status lines), to catch a smuggled second request. */
export function http1ResponseCount(bytes: Buffer): number {
  return (bytes.toString("latin1").match(/HTTP\/1\.[01] \d{3} /g) ?? []).length;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
