import { hasMeshErrorCode, MeshError, MeshErrorCode } from "@inmesh/core";
import {
  backoffDelayMs,
  NO_RETRY,
  type ResponseSummary,
  type RetryableErrorKind,
  type RetryPolicy,
} from "@inmesh/destination";
import type { Dispatcher } from "undici";
import { createOneShotBody, createReplayableBody, type ReplayableBody } from "../body.js";
import type { MeshInterceptor } from "../compose.js";
import { ForwardingController, type ResponseHeaders } from "../controller.js";
import { getHeader, grpcStatusOf, isGrpcContentType, responseHeader } from "../headers.js";
import type { ResolvedDispatcherOptions } from "../options.js";
import { formatProxyDuration } from "../proxy-errors.js";
import { type AttemptState, type CallState, callOf, kAttempt, type MeshDispatchOptions } from "../state.js";

type Controller = Dispatcher.DispatchController;
type DispatchOptions = Dispatcher.DispatchOptions;

/** A retried response's body is read and dropped so its connection stays usable, up to this much. */
const MAX_DRAIN_BYTES = 64 * 1024;

/** Raised inside an attempt whose per-try timeout fired; never reaches the caller as is. */
class PerTryTimeout extends MeshError {
  constructor(timeoutMs: number) {
    // linkerd2-proxy's words for the retry timeout (`ResponseHeadersTimeoutError`).
    super(
      MeshErrorCode.DEADLINE,
      `timed out waiting for response headers: response header timeout: ${formatProxyDuration(timeoutMs)}`,
      { details: { timeoutMs, timeout: "per-try" } },
    );
    this.name = "PerTryTimeout";
  }
}

/** Marks an attempt we abandoned on purpose (retried elsewhere or the call ended). */
const ABANDONED = new MeshError(MeshErrorCode.CANCELED, "attempt abandoned");

function errorKind(error: unknown): RetryableErrorKind | undefined {
  if (error instanceof PerTryTimeout) return "response-headers-timeout";
  if (hasMeshErrorCode(error, MeshErrorCode.DESTINATION_NO_ENDPOINTS)) return "fail-fast";
  const code = (error as { code?: unknown })?.code;
  // HTTP/2 REFUSED_STREAM: the server did not process the request.
  if (code === "ERR_HTTP2_STREAM_ERROR" && /REFUSED_STREAM/.test(String((error as Error).message)))
    return "refused-stream";
  return undefined;
}

function contentLengthOf(call: CallState): number | undefined {
  const raw = getHeader(call.headers, "content-length");
  if (raw === undefined || !/^\d{1,15}$/.test(raw.trim())) return undefined;
  return Number(raw.trim());
}

/** Attempt state whose AbortSignal exists only if a layer below asks for it. */
export class LazyAttemptState implements AttemptState {
  readonly number: number;
  lease: AttemptState["lease"] = undefined;
  abandoned: Error | undefined;
  #controller: AbortController | undefined;

  constructor(number: number) {
    this.number = number;
  }

  get signal(): AbortSignal {
    if (!this.#controller) {
      this.#controller = new AbortController();
      if (this.abandoned) this.#controller.abort(this.abandoned);
    }
    return this.#controller.signal;
  }

  abandon(reason: Error): void {
    this.abandoned ??= reason;
    this.#controller?.abort(reason);
  }
}

class AttemptHandler implements Dispatcher.DispatchHandler {
  readonly #call: RetryingCall;
  readonly state: LazyAttemptState;
  #controller: Controller | undefined;
  #timer: NodeJS.Timeout | undefined;
  #abandoned: Error | undefined;
  #mode: "pending" | "forward" | "discard" | "peek" | "done" = "pending";
  #drained = 0;
  #held:
    | { status: number; headers: ResponseHeaders; message: string | undefined; chunks: Buffer[] }
    | undefined;

  constructor(call: RetryingCall, number: number, perTryTimeoutMs: number | undefined) {
    this.#call = call;
    this.state = new LazyAttemptState(number);
    if (perTryTimeoutMs !== undefined) {
      this.#timer = setTimeout(() => this.#perTryExpired(perTryTimeoutMs), perTryTimeoutMs);
    }
  }

