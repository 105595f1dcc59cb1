import { once } from "node:events";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { debuglog } from "node:util";
import {
  type Closable,
  ConfigError,
  closeOnce,
  isLoopbackHost,
  MeshError,
  MeshErrorCode,
} from "@inmesh/core";
import type { MeshMetrics } from "./mesh-metrics.js";

const log = debuglog("mesh");

export type Readiness = boolean | { readonly ready: boolean; readonly reasons?: readonly string[] };

export interface AdminServerOptions {
  /** @default "127.0.0.1" */
  host?: string;
  /** 0 picks a free port. @default 4191 */
  port?: number;
  /** Rendered on `/metrics`. Without it `/metrics` serves only what `extraMetrics` returns. */
  metrics?: Pick<MeshMetrics, "render">;
  /** Prometheus text appended to `/metrics` (for example process metrics from another library). */
  extraMetrics?: () => string;
  /**
   * Asked on every `/ready`; Linkerd reports ready once identity is certified. A throw counts as not
   * ready. @default () => true
   */
  readiness?: () => Readiness;
  /**
   * Bind a non-loopback host (`0.0.0.0:4191` is what the injector asks for, so kubelet can probe and
   * linkerd-viz can scrape). Only `/metrics`, `/ready` and `/live` answer off the pod; every other path
   * is refused (403) unless the client is on the pod (see `localAddresses`), as linkerd2-proxy keeps its
   * sensitive routes local. Without it a non-loopback host is refused with a typed error.
   * @default false
   */
  allowNonLoopback?: boolean;
  /**
   * The pod's own addresses (`LINKERD2_PROXY_INBOUND_IPS`): clients connecting from one of them, or from
   * 127.0.0.1 / ::1, are on the pod. Other 127.0.0.x sources count as off the pod, because local dev
   * pods each get their own 127.0.0.x address (stricter than the proxy's any-loopback rule).
   */
  localAddresses?: readonly string[];
  /** Time allowed for a client to send request headers. @default 2000 */
  headersTimeoutMs?: number;
  /** @default 64 */
  maxConnections?: number;
}

export interface AdminServer extends Closable {
  readonly host: string;
  readonly port: number;
  /** `http://host:port`, for scraping. */
  readonly url: string;
}

interface ResolvedAdminOptions {
  readonly host: string;
  readonly port: number;
  readonly metrics: Pick<MeshMetrics, "render"> | undefined;
  readonly extraMetrics: (() => string) | undefined;
  readonly readiness: () => Readiness;
  readonly headersTimeoutMs: number;
  readonly maxConnections: number;
  readonly localAddresses: ReadonlySet<string>;
}

function invalid(option: string, message: string): MeshError {
  return new MeshError(MeshErrorCode.INVALID_ARG, message, { details: { option } });
}

function integerOption(name: string, value: unknown, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max)
    throw invalid(name, `${name} must be an integer from ${min} to ${max}`);
  return value;
}

function resolveAdminOptions(options: AdminServerOptions): ResolvedAdminOptions {
  const host = options.host ?? "127.0.0.1";
  if (typeof host !== "string" || host === "") throw invalid("host", "host must be a non-empty string");
  if (!isLoopbackHost(host) && options.allowNonLoopback !== true)
    throw invalid(
      "host",
      `refusing to bind the admin server to non-loopback host ${host}: pass allowNonLoopback: true to expose it (CVE-2024-40632)`,
    );
  if (options.metrics !== undefined && typeof options.metrics?.render !== "function")
    throw invalid("metrics", "metrics must have a render() function (see createMeshMetrics)");
  for (const name of ["extraMetrics", "readiness"] as const) {
    if (options[name] !== undefined && typeof options[name] !== "function")
      throw invalid(name, `${name} must be a function`);
  }
  const localAddresses = options.localAddresses ?? [];
  if (!Array.isArray(localAddresses) || localAddresses.some((address) => typeof address !== "string"))
    throw invalid("localAddresses", "localAddresses must be an array of IP address strings");
  return Object.freeze({
    localAddresses: new Set(["127.0.0.1", "::1", ...localAddresses.map(canonicalAddress)]),
    host,
    port: integerOption("port", options.port, 4191, 0, 65535),
    metrics: options.metrics,
    extraMetrics: options.extraMetrics,
    readiness: options.readiness ?? (() => true),
    headersTimeoutMs: integerOption("headersTimeoutMs", options.headersTimeoutMs, 2000, 100, 60_000),
    maxConnections: integerOption("maxConnections", options.maxConnections, 64, 1, 10_000),
  });
}

/** `::ffff:127.0.0.1` → `127.0.0.1`, so a dual-stack listener sees IPv4 clients as IPv4. */
function canonicalAddress(address: string): string {
  const lower = address.toLowerCase();
  return lower.startsWith("::ffff:") && lower.includes(".") ? lower.slice(7) : lower;
}

/** Served to every client: what kubelet probes and linkerd-viz scrapes. */
const PUBLIC_PATHS = new Set(["/metrics", "/ready", "/live"]);
const ALLOW = "GET, HEAD";
const MAX_REASONS = 16;
const MAX_REASON_LENGTH = 200;

/**
 * Starts the admin server: `/metrics`, `/ready`, `/live`, read-only, for every client; any other path
 * is refused (403) from off the pod. There is deliberately no route that
 * changes state (no `/shutdown`, no log-level `PUT`): the SSRF-to-shutdown chain of CVE-2024-40632 has
 * nothing to reach.
 */
