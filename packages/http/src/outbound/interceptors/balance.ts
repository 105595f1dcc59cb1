import {
  DestinationError,
  MeshChannel,
  MeshError,
  MeshErrorCode,
  meshChannel,
  type OutboundAttemptMessage,
} from "@inmesh/core";
import { isFailureResponse, type PickOutcome } from "@inmesh/destination";
import type { Dispatcher } from "undici";
import type { MeshInterceptor } from "../compose.js";
import { EndpointConnectError } from "../connector.js";
import { PassThroughHandler, type ResponseHeaders, syntheticController } from "../controller.js";
import { grpcStatusOf } from "../headers.js";
import type { ResolvedDispatcherOptions } from "../options.js";
import { type AttemptState, attemptOf, type CallState, callOf } from "../state.js";
import type { EndpointGroup, EndpointLease } from "../targets.js";

type Controller = Dispatcher.DispatchController;

const attemptStart = meshChannel(MeshChannel.outboundAttemptStart);
const attemptEnd = meshChannel(MeshChannel.outboundAttemptEnd);

/** Tracks one exchange with one endpoint: load for the balancer, outcome, attempt telemetry. */
class LeaseHandler extends PassThroughHandler {
  readonly #owner: BalancedAttempt;
  readonly #lease: EndpointLease;
  readonly #message: OutboundAttemptMessage | undefined;
  /** Only attempt telemetry reads it. */
  readonly #startedAtMs: number = 0;
  #started = false;
  #firstByte = false;
  #status: number | undefined;
  #grpcStatus: number | undefined;
  #done = false;

  constructor(inner: Dispatcher.DispatchHandler, owner: BalancedAttempt, lease: EndpointLease) {
    super(inner);
    this.#owner = owner;
    this.#lease = lease;
    const call = owner.call;
    if (call.telemetry && (attemptStart.hasSubscribers || attemptEnd.hasSubscribers)) {
      this.#startedAtMs = performance.now();
      this.#message = {
        call: call.telemetry,
        attempt: owner.attempt.number,
        endpointAddress: lease.pick.endpoint.address,
        serverIdentity: lease.route.tls?.identity,
        endpointLabels: lease.pick.endpoint.metricLabels,
        statusCode: undefined,
        grpcStatus: undefined,
        error: undefined,
        durationMs: undefined,
      };
      if (attemptStart.hasSubscribers) attemptStart.publish(this.#message);
    }
  }

  override onRequestStart(controller: Controller, context: unknown): void {
    this.#started = true;
    // Written to a connection now: the endpoint's latency starts here, not at the pick.
    this.#lease.pick.onSent();
    super.onRequestStart(controller, context);
  }

  override onResponseStart(
    controller: Controller,
    statusCode: number,
    headers: ResponseHeaders,
    statusMessage?: string,
  ): void {
    this.#status = statusCode;
    this.#grpcStatus = grpcStatusOf(headers);
    super.onResponseStart(controller, statusCode, headers, statusMessage);
  }

  override onResponseData(controller: Controller, chunk: Buffer): void {
    if (!this.#firstByte) {
      // Peak-EWMA load is tracked until the first response DATA frame (contract §8.4).
      this.#firstByte = true;
      this.#lease.pick.onFirstByte();
    }
    super.onResponseData(controller, chunk);
  }

