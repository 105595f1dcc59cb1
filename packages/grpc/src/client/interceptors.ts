import {
  type ClientOptions,
  InterceptingCall,
  type InterceptingListener,
  type Interceptor,
  type InterceptorOptions,
  Metadata,
  status as Status,
  type StatusObject,
} from "@grpc/grpc-js";
import { ConfigError, MeshChannel, meshChannel, type OutboundCallMessage } from "@inmesh/core";
import {
  applyL5dRequestHeaders,
  type BackoffConfig,
  backoffDelayMs,
  DEFAULT_MAX_REQUEST_BYTES,
  type RequestPolicy,
  type RetryableErrorKind,
} from "@inmesh/destination";
import { type AttemptContext, type MeshGrpcChannel, withAttemptContext } from "./channel.js";
import { isSynthesized, MESH_ERROR_METADATA_KEY } from "./routing.js";

type NextCall = Parameters<Interceptor>[1];
type UnderlyingCall = ReturnType<NextCall>;
type MessageContext = Parameters<InterceptingCall["sendMessageWithContext"]>[0];

const callStart = meshChannel(MeshChannel.outboundCallStart);
const callEnd = meshChannel(MeshChannel.outboundCallEnd);

export interface MeshClientInterceptorOptions {
  /**
   * Request messages up to this many bytes in total are kept so a retry can replay them; a larger or
   * still-streaming request is sent once (contract §7.1). @default 65536
   */
  maxRetryBodyBytes?: number;
}

interface ResolvedRetry {
  readonly maxRetries: number;
  readonly maxBytes: number;
  readonly backoff: BackoffConfig | undefined;
  readonly perTryTimeoutMs: number | undefined;
  isRetryable(code: number): boolean;
  isRetryableError(kind: RetryableErrorKind): boolean;
}

const NO_RETRY: ResolvedRetry = Object.freeze({
  maxRetries: 0,
  maxBytes: 0,
  backoff: undefined,
  perTryTimeoutMs: undefined,
  isRetryable: () => false,
  isRetryableError: () => false,
});

/** Only the route retries, as in Linkerd: a GRPCRoute's conditions and limit, or a profile's budget. */
function retryFor(
  policy: RequestPolicy | undefined,
  options: Required<MeshClientInterceptorOptions>,
): ResolvedRetry {
  const retry = policy?.retry;
  if (!retry || retry.kind === "none") return NO_RETRY;
  return {
    maxRetries: retry.maxRetries,
    maxBytes: Math.min(retry.maxRequestBytes, options.maxRetryBodyBytes),
    backoff: retry.kind === "route" ? retry.backoff : undefined,
    perTryTimeoutMs: retry.kind === "route" ? retry.perTryTimeoutMs : undefined,
    isRetryable: (code) => retry.isRetryableGrpc(code),
    isRetryableError: (kind) => retry.isRetryableError(kind),
  };
}

function resolveOptions(options: MeshClientInterceptorOptions = {}): Required<MeshClientInterceptorOptions> {
  const maxRetryBodyBytes = options.maxRetryBodyBytes ?? DEFAULT_MAX_REQUEST_BYTES;
  if (!Number.isInteger(maxRetryBodyBytes) || maxRetryBodyBytes < 0) {
    throw new ConfigError("maxRetryBodyBytes must be a non-negative integer", {
      details: { variable: "maxRetryBodyBytes" },
    });
  }
  return { maxRetryBodyBytes };
}

/** A header as `selectRoute` and `applyL5dRequestHeaders` read it from call metadata. */
function metadataHeader(metadata: Metadata, name: string): string | string[] | undefined {
  const values = metadata
    .get(name)
    .map((value) => (typeof value === "string" ? value : value.toString("latin1")));
  return values.length === 0 ? undefined : values.length === 1 ? values[0] : values;
}

/** How long after the first response message a status may arrive and still be classified (Linkerd peeks "immediately"). */
const PEEK_WINDOW_MS = 1;

/**
 * One logical call and its attempts. Response metadata and at most one message are held back until the
 * outcome is known (the status, or a second message), so a retryable status can still be retried; after
 * that the call is committed and everything flows straight through.
 */
