import { type Dispatcher, util as undiciUtil } from "undici";

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

type RawHeaders = Buffer[];
type LegacyHandler = Dispatcher.DispatchHandler & {
  onConnect?(abort: (reason?: Error) => void, context?: unknown): void;
  onHeaders?(statusCode: number, rawHeaders: RawHeaders, resume: () => void, statusMessage?: string): boolean;
  onUpgrade?(statusCode: number, rawHeaders: RawHeaders, socket: unknown): void;
  onData?(chunk: Buffer): boolean;
  onComplete?(rawTrailers: RawHeaders | string[]): void;
  onError?(error: Error): void;
};

/**
 * The raw header lists of the response an endpoint sent, next to the objects parsed from them, so the top
 * of the pipeline can hand the raw list to an old-API handler (undici's `request`, `stream`, `fetch`)
 * instead of re-encoding every name and value into new Buffers (undici's WrapHandler does that), as long
 * as no layer replaced the object.
 */
export interface RawResponse {
  headers: ResponseHeaders | undefined;
  rawHeaders: RawHeaders | undefined;
  trailers: ResponseHeaders | undefined;
  rawTrailers: RawHeaders | undefined;
}

const { parseHeaders } = undiciUtil;

function toRaw(headers: ResponseHeaders): RawHeaders {
  const raw: RawHeaders = [];
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined) continue;
    if (Array.isArray(value))
      for (const item of value) raw.push(Buffer.from(name, "latin1"), Buffer.from(item, "latin1"));
    else raw.push(Buffer.from(name, "latin1"), Buffer.from(value, "latin1"));
  }
  return raw;
}

/**
 * Bottom of the pipeline: speaks undici's old handler API to a pool (what its clients call natively, so
 * undici adds no UnwrapHandler) and the controller API to the layers above, recording the raw header
 * lists in `raw`. It is its own controller: one object per attempt instead of two.
 */
export class EndpointResponseHandler implements Controller {
  readonly #inner: Dispatcher.DispatchHandler;
  readonly #raw: RawResponse | undefined;
  #abort: ((reason?: Error) => void) | undefined;
  #resume: (() => void) | undefined;
  #paused = false;
  #reason: Error | null = null;

  constructor(inner: Dispatcher.DispatchHandler, raw: RawResponse | undefined) {
    this.#inner = inner;
    this.#raw = raw;
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
    this.#abort?.(reason);
  }

  pause(): void {
    this.#paused = true;
  }

  resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    this.#resume?.();
  }

  onConnect(abort: (reason?: Error) => void, context: unknown): void {
    this.#abort = abort;
    this.#inner.onRequestStart?.(this, context);
  }

  onUpgrade(statusCode: number, rawHeaders: RawHeaders, socket: unknown): void {
    this.#inner.onRequestUpgrade?.(
      this,
      statusCode,
      parseHeaders(rawHeaders) as ResponseHeaders,
      socket as Parameters<NonNullable<Dispatcher.DispatchHandler["onRequestUpgrade"]>>[3],
    );
  }

  onHeaders(statusCode: number, rawHeaders: RawHeaders, resume: () => void, statusMessage?: string): boolean {
    this.#resume = resume;
    const headers = parseHeaders(rawHeaders) as ResponseHeaders;
    const raw = this.#raw;
    if (raw) {
      raw.headers = headers;
      raw.rawHeaders = rawHeaders;
    }
    this.#inner.onResponseStart?.(this, statusCode, headers, statusMessage);
    return !this.#paused;
  }

  onData(chunk: Buffer): boolean {
    this.#inner.onResponseData?.(this, chunk);
    return !this.#paused;
  }

  onComplete(rawTrailers: RawHeaders): void {
    const trailers = parseHeaders(rawTrailers) as ResponseHeaders;
    const raw = this.#raw;
    if (raw) {
      raw.trailers = trailers;
      raw.rawTrailers = rawTrailers;
    }
    this.#inner.onResponseEnd?.(this, trailers);
  }

  onError(error: Error): void {
    this.#inner.onResponseError?.(this, error);
  }
}

/**
 * Top of the pipeline for an old-API handler (what undici's own `request`/`fetch` pass): the controller
 * API in, the old API out, as undici's WrapHandler, but the raw header lists an endpoint sent go out as
 * they came when the headers object reaching here is the one parsed from them.
 */
export class LegacyResponseHandler implements Dispatcher.DispatchHandler {
  readonly #inner: LegacyHandler;
  readonly #raw: RawResponse;

  constructor(inner: Dispatcher.DispatchHandler, raw: RawResponse) {
    this.#inner = inner as LegacyHandler;
    this.#raw = raw;
  }

  onRequestStart(controller: Controller, context: unknown): void {
    this.#inner.onConnect?.((reason) => controller.abort(reason as Error), context);
  }

  onRequestUpgrade(
    _controller: Controller,
    statusCode: number,
    headers: Parameters<NonNullable<Dispatcher.DispatchHandler["onRequestUpgrade"]>>[2],
    socket: Parameters<NonNullable<Dispatcher.DispatchHandler["onRequestUpgrade"]>>[3],
  ): void {
    this.#inner.onUpgrade?.(statusCode, toRaw(headers as ResponseHeaders), socket);
  }

  onResponseStart(
    controller: Controller,
    statusCode: number,
    headers: ResponseHeaders,
    statusMessage?: string,
  ): void {
    const raw = headers === this.#raw.headers && this.#raw.rawHeaders ? this.#raw.rawHeaders : toRaw(headers);
    if (this.#inner.onHeaders?.(statusCode, raw, () => controller.resume(), statusMessage) === false)
      controller.pause();
  }

  onResponseData(controller: Controller, chunk: Buffer): void {
    if (this.#inner.onData?.(chunk) === false) controller.pause();
  }

  onResponseEnd(_controller: Controller, trailers: ResponseHeaders): void {
    const raw =
      trailers === this.#raw.trailers && this.#raw.rawTrailers
        ? this.#raw.rawTrailers
        : isEmpty(trailers)
          ? []
          : toRaw(trailers);
    this.#inner.onComplete?.(raw);
  }

  onResponseError(_controller: Controller, error: Error): void {
    if (!this.#inner.onError) throw error;
    this.#inner.onError(error);
  }
}

function isEmpty(headers: ResponseHeaders): boolean {
  for (const _ in headers) return false;
  return true;
}

/** Whether `handler` speaks only undici's old handler API (no controller methods). */
export function isLegacyHandler(handler: Dispatcher.DispatchHandler): boolean {
  return typeof handler.onRequestStart !== "function";
}
