import type { MeshError } from "@inmesh/core";
import { decodeGrpcTimeout } from "@inmesh/destination";
import type { Dispatcher } from "undici";
import type { MeshInterceptor } from "../compose.js";
import { PassThroughHandler, type ResponseHeaders } from "../controller.js";
import { getHeader } from "../headers.js";
import type { ResolvedDispatcherOptions } from "../options.js";
import { type StreamTimeoutKind, streamTimeoutError } from "../proxy-errors.js";
import { type CallState, callOf } from "../state.js";

type Controller = Dispatcher.DispatchController;

/** Aborts the call (retries and response body included) when its deadline passes. */
class DeadlineHandler extends PassThroughHandler {
  #controller: Controller | undefined;
  #timer: NodeJS.Timeout | undefined;
  #expired: MeshError | undefined;
  #headers = false;
  readonly #untilHeaders: boolean;

  constructor(
    inner: Dispatcher.DispatchHandler,
    call: CallState,
    deadlineAtMs: number,
    totalMs: number,
    kind: StreamTimeoutKind,
  ) {
    super(inner);
    // A ServiceProfile timeout bounds the wait for response headers only (the proxy's tower Timeout).
    this.#untilHeaders = kind === "profile";
    this.#timer = setTimeout(
      () => {
        this.#timer = undefined;
        this.#expired = streamTimeoutError(kind, totalMs, this.#headers, call.authority);
        this.#controller?.abort(this.#expired);
      },
      Math.max(0, deadlineAtMs - performance.now()),
    );
  }

  override onResponseStart(
    controller: Controller,
    statusCode: number,
    headers: ResponseHeaders,
    statusMessage?: string,
  ): void {
    this.#headers = true;
    if (this.#untilHeaders) this.#clear();
    super.onResponseStart(controller, statusCode, headers, statusMessage);
  }

  override onRequestStart(controller: Controller, context: unknown): void {
    this.#controller = controller;
    if (this.#expired) controller.abort(this.#expired);
    super.onRequestStart(controller, context);
  }

  override onResponseEnd(controller: Controller, trailers: ResponseHeaders): void {
    this.#clear();
    super.onResponseEnd(controller, trailers);
  }

  override onResponseError(controller: Controller, error: Error): void {
    this.#clear();
    super.onResponseError(controller, error);
  }

  #clear(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}

/** Two at a time: a rest parameter would allocate an array on every call. */
function minDefined(a: number | undefined, b: number | undefined): number | undefined {
  if (a === undefined) return b;
  return b === undefined || a <= b ? a : b;
}

/**
 * The overall deadline (contract §7.2 `timeouts.request`): the shortest of the route's request timeout,
 * the dispatcher's `requestTimeoutMs` and, for gRPC, the caller's `grpc-timeout`. It sits outside the
 * retry interceptor, so retries never outlive it; the identity-headers interceptor re-encodes the time
 * left as `grpc-timeout` on every attempt. The response and idle timeouts are per attempt (see
 * `streamTimeoutsInterceptor`).
 */
export function timeoutInterceptor(options: ResolvedDispatcherOptions): MeshInterceptor {
  return (dispatch) =>
    function meshTimeout(opts, handler) {
      const call = callOf(opts);
      const routeMs = call.policy?.timeouts.requestMs;
      const grpcTimeoutMs =
        call.protocol === "grpc" ? decodeGrpcTimeout(getHeader(call.headers, "grpc-timeout")) : undefined;
      const totalMs = minDefined(minDefined(routeMs, options.requestTimeoutMs), grpcTimeoutMs);
      if (totalMs === undefined) return dispatch(opts, handler);
      // A ServiceProfile route's timeout is linkerd2-proxy's fatal "HTTP response timeout".
      const kind = totalMs === routeMs && call.policy?.source === "profile" ? "profile" : "request";
      call.deadlineAtMs = call.startedAtMs + totalMs;
      return dispatch(opts, new DeadlineHandler(handler, call, call.deadlineAtMs, totalMs, kind));
    };
}
