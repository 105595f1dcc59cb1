/**
 * Drain: `close()` (or Fastify's `closeIdleConnections()`) stops accepting, closes connections still in
 * detection, lets in-flight requests finish (HTTP/1 `connection: close`, HTTP/2 GOAWAY) for at most
 * `drainTimeoutMs`, then destroys what is left.
 */
import type { Server as NetServer } from "node:net";
import { closeOnce } from "@inmesh/core";
import type { AcceptStage } from "./accept.js";
import type { Http1Stage } from "./http1-stage.js";
import type { Http2Stage } from "./http2-stage.js";
import type { OpaqueStage } from "./opaque-stage.js";
import type { ShutdownFlag } from "./pipeline.js";

export interface MutableShutdownFlag extends ShutdownFlag {
  closing: boolean;
}

export function createShutdownFlag(): MutableShutdownFlag {
  return { closing: false };
}

export interface DrainParts {
  readonly shutdown: MutableShutdownFlag;
  readonly accept: AcceptStage;
  readonly http1: Http1Stage;
  readonly http2: Http2Stage;
  readonly opaque: OpaqueStage;
  readonly drainTimeoutMs: number;
}

export interface Drain {
  /** Starts draining (idempotent): nothing new is served, idle connections close. */
  start(): void;
  /** Starts draining and destroys every connection now. */
  destroyAll(): void;
  /** The whole bounded shutdown; resolves once everything is closed. */
  close(): Promise<void>;
}

export function createDrain(parts: DrainParts): Drain {
  const { shutdown, accept, http1, http2, opaque } = parts;

  function start(): void {
    if (shutdown.closing) return;
    shutdown.closing = true;
    accept.startDrain();
    http1.startDrain();
    http2.startDrain();
  }

  const lifecycle = closeOnce(async () => {
    start();
    opaque.close();
    // Stop accepting; net.Server's own close callback would wait for every connection, which the
    // bounded drain below handles instead.
    for (const server of [accept.server, accept.directServer] as (NetServer | undefined)[]) {
      if (server?.listening) server.close();
    }
    if (accept.connectionCount > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        accept.whenEmpty(),
        new Promise<void>((resolve) => {
          timer = setTimeout(() => {
            accept.destroyAll();
            resolve();
          }, parts.drainTimeoutMs);
          timer.unref();
        }),
      ]);
      clearTimeout(timer);
    }
    http2.close();
    http1.close();
  });
  accept.server.once("close", () => {
    void lifecycle.close();
  });

  return {
    start,
    destroyAll() {
      start();
      accept.destroyAll();
    },
    close: lifecycle.close,
  };
}
