import { channel } from "node:diagnostics_channel";
import { debuglog } from "node:util";
import type { Client, ClientReadableStream, ServiceError, StatusObject } from "@grpc/grpc-js";
import {
  type BackoffOptions,
  type Closable,
  closeOnce,
  createBackoff,
  DestinationError,
  keepProcessAlive,
  MeshError,
  MeshErrorCode,
} from "@inmesh/core";
import { decodeMessage } from "@inmesh/proto";
import type { MessageFold } from "./endpoint-fold.js";

const debug = debuglog("mesh");
const updateChannel = channel("mesh:destination:update");
const reconnectChannel = channel("mesh:destination:reconnect");
const errorChannel = channel("mesh:destination:error");

/** gRPC status codes the watches branch on (numeric, so grpc-js stays a type-only peer here). */
export const GrpcCode = {
  OK: 0,
  CANCELLED: 1,
  INVALID_ARGUMENT: 3,
  NOT_FOUND: 5,
  FAILED_PRECONDITION: 9,
  UNIMPLEMENTED: 12,
} as const;

export type WatchKind = "endpoints" | "profile" | "outbound-policy";

/** Cancellation for `ready()`, as every async function of the SDK takes. */
export interface ReadyOptions {
  signal?: AbortSignal;
  /** Reject with `MESH_ERR_DEADLINE` after this long. */
  timeoutMs?: number;
}

/** A snapshot of a watch's connection, for health checks and tests. */
export interface WatchState {
  /** A stream is open and has delivered at least one message. */
  readonly connected: boolean;
  /** A value has been received (possibly on an earlier stream). */
  readonly hasValue: boolean;
  /** The watch stopped for good: a terminal error, or a final answer such as "no policy". */
  readonly terminated: boolean;
  readonly closed: boolean;
  /** Values published so far. */
  readonly updates: number;
  /** Streams opened after the first one. */
  readonly reconnects: number;
  readonly lastError: MeshError | undefined;
}

/**
 * A live view of one control-plane stream. The last value survives disconnects until the next stream
 * delivers its first message. Close it when done: the stream is shared and ends with its last watcher.
 */
export interface Watch<T> extends Closable {
  readonly kind: WatchKind;
  readonly target: string;
  /** The latest value, or undefined before the first message. */
  current(): T | undefined;
  /**
   * Resolves with the first value (at once if there already is one); rejects on a terminal error.
   * Keeps the process alive while it waits.
   */
  ready(options?: ReadyOptions): Promise<T>;
  /** Called with every new value. Returns the unsubscribe function. */
  onUpdate(listener: (value: T) => void): () => void;
  /** Called with every error: transient ones (the watch reconnects) and the terminal one. */
  onError(listener: (error: MeshError) => void): () => void;
  state(): WatchState;
}

export type StatusOutcome<T> =
  | { readonly kind: "retry" }
  | { readonly kind: "terminal"; readonly error: MeshError }
  | { readonly kind: "final"; readonly value: T };

export interface StreamTimeouts {
  /** Restart a stream whose first message does not arrive in time. @default 3000 (Linkerd) */
  initialTimeoutMs: number;
  /** Restart a stream that is silent this long. @default 300000 (Linkerd) */
  idleTimeoutMs: number;
  /** Re-subscribe after this long, jittered down by up to 10 %. @default 3600000 (Linkerd) */
  maxLifetimeMs: number;
}

export interface StreamWatchSpec<TMessage, TValue> {
  readonly kind: WatchKind;
  readonly target: string;
  readonly client: Pick<Client, "makeServerStreamRequest">;
  readonly method: string;
  readonly request: Uint8Array;
  readonly codec: { decode(input: Uint8Array): TMessage };
  readonly messageName: string;
  readonly maxMessageBytes: number;
  readonly backoff: BackoffOptions;
  readonly timeouts: StreamTimeouts;
  readonly random: () => number;
  /** Folds one message into the value. Undefined ignores it; throwing rejects it and restarts the stream. */
  apply(previous: TValue | undefined, message: TMessage, fresh: boolean): TValue | undefined;
  /**
   * When set, messages are folded by this instead of `apply`, a slice of at most `sliceMs` per event-loop
   * turn, so that one huge message does not hold the loop: the first slice runs in the turn that
   * received the message, the rest in later turns (setImmediate, after pending I/O).
   */
  readonly fold?: MessageFold<TValue>;
  readonly sliceMs?: number;
  onStatus(status: { code: number; details: string }): StatusOutcome<TValue>;
}

