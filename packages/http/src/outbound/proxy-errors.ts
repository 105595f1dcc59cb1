import { isMeshError, MeshError, MeshErrorCode } from "@inmesh/core";
import type { Dispatcher } from "undici";
import type { MeshInterceptor } from "./compose.js";
import {
  LegacyResponseHandler,
  PassThroughHandler,
  type RawResponse,
  type ResponseHeaders,
} from "./controller.js";
import { type CallState, callOf } from "./state.js";

type Controller = Dispatcher.DispatchController;

/**
 * Which stream timeout fired (contract §7.2): `request` is the whole-call deadline (`timeouts.request`,
 * `l5d-timeout`, the dispatcher's `requestTimeoutMs`), `response` runs from the end of the request body
 * (`timeouts.response`, `l5d-response-timeout`), `idle` is the longest quiet gap in a body, `profile` is
 * a ServiceProfile route's `timeout`, `per-try` the retry timeout to response headers.
 */
export type StreamTimeoutKind = "request" | "response" | "idle" | "profile" | "per-try";

/** Rust's `Duration` debug format as linkerd2-proxy prints it in errors: `400ms`, `1s`, `1.5s`. */
export function formatProxyDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  return `${Number((ms / 1000).toFixed(3))}s`;
}

const KIND_TEXT: Readonly<Record<Exclude<StreamTimeoutKind, "profile">, string>> = {
  request: "request timeout",
  response: "response stream timeout",
  idle: "idle timeout",
  "per-try": "response header timeout",
};

/**
 * The error of a stream timeout, worded as linkerd2-proxy words it (`linkerd/http/stream-timeouts`):
 * before response headers it becomes a 504 for the caller; after them it ends the response body.
 */
export function streamTimeoutError(
  kind: StreamTimeoutKind,
  timeoutMs: number,
  afterHeaders: boolean,
  authority: string,
): MeshError {
  const duration = formatProxyDuration(timeoutMs);
  const message =
    kind === "profile"
      ? `HTTP response timeout after ${duration}`
      : `${afterHeaders ? "timed out processing response stream" : "timed out waiting for response headers"}: ${KIND_TEXT[kind]}: ${duration}`;
  return new MeshError(MeshErrorCode.DEADLINE, message, {
    details: { authority, timeoutMs, timeout: kind, afterHeaders },
  });
}

interface Synthesized {
  readonly status: number;
  readonly grpcStatus: number;
  /** linkerd2-proxy's `close_connection`: the connection to the application is closed after it. */
  readonly close: boolean;
  readonly message: string;
}

const CONNECT_TIMEOUT = /timed? ?out|ETIMEDOUT|UND_ERR_CONNECT_TIMEOUT/i;
const IO_ERROR_CODES = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "EPIPE",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "UND_ERR_SOCKET",
  "UND_ERR_CLOSED",
  "ERR_HTTP2_STREAM_ERROR",
  "ERR_HTTP2_SESSION_ERROR",
  "ERR_HTTP2_GOAWAY_SESSION",
]);

function errorCode(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | undefined)?.code;
  return typeof code === "string" ? code : undefined;
}

/**
 * The response linkerd2-proxy's outbound `ServerRescue`/`ClientRescue` synthesize for an error that
 * happened before any response header (contract §6.5), or undefined for errors it does not answer
 * (the caller's own abort, a closed dispatcher, configuration and identity failures, policy denials):
 * those still reject the call with their typed MeshError.
 */
export function rescueError(error: unknown, call: CallState): Synthesized | undefined {
  const message = (error as Error | undefined)?.message ?? String(error);
  if (isMeshError(error)) {
    switch (error.code) {
      case MeshErrorCode.DEADLINE: {
        // Policy stream timeouts keep the connection (non-fatal); a profile's route timeout does not.
        const kind = error.details?.timeout;
        const profile = kind === "profile" || (kind === undefined && call.policy?.source === "profile");
        return { status: 504, grpcStatus: 4, close: profile, message };
      }
      case MeshErrorCode.IDENTITY_PEER_MISMATCH:
        // `l5d-require-id` names another identity than the chosen endpoint's: the proxy's 502.
        if (error.details?.required === undefined) return undefined;
        return { status: 502, grpcStatus: 14, close: true, message };
      case MeshErrorCode.DESTINATION_NO_ENDPOINTS:
        // Fail-fast: no endpoint became ready in time.
        return { status: 504, grpcStatus: 4, close: true, message };
      case MeshErrorCode.DESTINATION_UNREACHABLE: {
        if ((error as { endpointAddress?: unknown }).endpointAddress === undefined) return undefined;
        const cause = (error as Error).cause;
        const timedOut = CONNECT_TIMEOUT.test(errorCode(cause) ?? "") || CONNECT_TIMEOUT.test(`${cause}`);
        return { status: timedOut ? 504 : 502, grpcStatus: timedOut ? 4 : 14, close: true, message };
      }
      default:
        return undefined;
    }
  }
  const code = errorCode(error);
  if (code === "UND_ERR_HEADERS_TIMEOUT") return { status: 504, grpcStatus: 4, close: false, message };
  if (code !== undefined && IO_ERROR_CODES.has(code))
    return { status: 502, grpcStatus: 14, close: true, message };
  return undefined;
}

