import type { MeshError } from "@inmesh/core";
import type { Dispatcher } from "undici";
import type { MeshInterceptor } from "../compose.js";
import { PassThroughHandler, type ResponseHeaders, syntheticController } from "../controller.js";
import { streamTimeoutError } from "../proxy-errors.js";
import { type CallState, callOf } from "../state.js";

type Controller = Dispatcher.DispatchController;

function isStreamedBody(body: unknown): body is AsyncIterable<unknown> | Iterable<unknown> {
  return (
    typeof body === "object" &&
    body !== null &&
    !(body instanceof Uint8Array) &&
    (typeof (body as AsyncIterable<unknown>)[Symbol.asyncIterator] === "function" ||
      typeof (body as Iterable<unknown>)[Symbol.iterator] === "function")
  );
}

/**
 * One attempt's response and idle timeouts, as linkerd2-proxy's `EnforceTimeouts` applies them per
 * endpoint request (contract §7.2):
 * - `response` runs from the end of the request body to the end of the response: before headers it
 *   fails the attempt (the caller gets 504), after them it ends the response body with an error;
 * - `idle` bounds each quiet gap of the response body (the proxy does not apply it to the wait for
 *   headers).
 */
class StreamTimeoutsHandler extends PassThroughHandler {
  readonly #call: CallState;
  readonly #responseMs: number | undefined;
  readonly #idleMs: number | undefined;
  #controller: Controller | undefined;
  #responseTimer: NodeJS.Timeout | undefined;
  #idleTimer: NodeJS.Timeout | undefined;
  #headers = false;
  /** Set once this layer failed the attempt; later callbacks from below are dropped. */
  #failed: MeshError | undefined;
  #done = false;
  /** A body given whole is written as soon as the request has a socket. */
  flushOnStart = true;

  constructor(
    inner: Dispatcher.DispatchHandler,
    call: CallState,
    responseMs: number | undefined,
    idleMs: number | undefined,
  ) {
    super(inner);
    this.#call = call;
    this.#responseMs = responseMs;
    this.#idleMs = idleMs;
  }

  /** The request body is sent in full: the response timeout starts. */
  requestFlushed(): void {
    if (this.#responseMs === undefined || this.#responseTimer || this.#done) return;
    const timeoutMs = this.#responseMs;
    this.#responseTimer = setTimeout(() => {
      this.#responseTimer = undefined;
      this.#expire(streamTimeoutError("response", timeoutMs, this.#headers, this.#call.authority));
    }, timeoutMs);
  }

  #armIdle(): void {
    if (this.#idleMs === undefined || this.#done) return;
    const timeoutMs = this.#idleMs;
    if (this.#idleTimer) {
      this.#idleTimer.refresh();
      return;
    }
    this.#idleTimer = setTimeout(() => {
      this.#idleTimer = undefined;
      this.#expire(streamTimeoutError("idle", timeoutMs, true, this.#call.authority));
    }, timeoutMs);
  }

  #expire(error: MeshError): void {
    if (this.#done) return;
    if (this.#controller) {
      this.#controller.abort(error);
      return;
    }
    // Not on a socket yet (connecting): answer now, abort the request when it gets one.
    this.#failed = error;
    this.#finish();
    super.onResponseError(syntheticController(), error);
  }

  #finish(): void {
    this.#done = true;
    if (this.#responseTimer) clearTimeout(this.#responseTimer);
    if (this.#idleTimer) clearTimeout(this.#idleTimer);
    this.#responseTimer = undefined;
    this.#idleTimer = undefined;
  }

  override onRequestStart(controller: Controller, context: unknown): void {
    this.#controller = controller;
    if (this.#failed) {
      controller.abort(this.#failed);
      return;
    }
    if (this.flushOnStart) this.requestFlushed();
    super.onRequestStart(controller, context);
  }

  override onResponseStart(
    controller: Controller,
    statusCode: number,
    headers: ResponseHeaders,
    statusMessage?: string,
  ): void {
    if (this.#failed) return;
    this.#headers = true;
    // A response before the end of the request body starts the response timeout too.
    this.requestFlushed();
    this.#armIdle();
    super.onResponseStart(controller, statusCode, headers, statusMessage);
  }

  override onResponseData(controller: Controller, chunk: Buffer): void {
    if (this.#failed) return;
    this.#armIdle();
    super.onResponseData(controller, chunk);
  }

  override onResponseEnd(controller: Controller, trailers: ResponseHeaders): void {
    if (this.#failed) return;
    this.#finish();
    super.onResponseEnd(controller, trailers);
  }

  override onResponseError(controller: Controller, error: Error): void {
    if (this.#failed) return;
    this.#finish();
    super.onResponseError(controller, error);
  }
}

/** Re-yields a streamed request body and reports when it has been read to its end. */
async function* observeEnd(body: AsyncIterable<unknown> | Iterable<unknown>, onEnd: () => void) {
  for await (const chunk of body as AsyncIterable<unknown>) yield chunk;
  onEnd();
}

/**
 * Per-attempt `timeouts.response` and `timeouts.idle` of the selected route (and `l5d-response-timeout`
 * where the route honours it). Sits below the retry layer: each attempt gets its own clock, while the
 * whole-call `timeouts.request` is the timeout interceptor's. Costs nothing on routes without them.
 */
export function streamTimeoutsInterceptor(): MeshInterceptor {
  return (dispatch) =>
    function meshStreamTimeouts(opts, handler) {
      const call = callOf(opts);
      const timeouts = call.policy?.timeouts;
      const responseMs = timeouts?.responseMs;
      const idleMs = timeouts?.idleMs;
      if (responseMs === undefined && idleMs === undefined) return dispatch(opts, handler);
      const timed = new StreamTimeoutsHandler(handler, call, responseMs, idleMs);
      if (responseMs !== undefined && isStreamedBody(opts.body)) {
        timed.flushOnStart = false;
        return dispatch(
          {
            ...opts,
            body: observeEnd(opts.body, () => timed.requestFlushed()),
          } as unknown as Dispatcher.DispatchOptions,
          timed,
        );
      }
      return dispatch(opts, timed);
    };
}
