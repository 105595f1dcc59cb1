import { MeshChannel, meshChannel, type OutboundCallMessage } from "@inmesh/core";
import type { Dispatcher } from "undici";
import type { MeshInterceptor } from "../compose.js";
import { PassThroughHandler, type ResponseHeaders } from "../controller.js";
import { grpcStatusOf, setHeader } from "../headers.js";
import { type CallState, callOf } from "../state.js";

const callStart = meshChannel(MeshChannel.outboundCallStart);
const callEnd = meshChannel(MeshChannel.outboundCallEnd);

type Controller = Dispatcher.DispatchController;

class TelemetryHandler extends PassThroughHandler {
  readonly #message: OutboundCallMessage;
  readonly #call: CallState;
  #ended = false;

  constructor(inner: Dispatcher.DispatchHandler, call: CallState, message: OutboundCallMessage) {
    super(inner);
    this.#call = call;
    this.#message = message;
  }

  override onResponseStart(
    controller: Controller,
    statusCode: number,
    headers: ResponseHeaders,
    statusMessage?: string,
  ): void {
    this.#message.statusCode = statusCode;
    this.#message.grpcStatus = grpcStatusOf(headers);
    super.onResponseStart(controller, statusCode, headers, statusMessage);
  }

  override onResponseEnd(controller: Controller, trailers: ResponseHeaders): void {
    this.#message.grpcStatus ??= grpcStatusOf(trailers);
    this.#finish();
    super.onResponseEnd(controller, trailers);
  }

  override onResponseError(controller: Controller, error: Error): void {
    this.#message.error = error;
    this.#finish();
    super.onResponseError(controller, error);
  }

  #finish(): void {
    if (this.#ended) return;
    this.#ended = true;
    const message = this.#message;
    message.attempts = this.#call.attempts;
    message.durationMs = performance.now() - this.#call.startedAtMs;
    const route = this.#call.policy?.route;
    if (route) message.route = { group: route.group, kind: route.kind, name: route.name };
    if (callEnd.hasSubscribers) callEnd.publish(message);
  }
}

/**
 * Publishes `mesh:outbound:call:start|end` for the logical request (retries included), only when someone
 * subscribes. `setHeader` on the message adds a header to every attempt, which is how `@inmesh/otel`
 * injects trace context.
 */
export function telemetryInterceptor(): MeshInterceptor {
  return (dispatch) =>
    function meshTelemetry(opts, handler) {
      if (!callStart.hasSubscribers && !callEnd.hasSubscribers) return dispatch(opts, handler);
      const call = callOf(opts);
      const extra = call.extraHeaders;
      const message: OutboundCallMessage = {
        protocol: call.protocol,
        method: call.method,
        path: call.path,
        authority: call.authority,
        setHeader(name: string, value: string) {
          setHeader(extra, name, value);
        },
        route: undefined,
        parent: undefined,
        statusCode: undefined,
        grpcStatus: undefined,
        error: undefined,
        attempts: 0,
        durationMs: undefined,
      };
      call.telemetry = message;
      if (callStart.hasSubscribers) callStart.publish(message);
      return dispatch(opts, new TelemetryHandler(handler, call, message));
    };
}
