import type { Dispatcher } from "undici";

type Controller = Dispatcher.DispatchController;

/**
 * A controller handed to an outer handler once, before the request it controls exists (discovery is
 * still pending, or a retry is waiting for its backoff). It forwards to whichever inner controller is
 * current, remembers pause state across attempts, and tells its owner about an abort that arrives while
 * there is no inner controller, so the owner can cancel what it is waiting for.
 */
export class ForwardingController implements Controller {
  #target: Controller | undefined;
  #paused = false;
  #reason: Error | null = null;
  readonly #onAbort: (reason: Error) => void;

  constructor(onAbort: (reason: Error) => void) {
    this.#onAbort = onAbort;
  }

  set target(target: Controller | undefined) {
    this.#target = target;
    if (target && this.#paused) target.pause();
    if (target && this.#reason && !target.aborted) target.abort(this.#reason);
  }

  get target(): Controller | undefined {
    return this.#target;
  }

  get aborted(): boolean {
    return this.#reason !== null;
  }

  get paused(): boolean {
    return this.#paused;
  }

  get reason(): Error | null {
    return this.#reason;
  }

  abort(reason: Error): void {
    if (this.#reason !== null) return;
    this.#reason = reason;
    this.#onAbort(reason);
    if (this.#target && !this.#target.aborted) this.#target.abort(reason);
  }

  pause(): void {
    this.#paused = true;
    this.#target?.pause();
  }

  resume(): void {
    this.#paused = false;
    this.#target?.resume();
  }
}

/** A controller for responses the dispatcher synthesizes itself (no socket behind them). */
export function syntheticController(): Controller {
  let reason: Error | null = null;
  let paused = false;
  return {
    get aborted() {
      return reason !== null;
    },
    get paused() {
      return paused;
    },
    get reason() {
      return reason;
    },
    abort(error: Error) {
      reason ??= error;
    },
    pause() {
      paused = true;
    },
    resume() {
      paused = false;
    },
  };
}

/**
 * Passes every callback through to `inner`; subclasses override what they observe. Handlers below the
 * top of our pipeline always receive the new (controller-based) undici handler API.
 */
export class PassThroughHandler implements Dispatcher.DispatchHandler {
  protected readonly inner: Dispatcher.DispatchHandler;

  constructor(inner: Dispatcher.DispatchHandler) {
    this.inner = inner;
  }

  onRequestStart(controller: Controller, context: unknown): void {
    this.inner.onRequestStart?.(controller, context);
  }

  onRequestUpgrade(
    controller: Controller,
    statusCode: number,
    headers: Parameters<NonNullable<Dispatcher.DispatchHandler["onRequestUpgrade"]>>[2],
    socket: Parameters<NonNullable<Dispatcher.DispatchHandler["onRequestUpgrade"]>>[3],
  ): void {
    this.inner.onRequestUpgrade?.(controller, statusCode, headers, socket);
  }

  onResponseStart(
    controller: Controller,
    statusCode: number,
    headers: ResponseHeaders,
    statusMessage?: string,
  ): void {
    this.inner.onResponseStart?.(controller, statusCode, headers, statusMessage);
  }

  onResponseData(controller: Controller, chunk: Buffer): void {
    this.inner.onResponseData?.(controller, chunk);
  }

  onResponseEnd(controller: Controller, trailers: ResponseHeaders): void {
    this.inner.onResponseEnd?.(controller, trailers);
  }

  onResponseError(controller: Controller, error: Error): void {
    this.inner.onResponseError?.(controller, error);
  }
}

export type ResponseHeaders = Parameters<NonNullable<Dispatcher.DispatchHandler["onResponseStart"]>>[2];

/** Sends a complete response with an empty body to `handler` (synthesized errors such as 404 "no route"). */
export function respondSynthetic(
  handler: Dispatcher.DispatchHandler,
  controller: Controller,
  statusCode: number,
  headers: ResponseHeaders,
  statusMessage: string,
): void {
  handler.onResponseStart?.(controller, statusCode, headers, statusMessage);
  if (!controller.aborted) handler.onResponseEnd?.(controller, {});
}
