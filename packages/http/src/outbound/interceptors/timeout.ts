import { MeshError, MeshErrorCode } from "@inmesh/core";
import { decodeGrpcTimeout } from "@inmesh/destination";
import type { Dispatcher } from "undici";
import type { MeshInterceptor } from "../compose.js";
import { PassThroughHandler, type ResponseHeaders } from "../controller.js";
import { getHeader } from "../headers.js";
import type { ResolvedDispatcherOptions } from "../options.js";
import { type CallState, callOf } from "../state.js";

type Controller = Dispatcher.DispatchController;

/** Aborts the call (retries and response body included) when its deadline passes. */
class DeadlineHandler extends PassThroughHandler {
  #controller: Controller | undefined;
  #timer: NodeJS.Timeout | undefined;
  #expired: Error | undefined;

  constructor(inner: Dispatcher.DispatchHandler, call: CallState, deadlineAtMs: number, totalMs: number) {
    super(inner);
    this.#timer = setTimeout(
      () => {
        this.#timer = undefined;
        this.#expired = new MeshError(
          MeshErrorCode.DEADLINE,
          `request to ${call.authority} did not complete within its ${Math.round(totalMs)} ms deadline`,
          { details: { authority: call.authority, timeoutMs: totalMs } },
        );
        this.#controller?.abort(this.#expired);
      },
      Math.max(0, deadlineAtMs - performance.now()),
    );
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

function minDefined(...values: (number | undefined)[]): number | undefined {
  let min: number | undefined;
  for (const value of values) if (value !== undefined && (min === undefined || value < min)) min = value;
  return min;
}

/**
 * The overall deadline (contract §7.2 `timeouts.request`): the shortest of the route's request timeout,
 * the dispatcher's `requestTimeoutMs` and, for gRPC, the caller's `grpc-timeout`. It sits outside the
 * retry interceptor, so retries never outlive it; the identity-headers interceptor re-encodes the time
 * left as `grpc-timeout` on every attempt. A route's idle timeout bounds the wait for headers and
 * between body chunks.
 */
export function timeoutInterceptor(options: ResolvedDispatcherOptions): MeshInterceptor {
  return (dispatch) =>
    function meshTimeout(opts, handler) {
      const call = callOf(opts);
      const timeouts = call.policy?.timeouts ?? {};
      const grpcTimeoutMs =
        call.protocol === "grpc" ? decodeGrpcTimeout(getHeader(call.headers, "grpc-timeout")) : undefined;
      const totalMs = minDefined(timeouts.requestMs, options.requestTimeoutMs, grpcTimeoutMs);
      let next = opts;
      if (timeouts.idleMs !== undefined) {
        const idle = timeouts.idleMs;
        next = {
          ...opts,
          headersTimeout: minDefined(opts.headersTimeout ?? undefined, idle) ?? idle,
          bodyTimeout: minDefined(opts.bodyTimeout ?? undefined, idle) ?? idle,
        };
      }
      if (totalMs === undefined) return dispatch(next, handler);
      call.deadlineAtMs = call.startedAtMs + totalMs;
      return dispatch(next, new DeadlineHandler(handler, call, call.deadlineAtMs, totalMs));
    };
}