/** The shared stream behind any number of `Watch` handles. */
export interface SharedWatch<T> {
  readonly kind: WatchKind;
  readonly target: string;
  current(): T | undefined;
  ready(options?: ReadyOptions): Promise<T>;
  subscribe(
    onUpdate: ((value: T) => void) | undefined,
    onError: ((error: MeshError) => void) | undefined,
  ): () => void;
  state(): WatchState;
  close(): void;
}

function safeCall<A>(fn: (arg: A) => void, arg: A): void {
  try {
    fn(arg);
  } catch (error) {
    debug("destination watch listener threw: %s", (error as Error)?.message ?? String(error));
  }
}

function statusError(kind: WatchKind, target: string, status: { code: number; details: string }): MeshError {
  return new DestinationError(
    MeshErrorCode.DESTINATION_UNREACHABLE,
    `${kind} stream for ${target} ended with gRPC status ${status.code}: ${status.details}`,
    { details: { grpcCode: status.code, target } },
  );
}

/** Opens, decodes and re-opens one server-streaming call with jittered backoff, one attempt at a time. */
export function createSharedWatch<TMessage, TValue>(
  spec: StreamWatchSpec<TMessage, TValue>,
): SharedWatch<TValue> {
  const backoff = createBackoff(spec.backoff);
  const updateListeners = new Set<(value: TValue) => void>();
  const errorListeners = new Set<(error: MeshError) => void>();
  const waiters = new Set<{ resolve: (value: TValue) => void; reject: (error: MeshError) => void }>();
  let value: TValue | undefined;
  let call: ClientReadableStream<Buffer> | undefined;
  let callTimers: NodeJS.Timeout[] = [];
  let idleTimer: NodeJS.Timeout | undefined;
  let reconnectTimer: NodeJS.Timeout | undefined;
  let streams = 0;
  let updates = 0;
  let connected = false;
  let terminated = false;
  let closed = false;
  let lastError: MeshError | undefined;
  let terminalError: MeshError | undefined;
  const fold = spec.fold;
  let foldTurn: NodeJS.Immediate | undefined;
  /** The call paused while the fold has more than a message's worth of bytes queued. */
  let paused: ClientReadableStream<Buffer> | undefined;

  const publishError = (error: MeshError) => {
    lastError = error;
    debug("destination %s %s: %s", spec.kind, spec.target, error.message);
    if (errorChannel.hasSubscribers) errorChannel.publish({ kind: spec.kind, target: spec.target, error });
    for (const listener of [...errorListeners]) safeCall(listener, error);
  };

  const publishValue = (next: TValue) => {
    value = next;
    updates += 1;
    if (updateChannel.hasSubscribers)
      updateChannel.publish({ kind: spec.kind, target: spec.target, value: next });
    for (const waiter of [...waiters]) waiter.resolve(next);
    waiters.clear();
    for (const listener of [...updateListeners]) safeCall(listener, next);
  };

  const clearCallTimers = () => {
    for (const timer of callTimers) clearTimeout(timer);
    callTimers = [];
    if (idleTimer) clearTimeout(idleTimer);
    idleTimer = undefined;
  };

  const abandonCall = () => {
    const current = call;
    call = undefined;
    paused = undefined;
    connected = false;
    clearCallTimers();
    if (current) {
      current.removeAllListeners("data");
      current.removeAllListeners("status");
      // Keep an error listener: cancel() still emits CANCELLED, and an unhandled 'error' would throw.
      current.on("error", () => {});
      current.cancel();
    }
  };

  const stopFold = () => {
    fold?.clear();
    if (foldTurn) clearImmediate(foldTurn);
    foldTurn = undefined;
  };

  /** One slice of queued messages; reschedules itself while work remains. */
  const foldSlice = () => {
    foldTurn = undefined;
    if (!fold || closed || terminated) return;
    const step = fold.step({ deadline: performance.now() + (spec.sliceMs ?? 4) });
    if (step.value !== undefined && step.value !== value) publishValue(step.value);
    if (step.failure) {
      const error = MeshError.from(step.failure.error, MeshErrorCode.DESTINATION_INVALID_UPDATE);
      if (step.failure.stream === streams && call !== undefined) restart(error);
      else publishError(error);
    }
    if (fold.pending() && !closed && !terminated) {
      foldTurn = setImmediate(foldSlice);
      foldTurn.unref();
    }
    if (paused && fold.backlogBytes() <= spec.maxMessageBytes) {
      if (paused === call) paused.resume();
      paused = undefined;
    }
  };

  const terminate = (error: MeshError | undefined) => {
    terminated = true;
    stopFold();
    abandonCall();
    if (error) {
      terminalError = error;
      publishError(error);
      for (const waiter of [...waiters]) waiter.reject(error);
      waiters.clear();
    }
  };

  const scheduleReconnect = (cause: MeshError | undefined) => {
    if (closed || terminated || reconnectTimer) return;
    const delayMs = backoff.next();
    if (reconnectChannel.hasSubscribers)
      reconnectChannel.publish({
        kind: spec.kind,
        target: spec.target,
        delayMs,
        attempt: backoff.attempts,
        cause,
      });
    reconnectTimer = setTimeout(() => {
      reconnectTimer = undefined;
      open();
    }, delayMs);
    reconnectTimer.unref();
  };

  const restart = (error: MeshError | undefined) => {
    abandonCall();
    if (error) publishError(error);
    scheduleReconnect(error);
  };

  const armIdle = (current: ClientReadableStream<Buffer>) => {
    if (idleTimer) clearTimeout(idleTimer);
    idleTimer = setTimeout(() => {
      if (call !== current) return;
      restart(
        new DestinationError(
          MeshErrorCode.DESTINATION_UNREACHABLE,
          `${spec.kind} stream for ${spec.target} was idle for ${spec.timeouts.idleTimeoutMs} ms`,
        ),
      );
    }, spec.timeouts.idleTimeoutMs);
    idleTimer.unref();
  };

  function open(): void {
    if (closed || terminated || call) return;
    streams += 1;
    let fresh = true;
    let received = false;
    let current: ClientReadableStream<Buffer>;
    try {
      current = spec.client.makeServerStreamRequest<Uint8Array, Buffer>(
        spec.method,
        (request) => Buffer.from(request.buffer, request.byteOffset, request.byteLength),
        (bytes) => bytes,
        spec.request,
      );
    } catch (error) {
      // A closed channel throws synchronously; treat it like a failed stream.
      restart(MeshError.from(error, MeshErrorCode.DESTINATION_UNREACHABLE));
      return;
    }
    call = current;

    const initial = setTimeout(() => {
      if (call !== current || received) return;
      restart(
        new DestinationError(
          MeshErrorCode.DESTINATION_UNREACHABLE,
          `${spec.kind} stream for ${spec.target}: no message within ${spec.timeouts.initialTimeoutMs} ms`,
        ),
      );
    }, spec.timeouts.initialTimeoutMs);
    initial.unref();
    // Jittered so that many watches opened together do not all re-subscribe in the same instant.
    const lifetimeMs = spec.timeouts.maxLifetimeMs * (1 - 0.1 * spec.random());
    const lifetime = setTimeout(() => {
      if (call === current) restart(undefined);
    }, lifetimeMs);
    lifetime.unref();
    callTimers = [initial, lifetime];

    current.on("data", (bytes: Buffer) => {
      if (call !== current) return;
      if (!received) {
        received = true;
        connected = true;
        clearTimeout(initial);
        backoff.reset();
      }
      armIdle(current);
      if (fold) {
        try {
          fold.push(bytes, streams);
        } catch (error) {
          restart(MeshError.from(error, MeshErrorCode.DESTINATION_INVALID_UPDATE));
          return;
        }
        // Behind an unfinished message, this one waits its turn; otherwise its first slice runs now.
        if (foldTurn === undefined) foldSlice();
        if (call === current && fold.backlogBytes() > spec.maxMessageBytes && paused === undefined) {
          paused = current;
          current.pause();
        }
        return;
      }
      let next: TValue | undefined;
      try {
        const message = decodeMessage(spec.codec, bytes, {
          maxBytes: spec.maxMessageBytes,
          name: spec.messageName,
        });
        next = spec.apply(value, message, fresh);
      } catch (error) {
        restart(MeshError.from(error, MeshErrorCode.DESTINATION_INVALID_UPDATE));
        return;
      }
      if (next === undefined) return;
      fresh = false;
      if (next !== value) publishValue(next);
    });
    current.on("error", (_error: ServiceError) => {
      // The 'status' event carries the same information and always follows.
    });
    current.on("status", (status: StatusObject) => {
      if (call !== current) return;
      call = undefined;
      connected = false;
      clearCallTimers();
      const outcome = spec.onStatus({ code: status.code, details: status.details });
      if (outcome.kind === "terminal") {
        terminate(outcome.error);
      } else if (outcome.kind === "final") {
        terminate(undefined);
        publishValue(outcome.value);
      } else {
        // Linkerd re-subscribes after a clean end of stream too, with the same backoff.
        restart(status.code === GrpcCode.OK ? undefined : statusError(spec.kind, spec.target, status));
      }
    });
  }

  const closedError = () =>
    new MeshError(MeshErrorCode.CLOSED, `${spec.kind} watch for ${spec.target} is closed`);

  open();

  return {
    kind: spec.kind,
    target: spec.target,
    current: () => value,
    ready(options: ReadyOptions = {}) {
      if (options.signal?.aborted)
        return Promise.reject(MeshError.from(options.signal.reason, MeshErrorCode.CANCELED));
      if (value !== undefined) return Promise.resolve(value);
      if (terminalError) return Promise.reject(terminalError);
      if (closed) return Promise.reject(closedError());
      return new Promise<TValue>((resolve, reject) => {
        const { signal, timeoutMs } = options;
        let timer: NodeJS.Timeout | undefined;
        // Its timers and channel are unref'd; this wait holds the process itself.
        const release = keepProcessAlive();
        const cleanup = () => {
          release();
          waiters.delete(waiter);
          if (timer) clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
        };
        const waiter = {
          resolve: (v: TValue) => {
            cleanup();
            resolve(v);
          },
          reject: (e: MeshError) => {
            cleanup();
            reject(e);
          },
        };
        const onAbort = () => waiter.reject(MeshError.from(signal?.reason, MeshErrorCode.CANCELED));
        waiters.add(waiter);
        signal?.addEventListener("abort", onAbort, { once: true });
        if (timeoutMs !== undefined) {
          timer = setTimeout(() => {
            waiter.reject(
              new DestinationError(
                MeshErrorCode.DEADLINE,
                `no ${spec.kind} update for ${spec.target} within ${timeoutMs} ms`,
                lastError ? { cause: lastError } : {},
              ),
            );
          }, timeoutMs);
          timer.unref();
        }
      });
    },
    subscribe(onUpdate, onError) {
      if (onUpdate) updateListeners.add(onUpdate);
      if (onError) errorListeners.add(onError);
      return () => {
        if (onUpdate) updateListeners.delete(onUpdate);
        if (onError) errorListeners.delete(onError);
      };
    },
    state: () => ({
      connected,
      hasValue: value !== undefined,
      terminated,
      closed,
      updates,
      reconnects: Math.max(0, streams - 1),
      lastError,
    }),
    close() {
      if (closed) return;
      closed = true;
      if (reconnectTimer) clearTimeout(reconnectTimer);
      reconnectTimer = undefined;
      stopFold();
      abandonCall();
      const error = closedError();
      for (const waiter of [...waiters]) waiter.reject(error);
      waiters.clear();
      updateListeners.clear();
      errorListeners.clear();
    },
  };
}

