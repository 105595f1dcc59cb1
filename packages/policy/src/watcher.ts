import { channel } from "node:diagnostics_channel";
import { debuglog } from "node:util";
import type { ClientReadableStream } from "@grpc/grpc-js";
import {
  type Backoff,
  type BackoffOptions,
  type Closable,
  ControlPlaneError,
  closeOnce,
  createBackoff,
  keepProcessAlive,
  MeshChannel,
  MeshError,
  MeshErrorCode,
  meshChannel,
  unrefTimeout,
} from "@inmesh/core";
import { DEFAULT_MAX_MESSAGE_BYTES, decodeMessage, inbound } from "@inmesh/proto/serving";
import { serverOverLimits, uncompiledRegexes } from "./compile.js";
import { type DefaultPolicyName, defaultServerPolicy } from "./defaults.js";
import { NOT_LOADED_POLICY } from "./evaluator.js";
import { compileServerPolicy } from "./policy.js";
import { compileRustRegex } from "./regex.js";
import type { CompiledServerPolicy, PolicyStatus } from "./types.js";

const debug = debuglog("mesh");

// gRPC status codes (numeric, so the evaluator does not need grpc-js at runtime).
const GRPC_INVALID_ARGUMENT = 3;
const GRPC_FAILED_PRECONDITION = 9;

export interface PolicyWatcherOptions {
  /**
   * A client for the policy controller, made by the caller (who owns its credentials: mTLS to the
   * controller, plaintext to loopback). The watcher opens one `WatchPort` stream per port on it and never
   * closes it.
   */
  client: inbound.InboundServerPoliciesClient;
  /** `PortSpec.workload`, e.g. `{"ns":"books","pod":"books-7d9c…"}` (sent verbatim). */
  workload: string;
  /** The inbound ports to watch (1–65535, no duplicates). */
  ports: readonly number[];
  /**
   * The built-in default policy (LINKERD2_PROXY_INBOUND_DEFAULT_POLICY). Served before the first update
   * only with `serveDefaultUntilLoaded`, and for ports that are not watched in that mode.
   * @default "all-unauthenticated"
   */
  defaultPolicy?: DefaultPolicyName;
  /** LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS, required by `cluster-*` (and `audit`) defaults. */
  clusterNetworks?: readonly string[];
  /** Ports with protocol detection disabled: their built-in default is the opaque variant. */
  opaquePorts?: readonly number[];
  /** Detection timeout of the built-in defaults. @default 10000 */
  detectTimeoutMs?: number;
  /** How long `waitForPolicy()` holds a request for a port's first policy. @default 1000 */
  initialWaitMs?: number;
  /**
   * Linkerd's behaviour: serve the built-in default until the controller answers. Off by default: a port
   * without a policy refuses everything (reason `not-loaded`) after the bounded initial wait.
   * @default false
   */
  serveDefaultUntilLoaded?: boolean;
  /** Reconnect backoff. @default { minMs: 100, maxMs: 60000, jitterRatio: 0.1 } */
  backoff?: BackoffOptions;
  /** Largest accepted `inbound.Server` message. @default 4 MiB */
  maxMessageBytes?: number;
}

/** One port's watch, as `state()` reports it. */
export interface PortPolicyState {
  readonly port: number;
  /** Status of the policy currently served. */
  readonly status: PolicyStatus;
  /** The controller has sent at least one update. */
  readonly loaded: boolean;
  /** A stream to the controller is open and has answered. */
  readonly connected: boolean;
  /** False once the controller refused the watch with InvalidArgument/FailedPrecondition. */
  readonly retrying: boolean;
  /** `Date.now()` of the last update. */
  readonly lastUpdateMs: number | undefined;
  readonly updates: number;
  readonly reconnects: number;
  /** Why the current policy is invalid. */
  readonly invalidReason: string | undefined;
  readonly lastError: string | undefined;
}

export type PolicyWatchEvent =
  | {
      readonly type: "updated";
      readonly port: number;
      readonly policy: CompiledServerPolicy;
      readonly previous: CompiledServerPolicy;
    }
  | { readonly type: "error"; readonly port: number; readonly error: MeshError; readonly fatal: boolean };