class RetryingCall extends InterceptingCall {
  readonly #options: InterceptorOptions;
  readonly #nextCall: NextCall;
  readonly #channel: MeshGrpcChannel;
  readonly #config: Required<MeshClientInterceptorOptions>;
  readonly #telemetry: OutboundCallMessage | undefined;
  #retry: ResolvedRetry | undefined;
  /** The first attempt's context; the route is set on it once `start` has the metadata. */
  readonly #firstContext: AttemptContext;
  readonly #startedAtMs: number;
  #route: { readonly policy: RequestPolicy | undefined } | undefined;
  #current: UnderlyingCall;
  #attempt = 1;
  #metadata: Metadata | undefined;
  #listener: InterceptingListener | undefined;
  #messages: unknown[] | undefined = [];
  #bytes = 0;
  #halfClosed = false;
  #reads = 0;
  #committed = false;
  #done = false;
  #cancelled = false;
  #timers = new Set<NodeJS.Timeout>();

  constructor(
    options: InterceptorOptions,
    nextCall: NextCall,
    channel: MeshGrpcChannel,
    config: Required<MeshClientInterceptorOptions>,
    telemetry: OutboundCallMessage | undefined,
  ) {
    const startedAtMs = performance.now();
    const context: AttemptContext = { call: telemetry, attempt: 1, startedAtMs };
    const first = withAttemptContext(context, () => nextCall(options));
    super(first);
    this.#firstContext = context;
    this.#startedAtMs = startedAtMs;
    this.#options = options;
    this.#nextCall = nextCall;
    this.#channel = channel;
    this.#config = config;
    this.#telemetry = telemetry;
    this.#current = first;
  }