  /** Stops this attempt: aborts it on its socket, or as soon as it reaches one. */
  abandon(reason: Error): void {
    if (this.#abandoned) return;
    this.#abandoned = reason;
    this.#clearTimer();
    this.state.abandon(reason);
    if (this.#controller && !this.#controller.aborted) this.#controller.abort(reason);
  }

  get hasController(): boolean {
    return this.#controller !== undefined;
  }

  get controller(): Controller | undefined {
    return this.#controller;
  }

  #perTryExpired(timeoutMs: number): void {
    this.#timer = undefined;
    if (this.#mode !== "pending") return;
    const error = new PerTryTimeout(timeoutMs);
    if (this.#controller) {
      this.#controller.abort(error);
      return;
    }
    // Still connecting or waiting for an endpoint: undici gives no handle yet, so leave it behind.
    this.abandon(ABANDONED);
    this.#call.attemptFailed(this, error);
  }

  #clearTimer(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  onRequestStart(controller: Controller): void {
    this.#controller = controller;
    if (this.#abandoned) {
      controller.abort(this.#abandoned);
      return;
    }
    this.#call.target(this, controller);
  }

  onRequestUpgrade(
    controller: Controller,
    statusCode: number,
    headers: Parameters<NonNullable<Dispatcher.DispatchHandler["onRequestUpgrade"]>>[2],
    socket: Parameters<NonNullable<Dispatcher.DispatchHandler["onRequestUpgrade"]>>[3],
  ): void {
    if (this.#abandoned) return;
    this.#clearTimer();
    this.#mode = "done";
    this.#call.commitUpgrade(controller, statusCode, headers, socket);
  }

  onResponseStart(
    _controller: Controller,
    statusCode: number,
    headers: ResponseHeaders,
    message?: string,
  ): void {
    if (this.#abandoned) return;
    this.#clearTimer();
    const grpcStatus = grpcStatusOf(headers);
    if (this.#call.retryResponse(this, { status: statusCode, grpcStatus })) {
      this.#mode = "discard";
      return;
    }
    // gRPC status in trailers: peek past at most one data chunk before classifying (contract §7.2).
    if (
      grpcStatus === undefined &&
      isGrpcContentType(responseHeader(headers, "content-type")) &&
      this.#call.mayRetry(this)
    ) {
      this.#mode = "peek";
      this.#held = { status: statusCode, headers, message, chunks: [] };
      return;
    }
    this.#mode = "forward";
    this.#call.commitStart(statusCode, headers, message);
  }

  onResponseData(controller: Controller, chunk: Buffer): void {
    if (this.#abandoned) return;
    switch (this.#mode) {
      case "forward":
        this.#call.forwardData(chunk);
        return;
      case "discard":
        this.#drained += chunk.byteLength;
        if (this.#drained > MAX_DRAIN_BYTES) controller.abort(ABANDONED);
        return;
      case "peek":
        this.#held?.chunks.push(chunk);
        if ((this.#held?.chunks.length ?? 0) > 1) this.#flush();
        return;
      default:
        return;
    }
  }

  #flush(): void {
    const held = this.#held;
    if (!held) return;
    this.#held = undefined;
    this.#mode = "forward";
    this.#call.commitStart(held.status, held.headers, held.message);
    for (const chunk of held.chunks) this.#call.forwardData(chunk);
  }

  onResponseEnd(_controller: Controller, trailers: ResponseHeaders): void {
    if (this.#abandoned) return;
    const mode = this.#mode;
    this.#mode = "done";
    if (mode === "discard") {
      this.#call.retryNow(this);
      return;
    }
    if (mode === "peek") {
      const status = this.#held?.status ?? 200;
      if (this.#call.retryResponse(this, { status, grpcStatus: grpcStatusOf(trailers) })) {
        this.#held = undefined;
        this.#call.retryNow(this);
        return;
      }
      this.#flush();
    }
    this.#call.forwardEnd(trailers);
  }

  onResponseError(_controller: Controller, error: Error): void {
    this.#clearTimer();
    if (this.#abandoned) return;
    const mode = this.#mode;
    this.#mode = "done";
    if (mode === "forward") {
      this.#call.forwardError(error);
      return;
    }
    if (mode === "discard" && !this.#call.aborted) {
      // Already classified as retryable (and paid for); the body merely failed to drain.
      this.#call.retryNow(this);
      return;
    }
    this.#call.attemptFailed(this, error);
  }
}

/**
 * One logical request and its attempts (contract §7): responses the route classifies as retryable are
 * replayed while attempts remain, the body can be replayed, the budget allows it and the deadline has not
 * passed. Route retries wait 25–250 ms (jittered, exponential) between attempts; budget retries do not.
 * No header is added to retried requests.
 */
class RetryingCall {
  readonly #dispatch: Dispatcher.Dispatch;
  readonly #opts: DispatchOptions;
  readonly #outer: Dispatcher.DispatchHandler;
  readonly #call: CallState;
  readonly #policy: RetryPolicy;
  readonly #body: ReplayableBody;
  readonly #perTryTimeoutMs: number | undefined;
  readonly controller: ForwardingController;
  #current: AttemptHandler | undefined;
  #attempts = 0;
  #finished = false;
  #backoffTimer: NodeJS.Timeout | undefined;

  constructor(
    dispatch: Dispatcher.Dispatch,
    opts: DispatchOptions,
    outer: Dispatcher.DispatchHandler,
    call: CallState,
    options: ResolvedDispatcherOptions,
  ) {
    this.#dispatch = dispatch;
    this.#opts = opts;
    this.#outer = outer;
    this.#call = call;
    this.#policy = call.policy?.retry ?? NO_RETRY;
    // A route without retries sends its body once, as given: nothing is teed or kept.
    this.#body =
      this.#policy.kind === "none" || opts.body === undefined || opts.body === null
        ? createOneShotBody(opts.body)
        : createReplayableBody(
            opts.body,
            contentLengthOf(call),
            Math.min(options.maxRetryBodyBytes, this.#policy.maxRequestBytes),
          );
    this.#perTryTimeoutMs =
      this.#policy.kind === "route"
        ? (this.#policy.perTryTimeoutMs ?? options.perTryTimeoutMs)
        : options.perTryTimeoutMs;
    this.controller = new ForwardingController((reason) => this.#aborted(reason));
  }

  get aborted(): boolean {
    return this.controller.aborted;
  }

  start(): void {
    if (this.#policy.kind !== "none") this.#call.budget?.deposit();
    this.#outer.onRequestStart?.(this.controller, {});
    if (this.controller.aborted) {
      this.#fail(this.controller.reason as Error);
      return;
    }
    this.#send();
  }

  #send(): void {
    if (this.#finished) return;
    this.#attempts += 1;
    this.#call.attempts = this.#attempts;
    const last = this.#attempts > this.#policy.maxRetries || this.#policy.kind === "none";
    // The per-try timeout is cleared on the last attempt, as linkerd2-proxy does.
    const attempt = new AttemptHandler(this, this.#attempts, last ? undefined : this.#perTryTimeoutMs);
    this.#current = attempt;
    this.controller.target = undefined;
    try {
      // Stores after the copy: a computed key inside the literal goes through a slow runtime path in V8.
      const opts: DispatchOptions & MeshDispatchOptions = { ...this.#opts };
      (opts as MeshDispatchOptions).body = this.#body.next();
      opts[kAttempt] = attempt.state;
      this.#dispatch(opts, attempt);
    } catch (error) {
      this.attemptFailed(attempt, error as Error);
    }
  }

  target(attempt: AttemptHandler, controller: Controller): void {
    if (attempt !== this.#current) return;
    this.controller.target = controller;
  }

  /** Whether a response could still be retried (without paying for it yet). */
  mayRetry(attempt: AttemptHandler): boolean {
    return (
      attempt === this.#current &&
      !this.#finished &&
      !this.controller.aborted &&
      this.#policy.kind !== "none" &&
      this.#attempts <= this.#policy.maxRetries &&
      this.#body.canReplay() &&
      (this.#call.deadlineAtMs === undefined || performance.now() < this.#call.deadlineAtMs)
    );
  }

  /** Decides a retry for this response; a true answer has withdrawn from the budget. */
  retryResponse(attempt: AttemptHandler, response: ResponseSummary): boolean {
    if (!this.mayRetry(attempt) || !this.#policy.isRetryableResponse(response)) return false;
    return this.#withdraw();
  }

  #withdraw(): boolean {
    const budget = this.#call.budget;
    return budget === undefined || budget.tryWithdraw();
  }

  retryNow(attempt: AttemptHandler): void {
    if (attempt !== this.#current || this.#finished) return;
    if (this.controller.aborted) {
      this.#fail(this.controller.reason as Error);
      return;
    }
    const delayMs =
      this.#policy.kind === "route" ? backoffDelayMs(this.#policy.backoff, this.#attempts - 1) : 0;
    if (delayMs <= 0) {
      this.#send();
      return;
    }
    this.#backoffTimer = setTimeout(() => {
      this.#backoffTimer = undefined;
      this.#send();
    }, delayMs);
  }

  attemptFailed(attempt: AttemptHandler, error: Error): void {
    if (attempt !== this.#current || this.#finished) return;
    if (this.controller.aborted) {
      this.#fail(this.controller.reason as Error);
      return;
    }
    const kind = errorKind(error);
    if (
      kind !== undefined &&
      this.mayRetry(attempt) &&
      this.#policy.isRetryableError(kind) &&
      this.#withdraw()
    ) {
      this.retryNow(attempt);
      return;
    }
    this.#fail(
      error instanceof PerTryTimeout
        ? new MeshError(MeshErrorCode.DEADLINE, error.message, { cause: error, details: error.details ?? {} })
        : error,
    );
  }

  commitStart(status: number, headers: ResponseHeaders, message: string | undefined): void {
    this.#outer.onResponseStart?.(this.controller, status, headers, message);
  }

  commitUpgrade(
    _controller: Controller,
    statusCode: number,
    headers: Parameters<NonNullable<Dispatcher.DispatchHandler["onRequestUpgrade"]>>[2],
    socket: Parameters<NonNullable<Dispatcher.DispatchHandler["onRequestUpgrade"]>>[3],
  ): void {
    this.#finished = true;
    this.#outer.onRequestUpgrade?.(this.controller, statusCode, headers, socket);
  }

  forwardData(chunk: Buffer): void {
    this.#outer.onResponseData?.(this.controller, chunk);
  }

  forwardEnd(trailers: ResponseHeaders): void {
    if (this.#finished) return;
    this.#finished = true;
    this.#outer.onResponseEnd?.(this.controller, trailers);
  }

  forwardError(error: Error): void {
    this.#fail(error);
  }

  #fail(error: Error): void {
    if (this.#finished) return;
    this.#finished = true;
    if (this.#backoffTimer) clearTimeout(this.#backoffTimer);
    this.#outer.onResponseError?.(this.controller, error);
  }

  /** The caller (or the deadline) aborted: stop waiting, abandon the attempt, report the reason. */
  #aborted(reason: Error): void {
    if (this.#backoffTimer) {
      clearTimeout(this.#backoffTimer);
      this.#backoffTimer = undefined;
      this.#fail(reason);
      return;
    }
    const current = this.#current;
    if (current && !current.hasController) {
      // Not on a socket yet: undici cannot abort it, so answer now and abort it when it connects.
      current.abandon(reason);
      this.#fail(reason);
    }
  }
}

/**
 * Retries per the selected route (ServiceProfile budget retries or HTTPRoute/GRPCRoute retries), with
 * the 64 KiB body rule, per-try timeouts and the destination's retry budget.
 */
export function retryInterceptor(options: ResolvedDispatcherOptions): MeshInterceptor {
  return (dispatch) =>
    function meshRetry(opts, handler) {
      const call = callOf(opts);
      if ((call.policy?.retry ?? NO_RETRY).kind !== "none") {
        new RetryingCall(dispatch, opts, handler, call, options).start();
        return true;
      }
      // A route without retries has one attempt and no per-try timeout (it is cleared on the last
      // attempt): no layer, no copy of the options. The route layer abandons the attempt on an abort
      // that comes before it reaches a socket (see `abandonAttempt`).
      call.attempts = 1;
      (opts as unknown as MeshDispatchOptions)[kAttempt] = new LazyAttemptState(1);
      return dispatch(opts, handler);
    };
}