export interface WaitForPolicyOptions {
  signal?: AbortSignal;
  /** @default the watcher's initialWaitMs */
  timeoutMs?: number;
}

export interface PolicyWatcher extends Closable {
  readonly ports: readonly number[];
  readonly initialWaitMs: number;
  /**
   * The policy to apply right now, synchronously: the controller's latest (the last good one stays while
   * it is unreachable; an update that does not convert is the invalid policy). Before the first update:
   * the not-loaded policy (denies everything) in strict mode, the built-in default in Linkerd mode. Ports
   * that are not watched get the same fallback.
   */
  policyFor(port: number): CompiledServerPolicy;
  /**
   * Resolves with the port's policy once the controller has answered, or with the current fallback after
   * `timeoutMs` (so a held request is then refused with `not-loaded`). Resolves at once when loaded, in
   * Linkerd mode, or when the controller refused the watch. Rejects only if `signal` aborts.
   */
  waitForPolicy(port: number, options?: WaitForPolicyOptions): Promise<CompiledServerPolicy>;
  /**
   * Resolves when every watched port has received a policy from the controller. Keeps the process
   * alive while it waits.
   */
  ready(options?: { signal?: AbortSignal }): Promise<void>;
  state(): readonly PortPolicyState[];
  /** Listens for updates and stream errors (also published on `mesh:policy:updated` / `mesh:policy:error`). */
  subscribe(listener: (event: PolicyWatchEvent) => void): () => void;
}

type Decoded =
  | { readonly server: inbound.Server; readonly error?: undefined }
  | { readonly error: MeshError };

interface PortWatch {
  readonly port: number;
  readonly backoff: Backoff;
  policy: CompiledServerPolicy;
  loaded: boolean;
  connected: boolean;
  retrying: boolean;
  lastUpdateMs: number | undefined;
  updates: number;
  reconnects: number;
  lastError: string | undefined;
  call: ClientReadableStream<Decoded> | undefined;
  /** Bumped whenever a stream is abandoned, so late events from it are ignored. */
  generation: number;
  timer: NodeJS.Timeout | undefined;
  readonly waiters: Set<(policy: CompiledServerPolicy) => void>;
  /** A received policy whose new regexes are being compiled a batch per turn before it applies. */
  warming: { server: inbound.Server; patterns: readonly string[]; next: number } | undefined;
}

/**
 * New regexes compiled per event-loop turn before a policy applies. RE2 compiles a pattern in about
 * 0.05–0.15 ms, so a policy with 1,024 new regexes would otherwise hold the loop for 100 ms or more.
 */
const REGEX_BATCH = 32;

const updatedChannel = channel("mesh:policy:updated");
const errorChannel = channel("mesh:policy:error");
const changedChannel = meshChannel(MeshChannel.policyChanged);

function invalidArg(message: string): MeshError {
  return new MeshError(MeshErrorCode.INVALID_ARG, message);
}

interface ResolvedOptions {
  readonly client: inbound.InboundServerPoliciesClient;
  readonly workload: string;
  readonly ports: readonly number[];
  readonly opaquePorts: ReadonlySet<number>;
  readonly initialWaitMs: number;
  readonly serveDefaultUntilLoaded: boolean;
  readonly maxMessageBytes: number;
  readonly backoff: BackoffOptions;
  readonly makeDefault: (port: number | undefined, opaque: boolean) => CompiledServerPolicy;
}

function isPort(value: unknown): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= 1 && value <= 65535;
}