  override start(metadata: Metadata, listener?: Partial<InterceptingListener>): void {
    this.#listener = {
      onReceiveMetadata: (md) => listener?.onReceiveMetadata?.(md),
      onReceiveMessage: (message) => listener?.onReceiveMessage?.(message),
      onReceiveStatus: (status) => listener?.onReceiveStatus?.(status),
    };
    let waiting: NodeJS.Timeout | undefined;
    let routed = false;
    this.#channel.withRoutes(() => {
      routed = true;
      if (waiting) this.#clear(waiting);
      this.#routeAndStart(metadata);
    });
    if (routed) return;
    // The caller's deadline also bounds the wait for the routes (grpc-js enforces it only inside a channel).
    const deadline = this.#options.deadline;
    const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
    if (deadlineMs === undefined || !Number.isFinite(deadlineMs)) return;
    waiting = setTimeout(
      () => {
        if (waiting) this.#timers.delete(waiting);
        if (this.#retry !== undefined || this.#done) return;
        this.#cancelled = true;
        this.#current.cancelWithStatus(Status.DEADLINE_EXCEEDED, "Deadline exceeded");
        this.#finish({
          code: Status.DEADLINE_EXCEEDED,
          details: "Deadline exceeded",
          metadata: new Metadata(),
        });
      },
      Math.max(0, deadlineMs - Date.now()),
    );
    this.#timers.add(waiting);
  }

  /** Chooses the call's route once (every attempt uses it), then starts the first attempt. */
  #routeAndStart(metadata: Metadata): void {
    if (this.#done) return;
    if (this.#cancelled) {
      // Cancelled before it started: the attempt holds the cancellation and reports it.
      this.#retry = NO_RETRY;
      this.#metadata = metadata;
      this.#startAttempt(this.#current);
      return;
    }
    let policy = this.#channel.requestPolicy(this.#options.method_definition.path, metadata);
    let sent = metadata;
    if (policy?.allowL5dRequestHeaders) {
      // The route lets the caller override retries and timeouts with `l5d-*` headers; they are not sent on.
      const result = applyL5dRequestHeaders(policy, (name) => metadataHeader(metadata, name));
      policy = result.policy;
      if (result.stripHeaders.length > 0) {
        sent = metadata.clone();
        for (const name of result.stripHeaders) sent.remove(name);
      }
    }
    this.#metadata = sent === metadata ? metadata.clone() : sent;
    this.#route = { policy };
    this.#firstContext.route = this.#route;
    this.#retry = retryFor(policy, this.#config);
    // Messages sent while the routes were being discovered count against the route's limit too.
    if (this.#bytes > this.#retry.maxBytes) this.#messages = undefined;
    if (this.#retry.maxRetries > 0) this.#channel.budget.deposit();
    if (this.#telemetry && policy) {
      this.#telemetry.route = { group: policy.route.group, kind: policy.route.kind, name: policy.route.name };
    }
    this.#startAttempt(this.#current);
  }

  /** When the route's request timeout ends the call (absolute, on the `performance.now()` clock). */
  #routeDeadlineMs(): number | undefined {
    const requestMs = this.#route?.policy?.timeouts.requestMs;
    return requestMs === undefined ? undefined : this.#startedAtMs + requestMs;
  }

  #startAttempt(call: UnderlyingCall): void {
    const retry = this.#retry as ResolvedRetry;
    let metadataHeld: Metadata | undefined;
    let messageHeld: { value: unknown } | undefined;
    let peekTimer: NodeJS.Timeout | undefined;
    let timedOut = false;
    let responded = false;
    const isCurrent = () => call === this.#current && !this.#done;

    const commit = () => {
      if (this.#committed) return;
      this.#committed = true;
      if (peekTimer) this.#clear(peekTimer);
      if (metadataHeld) this.#listener?.onReceiveMetadata(metadataHeld);
      metadataHeld = undefined;
      if (messageHeld) this.#listener?.onReceiveMessage(messageHeld.value);
      messageHeld = undefined;
    };

    const last = this.#attempt > retry.maxRetries;
    if (retry.perTryTimeoutMs !== undefined && !last) {
      const timer = setTimeout(() => {
        this.#timers.delete(timer);
        if (responded || !isCurrent()) return;
        timedOut = true;
        call.cancelWithStatus(Status.CANCELLED, "per-try timeout");
      }, retry.perTryTimeoutMs);
      this.#timers.add(timer);
    }

    call.start(this.#metadata?.clone() ?? new Metadata(), {
      onReceiveMetadata: (metadata) => {
        if (!isCurrent()) return;
        responded = true;
        if (this.#committed) this.#listener?.onReceiveMetadata(metadata);
        else metadataHeld = metadata;
      },
      onReceiveMessage: (message) => {
        if (!isCurrent()) return;
        responded = true;
        if (this.#committed) {
          this.#listener?.onReceiveMessage(message);
          return;
        }
        if (messageHeld || !this.#mayRetry()) {
          commit();
          this.#listener?.onReceiveMessage(message);
          return;
        }
        // Hold the first message and look for the status right behind it.
        messageHeld = { value: message };
        call.startRead();
        peekTimer = setTimeout(() => {
          if (peekTimer) this.#timers.delete(peekTimer);
          peekTimer = undefined;
          if (isCurrent()) commit();
        }, PEEK_WINDOW_MS);
        this.#timers.add(peekTimer);
      },
      onReceiveStatus: (status) => {
        if (!isCurrent()) return;
        responded = true;
        if (!this.#committed) {
          const meshCode = status.metadata?.get(MESH_ERROR_METADATA_KEY)[0];
          const kind: RetryableErrorKind | undefined = timedOut
            ? "response-headers-timeout"
            : meshCode === "MESH_ERR_DESTINATION_NO_ENDPOINTS"
              ? "fail-fast"
              : undefined;
          // Statuses the mesh made up (no endpoint, our identity unusable) are retried only as errors.
          const retryable =
            status.code !== Status.OK &&
            !this.#cancelled &&
            (kind !== undefined
              ? retry.isRetryableError(kind)
              : meshCode === undefined && !isSynthesized(status) && retry.isRetryable(status.code));
          if (retryable && this.#mayRetry() && this.#channel.budget.tryWithdraw()) {
            if (peekTimer) this.#clear(peekTimer);
            this.#retryLater();
            return;
          }
          commit();
        }
        this.#finish(
          timedOut && status.code === Status.CANCELLED && !this.#cancelled
            ? { ...status, code: Status.DEADLINE_EXCEEDED, details: "per-try timeout on the last attempt" }
            : status,
        );
      },
    });
    // The first attempt already took the caller's reads (its start may wait for the routes); a retry
    // replays them.
    if (this.#attempt > 1) for (let i = 0; i < this.#reads; i += 1) call.startRead();
    // grpc-js takes one write at a time (the next waits for the previous one's callback), so a replay
    // chains them the same way, then half-closes.
    const messages = [...(this.#messages ?? [])];
    let next = 0;
    const sendNext = () => {
      if (call !== this.#current || this.#done) return;
      if (next < messages.length) {
        const message = messages[next];
        next += 1;
        call.sendMessageWithContext({ callback: sendNext }, message);
      } else if (this.#halfClosed) {
        call.halfClose();
      }
    };
    if (this.#attempt > 1) sendNext();
  }

  #mayRetry(): boolean {
    const retry = this.#retry;
    if (!retry || this.#cancelled || this.#done) return false;
    const deadline = this.#options.deadline;
    const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
    return (
      this.#attempt <= retry.maxRetries &&
      this.#halfClosed &&
      this.#messages !== undefined &&
      (deadlineMs === undefined || !Number.isFinite(deadlineMs) || Date.now() < deadlineMs) &&
      (this.#routeDeadlineMs() ?? Number.POSITIVE_INFINITY) > performance.now()
    );
  }

  #retryLater(): void {
    const backoff = this.#retry?.backoff;
    let delayMs = backoff ? backoffDelayMs(backoff, this.#attempt - 1) : 0;
    // A backoff past the route's request timeout would overshoot it: the attempt starts (and the
    // channel ends it with DEADLINE_EXCEEDED) when the timeout does.
    const routeDeadlineMs = this.#routeDeadlineMs();
    if (routeDeadlineMs !== undefined)
      delayMs = Math.min(delayMs, Math.max(0, routeDeadlineMs - performance.now()));
    const next = () => {
      if (this.#cancelled || this.#done) return;
      this.#attempt += 1;
      const context: AttemptContext = {
        call: this.#telemetry,
        attempt: this.#attempt,
        route: this.#route,
        startedAtMs: this.#startedAtMs,
      };
      const call = withAttemptContext(context, () => this.#nextCall(this.#options));
      this.#current = call;
      this.#startAttempt(call);
    };
    if (delayMs <= 0) {
      queueMicrotask(next);
      return;
    }
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      next();
    }, delayMs);
    this.#timers.add(timer);
  }

  #finish(status: StatusObject): void {
    if (this.#done) return;
    this.#done = true;
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
    this.#messages = undefined;
    if (this.#telemetry) this.#telemetry.attempts = this.#attempt;
    this.#listener?.onReceiveStatus(status);
  }

  #clear(timer: NodeJS.Timeout): void {
    clearTimeout(timer);
    this.#timers.delete(timer);
  }

  override sendMessageWithContext(context: MessageContext, message: unknown): void {
    if (this.#messages) {
      const serialize = this.#options.method_definition.requestSerialize;
      this.#bytes += serialize(message).byteLength;
      // Over the limit: stop keeping a copy; the call can no longer be replayed.
      if (this.#bytes > (this.#retry?.maxBytes ?? this.#config.maxRetryBodyBytes)) this.#messages = undefined;
      else this.#messages.push(message);
    }
    this.#current.sendMessageWithContext(context, message);
  }

  override sendMessage(message: unknown): void {
    this.sendMessageWithContext({}, message);
  }

  override halfClose(): void {
    this.#halfClosed = true;
    this.#current.halfClose();
  }

  override startRead(): void {
    if (!this.#committed) this.#reads += 1;
    this.#current.startRead();
  }

  override cancelWithStatus(status: Status, details: string): void {
    this.#cancelled = true;
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
    this.#current.cancelWithStatus(status, details);
    // Cancelled while waiting for the routes: no attempt started, so the status is ours to report.
    if (this.#retry === undefined && this.#listener) {
      queueMicrotask(() => this.#finish({ code: status, details, metadata: new Metadata() }));
    }
  }

  override getPeer(): string {
    return this.#current.getPeer();
  }

  override getAuthContext() {
    return this.#current.getAuthContext();
  }
}

/**
 * Retries per the route only (GRPCRoute conditions and limit, or ServiceProfile budget retries), as
 * linkerd2-proxy does: nothing is retried without one. Request messages are replayed only when the call was half-closed within
 * `maxRetryBodyBytes`; every retry withdraws from the target's budget; the call's deadline is kept, so
 * each attempt carries the time left in `grpc-timeout`.
 */
export function createMeshRetryInterceptor(
  channel: MeshGrpcChannel,
  options: MeshClientInterceptorOptions = {},
): Interceptor {
  const config = resolveOptions(options);
  return function meshRetry(interceptorOptions, nextCall) {
    const telemetry = activeCallMessage;
    activeCallMessage = undefined;
    return new RetryingCall(interceptorOptions, nextCall, channel, config, telemetry);
  };
}

let activeCallMessage: OutboundCallMessage | undefined;

/**
 * Publishes `mesh:outbound:call:start|end` for each logical gRPC call when someone subscribes; headers
 * set through the message (trace context) go into the call's metadata, so every attempt carries them.
 */
export function createMeshTelemetryInterceptor(channel: MeshGrpcChannel): Interceptor {
  return function meshTelemetry(options, nextCall) {
    if (!callStart.hasSubscribers && !callEnd.hasSubscribers) return new InterceptingCall(nextCall(options));
    const startedAtMs = performance.now();
    const extra: [string, string][] = [];
    const message: OutboundCallMessage = {
      protocol: "grpc",
      method: "POST",
      path: options.method_definition.path,
      authority: channel.authority,
      setHeader(name, value) {
        extra.push([name.toLowerCase(), value]);
      },
      route: undefined,
      statusCode: undefined,
      grpcStatus: undefined,
      error: undefined,
      attempts: 1,
      durationMs: undefined,
    };
    if (callStart.hasSubscribers) callStart.publish(message);
    // Hands the message to the retry interceptor below, which creates its first attempt synchronously.
    activeCallMessage = message;
    let inner: UnderlyingCall;
    try {
      inner = nextCall(options);
    } finally {
      activeCallMessage = undefined;
    }
    return new InterceptingCall(inner, {
      start(metadata, _listener, next) {
        for (const [name, value] of extra) metadata.set(name, value);
        next(metadata, {
          onReceiveStatus(status, nextStatus) {
            message.statusCode = 200;
            message.grpcStatus = status.code;
            if (status.code !== Status.OK)
              message.error = Object.assign(new Error(status.details), { code: status.code });
            message.durationMs = performance.now() - startedAtMs;
            if (callEnd.hasSubscribers) callEnd.publish(message);
            nextStatus(status);
          },
        });
      },
    });
  };
}

/** `[telemetry, retry]`, outermost first, for a client on `channel`. */
export function createMeshClientInterceptors(
  channel: MeshGrpcChannel,
  options: MeshClientInterceptorOptions = {},
): Interceptor[] {
  return [createMeshTelemetryInterceptor(channel), createMeshRetryInterceptor(channel, options)];
}

/**
 * Client options that route a generated client through the mesh channel with the mesh interceptors.
 * Extra interceptors go after (inside) ours. Never pass interceptors per call: grpc-js call-level
 * interceptors replace the client's.
 *
 * @example
 * const client = new BooksClient(channel.authority, grpc.credentials.createInsecure(), createMeshClientOptions(channel));
 */
export function createMeshClientOptions(
  channel: MeshGrpcChannel,
  options: MeshClientInterceptorOptions & { interceptors?: Interceptor[] } = {},
): ClientOptions {
  const { interceptors = [], ...retry } = options;
  return {
    channelOverride: channel,
    interceptors: [...createMeshClientInterceptors(channel, retry), ...interceptors],
  };
}