export async function startAdminServer(options: AdminServerOptions = {}): Promise<AdminServer> {
  const config = resolveAdminOptions(options);

  const send = (
    req: IncomingMessage,
    res: ServerResponse,
    status: number,
    body: string,
    headers: Record<string, string> = {},
  ) => {
    const payload = Buffer.from(body, "utf8");
    res.writeHead(status, {
      "content-type": "text/plain; charset=utf-8",
      "content-length": String(payload.length),
      "cache-control": "no-store",
      ...headers,
    });
    res.end(req.method === "HEAD" ? undefined : payload);
  };

  const metricsText = (): string => {
    let text = config.metrics?.render() ?? "";
    if (config.extraMetrics) {
      const extra = config.extraMetrics();
      if (extra) text += extra.endsWith("\n") ? extra : `${extra}\n`;
    }
    return text;
  };

  const readinessBody = (): { ready: boolean; body: string } => {
    let state: Readiness;
    try {
      state = config.readiness();
    } catch (error) {
      log("admin readiness check failed: %o", error);
      return { ready: false, body: "not ready\n" };
    }
    if (typeof state === "boolean") return { ready: state, body: state ? "ready\n" : "not ready\n" };
    if (state.ready) return { ready: true, body: "ready\n" };
    const reasons = (state.reasons ?? []).slice(0, MAX_REASONS).map((reason) =>
      String(reason)
        .replace(/[\r\n]+/g, " ")
        .slice(0, MAX_REASON_LENGTH),
    );
    return { ready: false, body: `not ready\n${reasons.map((reason) => `${reason}\n`).join("")}` };
  };

  const handle = (req: IncomingMessage, res: ServerResponse) => {
    // Request bodies are never read; if one was announced, do not keep the connection around to drain it.
    const hasBody =
      req.headers["transfer-encoding"] !== undefined || Number(req.headers["content-length"] ?? 0) > 0;
    const headers: Record<string, string> = hasBody ? { connection: "close" } : {};
    let path: string;
    try {
      path = new URL(req.url ?? "/", "http://admin.invalid").pathname;
    } catch {
      send(req, res, 400, "bad request\n", { ...headers, connection: "close" });
      return;
    }
    if (!PUBLIC_PATHS.has(path)) {
      // linkerd2-proxy's answer for its local-only routes (log level, shutdown, tasks) from off the pod;
      // there are no such routes here, so a local client learns only that the path does not exist.
      const remote = canonicalAddress(req.socket.remoteAddress ?? "");
      if (!config.localAddresses.has(remote)) {
        send(req, res, 403, "Requests are only permitted from localhost.\n", headers);
        return;
      }
      send(req, res, 404, "not found\n", headers);
      return;
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      send(req, res, 405, "method not allowed\n", { ...headers, allow: ALLOW });
      return;
    }
    if (path === "/live") {
      send(req, res, 200, "live\n", headers);
      return;
    }
    if (path === "/ready") {
      const { ready, body } = readinessBody();
      send(req, res, ready ? 200 : 503, body, headers);
      return;
    }
    let text: string;
    try {
      text = metricsText();
    } catch (error) {
      log("admin /metrics render failed: %o", error);
      send(req, res, 500, "internal error\n", headers);
      return;
    }
    send(req, res, 200, text, { ...headers, "content-type": "text/plain; version=0.0.4; charset=utf-8" });
  };

  const server = createServer(
    {
      headersTimeout: config.headersTimeoutMs,
      requestTimeout: config.headersTimeoutMs * 2,
      keepAliveTimeout: 5000,
      // Node checks the two timeouts above only this often (30 s by default).
      connectionsCheckingInterval: Math.min(1000, config.headersTimeoutMs),
      maxHeaderSize: 8 * 1024,
    },
    (req, res) => {
      try {
        handle(req, res);
      } catch (error) {
        log("admin request failed: %o", error);
        if (!res.headersSent) send(req, res, 500, "internal error\n");
        else res.destroy();
      }
    },
  );
  server.maxConnections = config.maxConnections;
  // A parse error after a response (bytes a client sent without framing) must not get a second reply.
  const answered = new WeakSet<object>();
  server.on("request", (req: IncomingMessage) => answered.add(req.socket));
  server.on("clientError", (_error, socket) => {
    if (!socket.writable) socket.destroy();
    else if (answered.has(socket)) socket.end();
    else socket.end("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
  });

  await new Promise<void>((resolve, reject) => {
    const onError = (error: Error) => {
      server.off("listening", onListening);
      reject(
        new ConfigError(`admin server could not listen on ${config.host}:${config.port}: ${error.message}`, {
          cause: error,
          details: { variable: "port" },
        }),
      );
    };
    const onListening = () => {
      server.off("error", onError);
      resolve();
    };
    server.once("error", onError);
    server.once("listening", onListening);
    server.listen(config.port, config.host);
  });
  server.on("error", (error) => log("admin server error: %o", error));

  const address = server.address() as AddressInfo;
  const lifecycle = closeOnce(async () => {
    const closed = once(server, "close");
    server.close();
    server.closeAllConnections();
    await closed;
  });
  const urlHost = address.family === "IPv6" ? `[${address.address}]` : address.address;
  return {
    host: address.address,
    port: address.port,
    url: `http://${urlHost}:${address.port}`,
    close: lifecycle.close,
    [Symbol.asyncDispose]: lifecycle[Symbol.asyncDispose],
  };
}