function resolveOptions(options: PolicyWatcherOptions): ResolvedOptions {
  if (typeof options !== "object" || options === null)
    throw invalidArg("createPolicyWatcher: options are required");
  const client = options.client as Partial<inbound.InboundServerPoliciesClient> | undefined;
  if (typeof client?.makeServerStreamRequest !== "function") {
    throw invalidArg("createPolicyWatcher: client must be an inbound.InboundServerPoliciesClient");
  }
  if (typeof options.workload !== "string" || options.workload.trim() === "") {
    throw invalidArg("createPolicyWatcher: workload must be a non-empty string");
  }
  if (!Array.isArray(options.ports) || options.ports.length === 0) {
    throw invalidArg("createPolicyWatcher: ports must list at least one port");
  }
  for (const port of options.ports) {
    if (!isPort(port)) throw invalidArg(`createPolicyWatcher: invalid port ${String(port)}`);
  }
  if (new Set(options.ports).size !== options.ports.length)
    throw invalidArg("createPolicyWatcher: duplicate ports");
  for (const port of options.opaquePorts ?? []) {
    if (!isPort(port)) throw invalidArg(`createPolicyWatcher: invalid opaque port ${String(port)}`);
  }
  const initialWaitMs = options.initialWaitMs ?? 1000;
  if (!(initialWaitMs >= 0) || !Number.isFinite(initialWaitMs)) {
    throw invalidArg(`createPolicyWatcher: invalid initialWaitMs ${initialWaitMs}`);
  }
  const maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  if (!Number.isInteger(maxMessageBytes) || maxMessageBytes <= 0) {
    throw invalidArg(`createPolicyWatcher: invalid maxMessageBytes ${maxMessageBytes}`);
  }
  const backoff = options.backoff ?? {};
  createBackoff(backoff); // validates
  const defaultName = options.defaultPolicy ?? "all-unauthenticated";
  const defaultOptions = {
    clusterNetworks: options.clusterNetworks ?? [],
    ...(options.detectTimeoutMs === undefined ? {} : { detectTimeoutMs: options.detectTimeoutMs }),
  };
  // Built once here so a bad name or missing cluster networks fails construction, not the first request.
  const shared = {
    detect: defaultServerPolicy(defaultName, defaultOptions),
    opaque: defaultServerPolicy(defaultName, { ...defaultOptions, opaque: true }),
  };
  return {
    client: options.client,
    workload: options.workload,
    ports: Object.freeze([...options.ports]),
    opaquePorts: new Set(options.opaquePorts ?? []),
    initialWaitMs,
    serveDefaultUntilLoaded: options.serveDefaultUntilLoaded === true,
    maxMessageBytes,
    backoff,
    makeDefault: (port, opaque) =>
      port === undefined
        ? opaque
          ? shared.opaque
          : shared.detect
        : defaultServerPolicy(defaultName, { ...defaultOptions, opaque, port }),
  };
}

/**
 * Watches the inbound policy of each served port on the policy controller (`WatchPort`), the way
 * linkerd2-proxy does: one stream per port, reconnecting with jittered exponential backoff (single-flight
 * per port), keeping the last good policy while the controller is unreachable, and stopping for good on
 * InvalidArgument/FailedPrecondition.
 */