  override onResponseEnd(controller: Controller, trailers: ResponseHeaders): void {
    this.#grpcStatus ??= grpcStatusOf(trailers);
    const failed = isFailureResponse({ status: this.#status ?? 0, grpcStatus: this.#grpcStatus });
    this.#complete(failed ? "failure" : "success", undefined);
    this.#owner.group.connected(this.#lease.pick.endpoint.address);
    super.onResponseEnd(controller, trailers);
  }

  override onResponseError(controller: Controller, error: Error): void {
    if (!this.#started && error instanceof EndpointConnectError && this.#owner.repick(this.#lease, error)) {
      this.#complete("failure", error);
      return;
    }
    this.#complete(this.#owner.attempt.abandoned || controller?.aborted ? "canceled" : "failure", error);
    super.onResponseError(controller, error);
  }

  #complete(outcome: PickOutcome, error: Error | undefined): void {
    if (this.#done) return;
    this.#done = true;
    this.#lease.pick.onComplete(outcome);
    this.#owner.group.inflight -= 1;
    const message = this.#message;
    if (message) {
      message.statusCode = this.#status;
      message.grpcStatus = this.#grpcStatus;
      message.error = error;
      message.durationMs = performance.now() - this.#startedAtMs;
      if (attemptEnd.hasSubscribers) attemptEnd.publish(message);
    }
  }
}

/**
 * One attempt's search for an endpoint: a P2C pick when one is ready, otherwise a bounded wait (the
 * fail-fast timeout, as Linkerd's balancer queue); a pick whose connect fails is retried on another
 * endpoint, since no request byte was sent.
 */
class BalancedAttempt {
  readonly call: CallState;
  readonly attempt: AttemptState;
  readonly group: EndpointGroup;
  readonly #dispatch: Dispatcher.Dispatch;
  readonly #opts: Dispatcher.DispatchOptions;
  readonly #handler: Dispatcher.DispatchHandler;
  readonly #failFastAtMs: number;
  /** When the attempt began, for the first lease (its group's idle clock) without reading the clock again. */
  #startedAtMs: number | undefined;
  readonly #options: ResolvedDispatcherOptions;
  #lastConnectError: Error | undefined;
  #finished = false;

  constructor(
    dispatch: Dispatcher.Dispatch,
    opts: Dispatcher.DispatchOptions,
    handler: Dispatcher.DispatchHandler,
    options: ResolvedDispatcherOptions,
  ) {
    this.#dispatch = dispatch;
    this.#opts = opts;
    this.#handler = handler;
    this.call = callOf(opts);
    this.attempt = attemptOf(opts);
    const group = this.call.group;
    if (!group) throw new MeshError(MeshErrorCode.INTERNAL, "no endpoint group selected");
    this.group = group;
    this.#options = options;
    const now = performance.now();
    this.#startedAtMs = now;
    this.#failFastAtMs = now + options.failFastTimeoutMs;
  }

  run(): void {
    if (this.#finished) return;
    if (this.attempt.abandoned) {
      this.#fail(this.attempt.abandoned);
      return;
    }
    const lease = this.group.lease(this.#startedAtMs);
    this.#startedAtMs = undefined;
    if (lease) {
      this.#send(lease);
      return;
    }
    const remaining =
      Math.min(this.#failFastAtMs, this.call.deadlineAtMs ?? Number.POSITIVE_INFINITY) - performance.now();
    if (remaining <= 0) {
      this.#fail(this.#noEndpoint());
      return;
    }
    const wait = AbortSignal.any([this.attempt.signal, AbortSignal.timeout(Math.ceil(remaining))]);
    this.group.changed(wait).then(
      () => this.run(),
      () => this.#fail(this.attempt.abandoned ?? this.#noEndpoint()),
    );
  }

  #noEndpoint(): Error {
    const count = this.group.endpointCount();
    return new DestinationError(
      MeshErrorCode.DESTINATION_NO_ENDPOINTS,
      count === 0
        ? `no endpoints for ${this.group.path}`
        : `none of the ${count} endpoints of ${this.group.path} became ready in time`,
      {
        details: { authority: this.call.authority, path: this.group.path, endpoints: count },
        ...(this.#lastConnectError ? { cause: this.#lastConnectError } : {}),
      },
    );
  }

  #send(lease: EndpointLease): void {
    if (lease.route.tls) {
      // R2: an expired (or missing) identity fails the request now, even on an open connection, so no
      // request ever rides a certificate that is no longer valid.
      const identity = this.#options.identity;
      try {
        if (!identity) {
          throw new DestinationError(
            MeshErrorCode.INVALID_CONFIG,
            `endpoint ${lease.pick.endpoint.address} requires mTLS as ${lease.route.tls.identity}, but the dispatcher has no identity`,
          );
        }
        identity.clientSecureContext();
      } catch (error) {
        lease.pick.onComplete("canceled");
        this.#fail(MeshError.from(error));
        return;
      }
    }
    this.attempt.lease = lease;
    this.group.inflight += 1;
    const handler = new LeaseHandler(this.#handler, this, lease);
    try {
      this.#dispatch(this.#opts, handler);
    } catch (error) {
      handler.onResponseError(syntheticController(), MeshError.from(error));
    }
  }

  /** After a failed connect: back the endpoint off and try another. False leaves the error to the caller. */
  repick(lease: EndpointLease, error: EndpointConnectError): boolean {
    this.group.connectFailed(lease.pick.endpoint.address);
    this.#lastConnectError = error;
    if (this.attempt.abandoned || performance.now() >= this.#failFastAtMs) return false;
    queueMicrotask(() => this.run());
    return true;
  }

  #fail(error: Error): void {
    if (this.#finished) return;
    this.#finished = true;
    this.#handler.onResponseError?.(syntheticController(), error);
  }
}

/** Picks the endpoint of each attempt with the group's peak-EWMA P2C balancer (contract §8.4). */
export function balanceInterceptor(options: ResolvedDispatcherOptions): MeshInterceptor {
  return (dispatch) =>
    function meshBalance(opts, handler) {
      new BalancedAttempt(dispatch, opts, handler, options).run();
      return true;
    };
}