/** Header values must stay visible ASCII: anything else becomes `?`, and the text is bounded. */
function headerText(text: string): string {
  return text.slice(0, 1024).replace(/[^\x20-\x7e]/g, "?");
}

/** Headers of a synthesized answer, shaped like linkerd2-proxy's `SyntheticHttpResponse`. */
export function synthesizedHeaders(
  answer: Synthesized,
  call: Pick<CallState, "protocol">,
): { status: number; headers: ResponseHeaders } {
  const text = headerText(answer.message);
  if (call.protocol === "grpc") {
    const headers: ResponseHeaders = {
      "content-length": "0",
      "content-type": "application/grpc",
      "grpc-status": String(answer.grpcStatus),
      "grpc-message": encodeURIComponent(answer.message.slice(0, 1024)),
      "l5d-proxy-error": text,
    };
    if (answer.close) headers["l5d-proxy-connection"] = "close";
    return { status: 200, headers };
  }
  const headers: ResponseHeaders = { "content-length": "0", "l5d-proxy-error": text };
  if (answer.close) {
    headers.connection = "close";
    headers["l5d-proxy-connection"] = "close";
  }
  return { status: answer.status, headers };
}

/** Turns errors before response headers into the answer linkerd2-proxy would give the application. */
class RescueHandler extends PassThroughHandler {
  readonly #call: CallState;
  #started = false;
  #done = false;

  constructor(inner: Dispatcher.DispatchHandler, call: CallState) {
    super(inner);
    this.#call = call;
  }

  override onRequestUpgrade(
    controller: Controller,
    statusCode: number,
    headers: Parameters<PassThroughHandler["onRequestUpgrade"]>[2],
    socket: Parameters<PassThroughHandler["onRequestUpgrade"]>[3],
  ): void {
    this.#started = true;
    super.onRequestUpgrade(controller, statusCode, headers, socket);
  }

  override onResponseStart(
    controller: Controller,
    statusCode: number,
    headers: ResponseHeaders,
    statusMessage?: string,
  ): void {
    this.#started = true;
    super.onResponseStart(controller, statusCode, headers, statusMessage);
  }

  override onResponseEnd(controller: Controller, trailers: ResponseHeaders): void {
    this.#done = true;
    super.onResponseEnd(controller, trailers);
  }

  override onResponseError(controller: Controller, error: Error): void {
    if (this.#done) return;
    this.#done = true;
    const answer = this.#started ? undefined : rescueError(error, this.#call);
    if (!answer) {
      super.onResponseError(controller, error);
      return;
    }
    const { status, headers } = synthesizedHeaders(answer, this.#call);
    this.inner.onResponseStart?.(controller, status, headers, "");
    this.inner.onResponseEnd?.(controller, {});
  }
}

/**
 * The rescue layer and the old-API adapter above it as one object: undici's `request` and `fetch` hand
 * the dispatcher old-API handlers, so this is what nearly every call would otherwise build as two.
 * Behaves as `LegacyResponseHandler` under `RescueHandler`.
 */
export class RescuingLegacyHandler extends LegacyResponseHandler {
  readonly #call: CallState;
  #started = false;
  #done = false;

  constructor(inner: Dispatcher.DispatchHandler, raw: RawResponse, call: CallState) {
    super(inner, raw);
    this.#call = call;
  }

  override onRequestUpgrade(
    controller: Controller,
    statusCode: number,
    headers: Parameters<LegacyResponseHandler["onRequestUpgrade"]>[2],
    socket: Parameters<LegacyResponseHandler["onRequestUpgrade"]>[3],
  ): void {
    this.#started = true;
    super.onRequestUpgrade(controller, statusCode, headers, socket);
  }

  override onResponseStart(
    controller: Controller,
    statusCode: number,
    headers: ResponseHeaders,
    statusMessage?: string,
  ): void {
    this.#started = true;
    super.onResponseStart(controller, statusCode, headers, statusMessage);
  }

  override onResponseEnd(controller: Controller, trailers: ResponseHeaders): void {
    this.#done = true;
    super.onResponseEnd(controller, trailers);
  }

  override onResponseError(controller: Controller, error: Error): void {
    if (this.#done) return;
    this.#done = true;
    const answer = this.#started ? undefined : rescueError(error, this.#call);
    if (!answer) {
      super.onResponseError(controller, error);
      return;
    }
    const { status, headers } = synthesizedHeaders(answer, this.#call);
    super.onResponseStart(controller, status, headers, "");
    super.onResponseEnd(controller, {});
  }
}

/**
 * Outermost mesh layer: a timeout, fail-fast or endpoint failure that happens before the response
 * starts answers as linkerd2-proxy answers its application (504 or 502 with `l5d-proxy-error`, and
 * `l5d-proxy-connection: close` where the proxy would close; gRPC: HTTP 200 with `grpc-status`), not as
 * a rejected `fetch`. Errors after the headers end the response body, as they do behind the proxy.
 */
export function rescueInterceptor(): MeshInterceptor {
  return (dispatch) =>
    function meshRescue(opts, handler) {
      // The dispatcher built this layer into the old-API adapter already.
      if (handler instanceof RescuingLegacyHandler) return dispatch(opts, handler);
      return dispatch(opts, new RescueHandler(handler, callOf(opts)));
    };
}