export function createPolicyWatcher(options: PolicyWatcherOptions): PolicyWatcher {
  const resolved = resolveOptions(options);
  const { client, workload, maxMessageBytes, serveDefaultUntilLoaded, initialWaitMs } = resolved;
  const listeners = new Set<(event: PolicyWatchEvent) => void>();
  const readyWaiters = new Set<{ resolve: () => void; reject: (error: unknown) => void }>();
  const watches = new Map<number, PortWatch>();
  let closed = false;

  const fallback = (port: number | undefined): CompiledServerPolicy =>
    serveDefaultUntilLoaded
      ? resolved.makeDefault(port, port !== undefined && resolved.opaquePorts.has(port))
      : NOT_LOADED_POLICY;
  const unwatchedFallback = {
    detect: serveDefaultUntilLoaded ? resolved.makeDefault(undefined, false) : NOT_LOADED_POLICY,
    opaque: serveDefaultUntilLoaded ? resolved.makeDefault(undefined, true) : NOT_LOADED_POLICY,
  };

  const deserialize = (bytes: Buffer): Decoded => {
    try {
      return {
        server: decodeMessage(inbound.Server, bytes, { maxBytes: maxMessageBytes, name: "inbound.Server" }),
      };
    } catch (error) {
      return { error: MeshError.from(error, MeshErrorCode.PROTO_DECODE) };
    }
  };
  const serialize = (spec: inbound.PortSpec): Buffer => Buffer.from(inbound.PortSpec.encode(spec).finish());

  function emit(event: PolicyWatchEvent): void {
    for (const listener of listeners) {
      try {
        listener(event);
      } catch (error) {
        debug("policy: listener threw: %s", (error as Error)?.message);
      }
    }
    if (event.type === "updated") {
      if (updatedChannel.hasSubscribers) updatedChannel.publish(event);
      if (changedChannel.hasSubscribers)
        changedChannel.publish({ port: event.port, status: event.policy.status });
    } else if (errorChannel.hasSubscribers) {
      errorChannel.publish(event);
    }
  }

  function settleReady(): void {
    if (readyWaiters.size === 0) return;
    const watchList = [...watches.values()];
    if (watchList.every((w) => w.loaded)) {
      for (const waiter of readyWaiters) waiter.resolve();
      readyWaiters.clear();
      return;
    }
    const refused = watchList.find((w) => !w.loaded && !w.retrying);
    if (refused !== undefined) {
      const error = new ControlPlaneError(
        MeshErrorCode.CP_REJECTED,
        `policy controller refused to watch port ${refused.port}: ${refused.lastError ?? "rejected"}`,
        { details: { port: refused.port } },
      );
      for (const waiter of readyWaiters) waiter.reject(error);
      readyWaiters.clear();
    }
  }

  function release(watch: PortWatch): void {
    for (const waiter of watch.waiters) waiter(watch.policy);
    watch.waiters.clear();
  }

  function abandon(watch: PortWatch): void {
    watch.generation += 1;
    watch.connected = false;
    const call = watch.call;
    watch.call = undefined;
    call?.cancel();
  }

  function scheduleReconnect(watch: PortWatch): void {
    if (closed || !watch.retrying || watch.timer !== undefined) return;
    const delayMs = watch.backoff.next();
    debug("policy: port %d reconnecting in %d ms", watch.port, Math.round(delayMs));
    watch.timer = unrefTimeout(() => {
      watch.timer = undefined;
      if (closed) return;
      watch.reconnects += 1;
      start(watch);
    }, delayMs);
  }

  function onStreamEnded(
    watch: PortWatch,
    generation: number,
    error: (Error & { code?: number }) | undefined,
  ): void {
    if (generation !== watch.generation || closed) return;
    watch.generation += 1;
    watch.call = undefined;
    watch.connected = false;
    const code = error?.code;
    const message = error === undefined ? "policy stream ended" : error.message;
    watch.lastError = message;
    if (code === GRPC_INVALID_ARGUMENT || code === GRPC_FAILED_PRECONDITION) {
      watch.retrying = false;
      const meshError = new ControlPlaneError(
        MeshErrorCode.CP_REJECTED,
        `policy controller refused WatchPort for port ${watch.port}: ${message}; not retrying, keeping the ${
          watch.loaded ? "last policy" : "fallback policy"
        }`,
        { cause: error, details: { port: watch.port, grpcCode: code } },
      );
      debug("policy: %s", meshError.message);
      process.emitWarning(meshError.message, { code: "MESH_POLICY_WATCH_REFUSED" });
      release(watch);
      emit({ type: "error", port: watch.port, error: meshError, fatal: true });
      settleReady();
      return;
    }
    const meshError = new ControlPlaneError(
      MeshErrorCode.CP_UNAVAILABLE,
      `policy stream for port ${watch.port} failed: ${message}`,
      { cause: error, details: { port: watch.port, ...(code === undefined ? {} : { grpcCode: code }) } },
    );
    debug("policy: %s", meshError.message);
    emit({ type: "error", port: watch.port, error: meshError, fatal: false });
    scheduleReconnect(watch);
  }

  function onMessage(watch: PortWatch, generation: number, decoded: Decoded): void {
    if (generation !== watch.generation || closed) return;
    watch.connected = true;
    if (decoded.error !== undefined) {
      // Undecodable bytes are a broken stream (as tonic reports them): keep the last policy, reconnect.
      watch.lastError = decoded.error.message;
      abandon(watch);
      debug("policy: port %d: %s", watch.port, decoded.error.message);
      emit({ type: "error", port: watch.port, error: decoded.error, fatal: false });
      scheduleReconnect(watch);
      return;
    }
    const over = serverOverLimits(decoded.server);
    if (over !== undefined) {
      // Refused whole and before any compilation: the last good policy stays in force. Not a broken
      // stream, so no reconnect: the controller's next update may fit again.
      watch.lastError = `policy too large: ${over}`;
      debug("policy: port %d: %s", watch.port, watch.lastError);
      emit({
        type: "error",
        port: watch.port,
        error: new MeshError(
          MeshErrorCode.POLICY_INVALID,
          `policy update for port ${watch.port} refused, the last policy stays: too large: ${over}`,
          { details: { port: watch.port } },
        ),
        fatal: false,
      });
      return;
    }
    const patterns = uncompiledRegexes(decoded.server);
    // While one policy is warming, a newer one replaces it there (each message is a full snapshot), so
    // policies never apply out of order.
    if (watch.warming !== undefined || patterns.length > REGEX_BATCH) {
      warmThenApply(watch, decoded.server, patterns);
      return;
    }
    applyServer(watch, decoded.server);
  }

  function warmThenApply(watch: PortWatch, server: inbound.Server, patterns: readonly string[]): void {
    const running = watch.warming !== undefined;
    watch.warming = { server, patterns, next: 0 };
    if (running) return;
    const step = () => {
      const job = watch.warming;
      if (job === undefined || closed) {
        watch.warming = undefined;
        return;
      }
      const end = Math.min(job.next + REGEX_BATCH, job.patterns.length);
      for (; job.next < end; job.next += 1) compileRustRegex(job.patterns[job.next] as string);
      if (job.next < job.patterns.length) {
        setImmediate(step);
        return;
      }
      watch.warming = undefined;
      applyServer(watch, job.server);
    };
    setImmediate(step);
  }

  function applyServer(watch: PortWatch, server: inbound.Server): void {
    const previous = watch.policy;
    const policy = compileServerPolicy(server, { port: watch.port });
    watch.policy = policy;
    watch.loaded = true;
    watch.updates += 1;
    watch.lastUpdateMs = Date.now();
    watch.backoff.reset();
    if (policy.status === "invalid") {
      watch.lastError = policy.invalidReason;
      emit({
        type: "error",
        port: watch.port,
        error: new MeshError(
          MeshErrorCode.POLICY_INVALID,
          `invalid policy for port ${watch.port}: ${policy.invalidReason}`,
          {
            details: { port: watch.port },
          },
        ),
        fatal: false,
      });
    }
    release(watch);
    emit({ type: "updated", port: watch.port, policy, previous });
    settleReady();
  }

  function start(watch: PortWatch): void {
    if (closed) return;
    watch.generation += 1;
    const generation = watch.generation;
    let call: ClientReadableStream<Decoded>;
    try {
      call = client.makeServerStreamRequest<inbound.PortSpec, Decoded>(
        inbound.InboundServerPoliciesService.watchPort.path,
        serialize,
        deserialize,
        { workload, port: watch.port },
        {},
      );
    } catch (error) {
      watch.generation += 1;
      onStreamEnded(watch, watch.generation, error as Error);
      return;
    }
    watch.call = call;
    call.on("metadata", () => {
      if (generation === watch.generation) watch.connected = true;
    });
    call.on("data", (decoded: Decoded) => onMessage(watch, generation, decoded));
    call.on("error", (error: Error & { code?: number }) => onStreamEnded(watch, generation, error));
    call.on("end", () => onStreamEnded(watch, generation, undefined));
  }

  for (const port of resolved.ports) {
    const watch: PortWatch = {
      port,
      backoff: createBackoff(resolved.backoff),
      policy: fallback(port),
      loaded: false,
      connected: false,
      retrying: true,
      lastUpdateMs: undefined,
      updates: 0,
      reconnects: 0,
      lastError: undefined,
      call: undefined,
      generation: 0,
      timer: undefined,
      waiters: new Set(),
      warming: undefined,
    };
    watches.set(port, watch);
  }
  for (const watch of watches.values()) start(watch);

  const lifecycle = closeOnce(() => {
    closed = true;
    for (const watch of watches.values()) {
      if (watch.timer !== undefined) clearTimeout(watch.timer);
      watch.timer = undefined;
      abandon(watch);
      release(watch);
    }
    const error = new MeshError(MeshErrorCode.CLOSED, "policy watcher closed");
    for (const waiter of readyWaiters) waiter.reject(error);
    readyWaiters.clear();
    listeners.clear();
  });

  const policyFor = (port: number): CompiledServerPolicy => {
    const watch = watches.get(port);
    if (watch !== undefined) return watch.policy;
    return resolved.opaquePorts.has(port) ? unwatchedFallback.opaque : unwatchedFallback.detect;
  };

  return {
    ports: resolved.ports,
    initialWaitMs,
    policyFor,
    waitForPolicy(port: number, waitOptions: WaitForPolicyOptions = {}): Promise<CompiledServerPolicy> {
      const { signal } = waitOptions;
      if (signal?.aborted) return Promise.reject(MeshError.from(signal.reason, MeshErrorCode.CANCELED));
      const watch = watches.get(port);
      if (watch === undefined) return Promise.resolve(policyFor(port));
      if (watch.loaded || serveDefaultUntilLoaded || !watch.retrying || closed)
        return Promise.resolve(watch.policy);
      const timeoutMs = waitOptions.timeoutMs ?? initialWaitMs;
      if (!(timeoutMs >= 0))
        return Promise.reject(invalidArg(`waitForPolicy: invalid timeoutMs ${timeoutMs}`));
      return new Promise((resolve, reject) => {
        const finish = (policy: CompiledServerPolicy) => {
          clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
          watch.waiters.delete(finish);
          resolve(policy);
        };
        const onAbort = () => {
          clearTimeout(timer);
          watch.waiters.delete(finish);
          reject(MeshError.from(signal?.reason, MeshErrorCode.CANCELED));
        };
        const timer = unrefTimeout(() => finish(watch.policy), timeoutMs);
        watch.waiters.add(finish);
        signal?.addEventListener("abort", onAbort, { once: true });
      });
    },
    ready(readyOptions: { signal?: AbortSignal } = {}): Promise<void> {
      const { signal } = readyOptions;
      if (signal?.aborted) return Promise.reject(MeshError.from(signal.reason, MeshErrorCode.CANCELED));
      if (closed) return Promise.reject(new MeshError(MeshErrorCode.CLOSED, "policy watcher closed"));
      return new Promise<void>((resolve, reject) => {
        // Its timers and channel are unref'd; this wait holds the process itself.
        const release = keepProcessAlive();
        const onAbort = () => {
          release();
          readyWaiters.delete(waiter);
          reject(MeshError.from(signal?.reason, MeshErrorCode.CANCELED));
        };
        const waiter = {
          resolve: () => {
            release();
            signal?.removeEventListener("abort", onAbort);
            resolve();
          },
          reject: (error: unknown) => {
            release();
            signal?.removeEventListener("abort", onAbort);
            reject(error);
          },
        };
        readyWaiters.add(waiter);
        signal?.addEventListener("abort", onAbort, { once: true });
        settleReady();
      });
    },
    state(): readonly PortPolicyState[] {
      return [...watches.values()].map((watch) =>
        Object.freeze({
          port: watch.port,
          status: watch.policy.status,
          loaded: watch.loaded,
          connected: watch.connected,
          retrying: watch.retrying,
          lastUpdateMs: watch.lastUpdateMs,
          updates: watch.updates,
          reconnects: watch.reconnects,
          invalidReason: watch.policy.invalidReason,
          lastError: watch.lastError,
        }),
      );
    },
    subscribe(listener: (event: PolicyWatchEvent) => void): () => void {
      listeners.add(listener);
      return () => {
        listeners.delete(listener);
      };
    },
    close: lifecycle.close,
    [Symbol.asyncDispose]: lifecycle[Symbol.asyncDispose],
  };
}