/**
 * A caller's handle on a shared watch: its own listeners, its own `close()`. `release` runs once when
 * the handle closes, so the owner can end the stream with its last handle.
 */
export function createWatchHandle<T>(shared: SharedWatch<T>, release: () => void): Watch<T> {
  const unsubscribes = new Set<() => void>();
  const controller = new AbortController();
  const lifecycle = closeOnce(() => {
    for (const unsubscribe of unsubscribes) unsubscribe();
    unsubscribes.clear();
    controller.abort(
      new MeshError(MeshErrorCode.CLOSED, `${shared.kind} watch for ${shared.target} is closed`),
    );
    release();
  });
  const add = (unsubscribe: () => void) => {
    if (lifecycle.closed) {
      unsubscribe();
      return () => {};
    }
    unsubscribes.add(unsubscribe);
    return () => {
      unsubscribes.delete(unsubscribe);
      unsubscribe();
    };
  };
  return {
    kind: shared.kind,
    target: shared.target,
    current: () => shared.current(),
    ready(options: ReadyOptions = {}) {
      const signal = options.signal
        ? AbortSignal.any([controller.signal, options.signal])
        : controller.signal;
      return shared.ready(
        options.timeoutMs === undefined ? { signal } : { signal, timeoutMs: options.timeoutMs },
      );
    },
    onUpdate: (listener) => add(shared.subscribe(listener, undefined)),
    onError: (listener) => add(shared.subscribe(undefined, listener)),
    state: () => ({ ...shared.state(), closed: lifecycle.closed || shared.state().closed }),
    close: lifecycle.close,
    [Symbol.asyncDispose]: lifecycle.close,
  };
}
