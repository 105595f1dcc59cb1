import { isIP } from "node:net";
import { debuglog } from "node:util";
import {
  type CallCredentials,
  type ChannelCredentials,
  type ChannelInterface,
  type ChannelOptions,
  connectivityState as ConnectivityState,
  type experimental,
  Channel as GrpcChannel,
  credentials as grpcCredentials,
  type InterceptingListener,
  Metadata,
  status as Status,
  type StatusObject,
} from "@grpc/grpc-js";
import {
  ConfigError,
  DestinationError,
  isDnsName,
  MeshChannel,
  MeshError,
  MeshErrorCode,
  meshChannel,
  type OutboundAttemptMessage,
  type OutboundCallMessage,
  secureRandom,
} from "@inmesh/core";
import {
  type Balancer,
  type Pick as BalancerPick,
  chooseRoutingModel,
  createBalancer,
  createRetryBudget,
  DEFAULT_GRPC_FAILURE_CODES,
  type Discovery,
  type Endpoint,
  type EndpointSet,
  endpointSetChanges,
  type OutboundPolicyState,
  type ProfileState,
  type RequestPolicy,
  type RetryBudget,
  selectRoute,
  type Watch,
} from "@inmesh/destination";
import type { IdentityProvider } from "@inmesh/identity";
import { createMeshChannelCredentials } from "./credentials.js";
import { sourceAddressTarget } from "./local-address.js";

const debug = debuglog("mesh");
const attemptStart = meshChannel(MeshChannel.outboundAttemptStart);
const attemptEnd = meshChannel(MeshChannel.outboundAttemptEnd);

type CallStream = experimental.CallStream;
type CreateCallArgs = Parameters<ChannelInterface["createCall"]>;
type ChannelRef = ReturnType<ChannelInterface["getChannelzRef"]>;

/** The discovery surface the channel uses; `createDiscovery()` provides it. */
export type MeshGrpcDiscovery = Pick<Discovery, "watchEndpoints"> &
  Partial<Pick<Discovery, "watchProfile" | "watchOutboundPolicy">>;

export interface MeshGrpcChannelOptions {
  /** The logical target, `<svc>.<ns>.svc.<cluster-domain>:<port>` (also sent as `:authority`). */
  target: string;
  /** Our workload identity; required to reach meshed endpoints. */
  identity?: IdentityProvider;
  /** Destination watches (`createDiscovery` from `@inmesh/destination`). */
  discovery: MeshGrpcDiscovery;
  /** grpc-js options for the per-endpoint channels (keepalive, message sizes…). */
  channelOptions?: ChannelOptions;
  /** Reach endpoints that advertise `opaque_transport` through their inbound port with a transport header. @default true */
  useTransportHeader?: boolean;
  /** Watch ServiceProfiles and OutboundPolicies for routes and retries. @default true */
  useRoutes?: boolean;
  /** Longest wait for a ready endpoint before a call fails with UNAVAILABLE (Linkerd's fail-fast). @default 3000 */
  failFastTimeoutMs?: number;
  /**
   * Source address of connections to endpoints (the mesh's outbound address, as for the HTTP
   * dispatcher): where several workloads share a host, calls from 127.0.0.1 would pass any policy.
   * @default the operating system's choice
   */
  localAddress?: string;
}

/** A grpc-js Channel over Linkerd discovery; give it to a client as `channelOverride`. */
export interface MeshGrpcChannel extends ChannelInterface, AsyncDisposable {
  /** `host:port` of the logical target. */
  readonly authority: string;
  /** The retry budget shared by every call to this target (0.2 / 10 per s / 10 s unless a profile says otherwise). */
  readonly budget: RetryBudget;
  /** The route policy of a method (`/pkg.Service/Method`), from the profile or GRPCRoute; undefined when no route matches. */
  requestPolicy(path: string, metadata?: Metadata): RequestPolicy | undefined;
  /** Resolves once discovery has answered (endpoints, and routes within the same bound). */
  ready(options?: { signal?: AbortSignal; timeoutMs?: number }): Promise<void>;
  /** Endpoints currently known. */
  endpointCount(): number;
  close(): void;
}

/** Shares the logical call and attempt number with the channel while an interceptor creates an attempt. */
export interface AttemptContext {
  readonly call: OutboundCallMessage | undefined;
  readonly attempt: number;
}

let ambientAttempt: AttemptContext | undefined;

/** Runs `create` (which must reach `createCall` synchronously, as grpc-js's `nextCall` does) with `context`. */
export function withAttemptContext<T>(context: AttemptContext, create: () => T): T {
  const previous = ambientAttempt;
  ambientAttempt = context;
  try {
    return create();
  } finally {
    ambientAttempt = previous;
  }
}

/** Marks a status the mesh produced (not the server), with its MESH_ERR code. */
export const MESH_ERROR_METADATA_KEY = "inmesh-error-code";

function meshStatus(code: Status, error: MeshError): StatusObject {
  const metadata = new Metadata();
  metadata.set(MESH_ERROR_METADATA_KEY, error.code);
  return { code, details: `[${error.code}] ${error.message}`, metadata };
}

const CONNECT_BACKOFF_MIN_MS = 100;
const CONNECT_BACKOFF_MAX_MS = 500;

interface EndpointChannel {
  readonly key: string;
  readonly endpoint: Endpoint;
  readonly channel: GrpcChannel;
  readonly identity: string | undefined;
  inflight: number;
  removed: boolean;
}

interface Lease {
  readonly pick: BalancerPick<Endpoint>;
  readonly entry: EndpointChannel;
}

function channelKey(endpoint: Endpoint, useTransportHeader: boolean): string {
  return [
    endpoint.address,
    endpoint.tlsIdentity?.name ?? "",
    endpoint.tlsIdentity?.serverName ?? "",
    useTransportHeader ? (endpoint.opaqueTransportPort ?? "") : "",
  ].join("|");
}

function parseAuthority(target: string): string {
  const text = target
    .trim()
    .toLowerCase()
    .replace(/^(?:mesh|linkerd|dns):(?:\/\/\/?)?/, "");
  const match = /^([a-z0-9.-]+?)\.?(?::(\d{1,5}))?$/.exec(text);
  const host = match?.[1];
  const port = match?.[2] === undefined ? 80 : Number(match[2]);
  if (!host || !isDnsName(host) || !/\.svc\./.test(host) || !(port >= 1 && port <= 65535)) {
    throw new ConfigError(
      `target ${JSON.stringify(target)} is not a cluster service name like books.default.svc.cluster.local:8080`,
      { details: { variable: "target" } },
    );
  }
  return `${host}:${port}`;
}

/**
 * Creates a grpc-js Channel that resolves its target through Linkerd discovery and picks an endpoint per
 * call with the peak-EWMA P2C balancer. Each endpoint gets its own grpc-js channel with mesh credentials
 * for that endpoint's identity (SNI = identity, no ALPN, transport header when advertised), or plaintext
 * for unmeshed endpoints. Endpoints removed by discovery finish their calls, then close.
 *
 * Give it to a generated client as `channelOverride` (with `createMeshClientInterceptors` for retries).
 * grpc-js resolvers and load-balancer policies were not used: a custom LB policy must manage subchannel
 * state and pickers through `experimental` APIs, while a channel override only needs `createCall`.
 *
 * @example
 * const channel = createMeshGrpcChannel({ target: "books.default.svc.cluster.local:8080", identity, discovery });
 * const client = new BooksClient(channel.authority, grpc.credentials.createInsecure(), createMeshClientOptions(channel));
 */
export function createMeshGrpcChannel(options: MeshGrpcChannelOptions): MeshGrpcChannel {
  if (!options?.discovery || typeof options.discovery.watchEndpoints !== "function") {
    throw new ConfigError("createMeshGrpcChannel needs `discovery`", { details: { variable: "discovery" } });
  }
  const authority = parseAuthority(options.target);
  const failFastTimeoutMs = options.failFastTimeoutMs ?? 3000;
  if (!(Number.isFinite(failFastTimeoutMs) && failFastTimeoutMs > 0)) {
    throw new ConfigError("failFastTimeoutMs must be a positive number", {
      details: { variable: "failFastTimeoutMs" },
    });
  }
  const useTransportHeader = options.useTransportHeader ?? true;
  const useRoutes = options.useRoutes ?? true;
  if (options.localAddress !== undefined && isIP(options.localAddress) === 0) {
    throw new MeshError(
      MeshErrorCode.INVALID_CONFIG,
      `localAddress must be an IP address, got ${JSON.stringify(options.localAddress)}`,
    );
  }
  const identity = options.identity;
  const discovery = options.discovery;

  const watch: Watch<EndpointSet> = discovery.watchEndpoints(authority);
  const optional = <T>(open: () => Watch<T> | undefined): Watch<T> | undefined => {
    try {
      return open();
    } catch (error) {
      debug("grpc channel %s: route watch unavailable: %s", authority, (error as Error)?.message);
      return undefined;
    }
  };
  const profile = useRoutes ? optional<ProfileState>(() => discovery.watchProfile?.(authority)) : undefined;
  const policy = useRoutes
    ? optional<OutboundPolicyState>(() => discovery.watchOutboundPolicy?.(authority))
    : undefined;
  const balancer: Balancer<Endpoint> = createBalancer<Endpoint>();
  const budget = createRetryBudget();
  const channels = new Map<string, EndpointChannel>();
  const excluded = new Map<string, { untilMs: number; failures: number }>();
  const waiters = new Set<() => void>();
  let current: EndpointSet | undefined;
  let exclusionTimer: NodeJS.Timeout | undefined;
  let closed = false;
  let callNumber = 0;

  const closeEntry = (entry: EndpointChannel) => {
    channels.delete(entry.key);
    entry.channel.close();
  };

  const wakeWaiters = () => {
    const wake = [...waiters];
    waiters.clear();
    for (const fn of wake) fn();
  };

  const rebalance = () => {
    if (!current) return;
    const now = performance.now();
    let backingOff = false;
    for (const out of excluded.values()) if (out.untilMs > now) backingOff = true;
    if (!backingOff) {
      // The balancer takes the set itself, and with it the update's changes, not a rebuilt list.
      if (exclusionTimer) clearTimeout(exclusionTimer);
      exclusionTimer = undefined;
      balancer.update(current);
      if (current.size > 0) wakeWaiters();
      return;
    }
    let nextExpiry: number | undefined;
    const ready: Endpoint[] = [];
    for (const endpoint of current.endpoints) {
      const out = excluded.get(endpoint.address);
      if (out && out.untilMs > now) {
        nextExpiry = nextExpiry === undefined ? out.untilMs : Math.min(nextExpiry, out.untilMs);
        continue;
      }
      ready.push(endpoint);
    }
    balancer.update(ready);
    if (exclusionTimer) clearTimeout(exclusionTimer);
    exclusionTimer = undefined;
    if (nextExpiry !== undefined) {
      exclusionTimer = setTimeout(rebalance, Math.max(1, nextExpiry - now));
      exclusionTimer.unref();
    }
    if (ready.length > 0) wakeWaiters();
  };

  const retire = (entry: EndpointChannel) => {
    entry.removed = true;
    // Calls in flight finish on the old channel; it closes with the last of them.
    if (entry.inflight === 0) closeEntry(entry);
  };

  /** Retires the channel of `old` unless `next` (its replacement, if any) keeps its parameters. */
  const retireChanged = (old: Endpoint | undefined, next: Endpoint | undefined) => {
    if (old === undefined) return;
    const key = channelKey(old, useTransportHeader);
    if (next !== undefined && channelKey(next, useTransportHeader) === key) return;
    const entry = channels.get(key);
    if (entry) retire(entry);
  };

  const apply = (set: EndpointSet) => {
    if (closed) return;
    const previous = current;
    current = set;
    // Usually one update's changes: only the endpoints it touched can have lost their channel.
    const changes = endpointSetChanges(previous, set);
    if (changes && previous) {
      for (const address of changes.removed) retireChanged(previous.get(address), undefined);
      for (const endpoint of changes.upserted) retireChanged(previous.get(endpoint.address), endpoint);
    } else if (channels.size > 0) {
      const live = new Set(set.endpoints.map((endpoint) => channelKey(endpoint, useTransportHeader)));
      for (const entry of [...channels.values()]) if (!live.has(entry.key)) retire(entry);
    }
    for (const address of excluded.keys()) if (!set.get(address)) excluded.delete(address);
    rebalance();
  };
  const unsubscribe = watch.onUpdate(apply);
  const initial = watch.current();
  if (initial) apply(initial);

  const channelFor = (endpoint: Endpoint): EndpointChannel => {
    const key = channelKey(endpoint, useTransportHeader);
    let entry = channels.get(key);
    if (entry) return entry;
    const tls = endpoint.tlsIdentity;
    const viaTransportHeader =
      tls !== undefined && useTransportHeader && endpoint.opaqueTransportPort !== undefined;
    const host = endpoint.host.includes(":") ? `[${endpoint.host}]` : endpoint.host;
    const port = viaTransportHeader ? (endpoint.opaqueTransportPort as number) : endpoint.port;
    const target =
      options.localAddress !== undefined
        ? sourceAddressTarget(options.localAddress, endpoint.host, port)
        : `${endpoint.host.includes(":") ? "ipv6" : "ipv4"}:${host}:${port}`;
    let credentials: ChannelCredentials;
    if (tls) {
      if (!identity)
        throw new DestinationError(
          MeshErrorCode.INVALID_CONFIG,
          `endpoint ${endpoint.address} requires mTLS as ${tls.name}, but the channel has no identity`,
        );
      credentials = createMeshChannelCredentials({
        identity,
        expectedServerIdentity: tls.name,
        serverName: tls.serverName,
        ...(viaTransportHeader ? { transportHeaderPort: endpoint.port } : {}),
      });
    } else {
      credentials = grpcCredentials.createInsecure();
    }
    const http2 = endpoint.http2;
    const channelOptions: ChannelOptions = {
      ...(http2?.keepAliveIntervalMs !== undefined
        ? { "grpc.keepalive_time_ms": http2.keepAliveIntervalMs }
        : {}),
      ...(http2?.keepAliveTimeoutMs !== undefined
        ? { "grpc.keepalive_timeout_ms": http2.keepAliveTimeoutMs }
        : {}),
      ...(http2?.keepAliveWhileIdle ? { "grpc.keepalive_permit_without_calls": 1 } : {}),
      ...options.channelOptions,
      "grpc.default_authority": authority,
      // Each endpoint channel owns its connection: a shared subchannel would outlive the endpoint.
      "grpc.use_local_subchannel_pool": 1,
    };
    entry = {
      key,
      endpoint,
      channel: new GrpcChannel(target, credentials, channelOptions),
      identity: tls?.name,
      inflight: 0,
      removed: false,
    };
    channels.set(key, entry);
    return entry;
  };

  const lease = (): Lease | undefined => {
    const pick = balancer.tryPick();
    if (!pick) return undefined;
    return { pick, entry: channelFor(pick.endpoint) };
  };

  const changed = (signal: AbortSignal): Promise<void> =>
    new Promise((resolve, reject) => {
      if (signal.aborted) {
        reject(signal.reason);
        return;
      }
      const done = () => {
        signal.removeEventListener("abort", onAbort);
        resolve();
      };
      const onAbort = () => {
        waiters.delete(done);
        reject(signal.reason);
      };
      waiters.add(done);
      signal.addEventListener("abort", onAbort, { once: true });
    });

  const connectFailed = (address: string) => {
    if (closed || !current?.get(address)) return;
    const failures = (excluded.get(address)?.failures ?? 0) + 1;
    const base = Math.min(CONNECT_BACKOFF_MAX_MS, CONNECT_BACKOFF_MIN_MS * 2 ** Math.min(failures - 1, 8));
    excluded.set(address, { untilMs: performance.now() + base * (1 + 0.1 * secureRandom()), failures });
    rebalance();
  };

  const release = (entry: EndpointChannel) => {
    entry.inflight -= 1;
    if (entry.removed && entry.inflight === 0 && channels.get(entry.key) === entry) closeEntry(entry);
  };

  /** Checks our own identity for a meshed endpoint: an expired one fails the call now (R2). */
  const identityProblem = (entry: EndpointChannel): MeshError | undefined => {
    if (!entry.identity) return undefined;
    if (!identity) {
      return new DestinationError(
        MeshErrorCode.INVALID_CONFIG,
        `endpoint ${entry.endpoint.address} requires mTLS, but the channel has no identity`,
      );
    }
    try {
      identity.clientSecureContext();
      return undefined;
    } catch (error) {
      return MeshError.from(error);
    }
  };

  const noEndpoint = () =>
    new DestinationError(
      MeshErrorCode.DESTINATION_NO_ENDPOINTS,
      current === undefined
        ? `no discovery answer for ${authority}`
        : current.exists
          ? `no endpoint of ${authority} became ready within ${failFastTimeoutMs} ms`
          : `discovery says ${authority} does not exist`,
      { details: { authority } },
    );

  class MeshChannelCall implements CallStream {
    readonly #method: string;
    readonly #args: CreateCallArgs;
    readonly #context: AttemptContext | undefined;
    readonly #number = ++callNumber;
    #delegate: CallStream | undefined;
    #lease: Lease | undefined;
    #ops: ((call: CallStream) => void)[] = [];
    #listener: InterceptingListener | undefined;
    #credentials: CallCredentials | undefined;
    #finished = false;
    #waitAbort: AbortController | undefined;
    #message: OutboundAttemptMessage | undefined;
    #startedAtMs = performance.now();

    constructor(args: CreateCallArgs, context: AttemptContext | undefined) {
      this.#method = args[0];
      this.#args = args;
      this.#context = context;
      const leased = closed ? undefined : lease();
      if (leased) this.#attach(leased);
      else if (!closed) this.#wait();
    }

    #deadlineMs(): number | undefined {
      const deadline = this.#args[1];
      const at = deadline instanceof Date ? deadline.getTime() : deadline;
      return Number.isFinite(at) ? at - Date.now() : undefined;
    }

    #wait(): void {
      const remaining = Math.min(failFastTimeoutMs, this.#deadlineMs() ?? Number.POSITIVE_INFINITY);
      if (remaining <= 0) {
        queueMicrotask(() => this.#fail(Status.UNAVAILABLE, noEndpoint()));
        return;
      }
      const abort = new AbortController();
      this.#waitAbort = abort;
      const signal = AbortSignal.any([abort.signal, AbortSignal.timeout(Math.ceil(remaining))]);
      const retry = (): void => {
        if (this.#finished || abort.signal.aborted) return;
        const leased = closed ? undefined : lease();
        if (leased) {
          this.#attach(leased);
          return;
        }
        changed(signal).then(retry, () => {
          if (!abort.signal.aborted) this.#fail(Status.UNAVAILABLE, noEndpoint());
        });
      };
      retry();
    }

    #attach(leased: Lease): void {
      const problem = identityProblem(leased.entry);
      if (problem) {
        leased.pick.onComplete("canceled");
        queueMicrotask(() => this.#fail(Status.UNAVAILABLE, problem));
        return;
      }
      this.#lease = leased;
      leased.entry.inflight += 1;
      const [method, deadline, host, parent, flags] = this.#args;
      const delegate = leased.entry.channel.createCall(method, deadline, host, parent, flags);
      if (this.#credentials) delegate.setCredentials(this.#credentials);
      this.#delegate = delegate;
      const call = this.#context?.call;
      if (call && (attemptStart.hasSubscribers || attemptEnd.hasSubscribers)) {
        this.#message = {
          call,
          attempt: this.#context?.attempt ?? 1,
          endpointAddress: leased.pick.endpoint.address,
          serverIdentity: leased.entry.identity,
          endpointLabels: leased.pick.endpoint.metricLabels,
          statusCode: undefined,
          grpcStatus: undefined,
          error: undefined,
          durationMs: undefined,
        };
        if (attemptStart.hasSubscribers) attemptStart.publish(this.#message);
      }
      const ops = this.#ops;
      this.#ops = [];
      for (const op of ops) op(delegate);
    }

    #fail(code: Status, error: MeshError): void {
      if (this.#finished) return;
      this.#finished = true;
      this.#waitAbort?.abort();
      const listener = this.#listener;
      this.#ops = [];
      if (listener) listener.onReceiveStatus(meshStatus(code, error));
      else this.#pendingStatus = meshStatus(code, error);
    }

    #pendingStatus: StatusObject | undefined;

    #run(op: (call: CallStream) => void): void {
      if (this.#delegate) op(this.#delegate);
      else if (!this.#finished) this.#ops.push(op);
    }

    #wrap(listener: InterceptingListener): InterceptingListener {
      let metadataSeen = false;
      let firstMessage = true;
      return {
        onReceiveMetadata: (metadata) => {
          metadataSeen = true;
          listener.onReceiveMetadata(metadata);
        },
        onReceiveMessage: (message) => {
          if (firstMessage) {
            firstMessage = false;
            // Load is tracked until the first response DATA frame (contract §8.4).
            this.#lease?.pick.onFirstByte();
          }
          listener.onReceiveMessage(message);
        },
        onReceiveStatus: (status) => {
          this.#complete(status, metadataSeen);
          listener.onReceiveStatus(status);
        },
      };
    }

    #complete(status: StatusObject, metadataSeen: boolean): void {
      if (this.#finished) return;
      this.#finished = true;
      const leased = this.#lease;
      if (!leased) return;
      const outcome =
        status.code === Status.CANCELLED
          ? "canceled"
          : DEFAULT_GRPC_FAILURE_CODES.has(status.code)
            ? "failure"
            : "success";
      leased.pick.onComplete(outcome);
      // UNAVAILABLE while the endpoint's channel cannot connect: give the endpoint a backoff, as
      // linkerd2-proxy keeps an endpoint that fails to connect out of its ready set.
      if (
        status.code === Status.UNAVAILABLE &&
        !metadataSeen &&
        leased.entry.channel.getConnectivityState(false) === ConnectivityState.TRANSIENT_FAILURE
      ) {
        connectFailed(leased.pick.endpoint.address);
      }
      release(leased.entry);
      const message = this.#message;
      if (message) {
        message.statusCode = 200;
        message.grpcStatus = status.code;
        message.durationMs = performance.now() - this.#startedAtMs;
        if (attemptEnd.hasSubscribers) attemptEnd.publish(message);
      }
    }

    start(metadata: Metadata, listener: InterceptingListener): void {
      this.#listener = listener;
      if (this.#pendingStatus) {
        const status = this.#pendingStatus;
        this.#pendingStatus = undefined;
        queueMicrotask(() => listener.onReceiveStatus(status));
        return;
      }
      const wrapped = this.#wrap(listener);
      this.#run((call) => call.start(metadata, wrapped));
    }

    sendMessageWithContext(
      context: Parameters<CallStream["sendMessageWithContext"]>[0],
      message: Buffer,
    ): void {
      this.#run((call) => call.sendMessageWithContext(context, message));
    }

    startRead(): void {
      this.#run((call) => call.startRead());
    }

    halfClose(): void {
      this.#run((call) => call.halfClose());
    }

    cancelWithStatus(code: Status, details: string): void {
      if (this.#delegate) {
        this.#delegate.cancelWithStatus(code, details);
        return;
      }
      if (this.#finished) return;
      this.#finished = true;
      this.#waitAbort?.abort();
      this.#ops = [];
      const listener = this.#listener;
      const status: StatusObject = { code, details, metadata: new Metadata() };
      if (listener) queueMicrotask(() => listener.onReceiveStatus(status));
    }

    getPeer(): string {
      return this.#delegate?.getPeer() ?? "";
    }

    getCallNumber(): number {
      return this.#delegate?.getCallNumber() ?? this.#number;
    }

    setCredentials(credentials: CallCredentials): void {
      this.#credentials = credentials;
      this.#delegate?.setCredentials(credentials);
    }

    getAuthContext(): ReturnType<CallStream["getAuthContext"]> {
      return this.#delegate?.getAuthContext() ?? null;
    }

    get method(): string {
      return this.#method;
    }
  }

  const channelzRef = { kind: "channel", id: -1, name: `mesh:${authority}` } as unknown as ChannelRef;

  const state = (): ConnectivityState => {
    if (closed) return ConnectivityState.SHUTDOWN;
    let best = ConnectivityState.IDLE;
    for (const entry of channels.values()) {
      const s = entry.channel.getConnectivityState(false);
      if (s === ConnectivityState.READY) return s;
      if (s === ConnectivityState.CONNECTING) best = s;
      else if (s === ConnectivityState.TRANSIENT_FAILURE && best === ConnectivityState.IDLE) best = s;
    }
    return best;
  };

  const closeAll = () => {
    if (closed) return;
    closed = true;
    unsubscribe();
    if (exclusionTimer) clearTimeout(exclusionTimer);
    for (const fn of waiters) fn();
    waiters.clear();
    watch.close().catch(() => undefined);
    profile?.close().catch(() => undefined);
    policy?.close().catch(() => undefined);
    for (const entry of [...channels.values()]) closeEntry(entry);
  };

  return {
    authority,
    budget,
    createCall(...args: CreateCallArgs): CallStream {
      const context = ambientAttempt;
      ambientAttempt = undefined;
      return new MeshChannelCall(args, context);
    },
    getTarget: () => `mesh:///${authority}`,
    getConnectivityState(tryToConnect: boolean) {
      if (tryToConnect && !closed)
        for (const entry of channels.values()) entry.channel.getConnectivityState(true);
      return state();
    },
    watchConnectivityState(currentState, deadline, callback) {
      const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
      const poll = () => {
        if (state() !== currentState) {
          callback();
          return;
        }
        if (Date.now() >= deadlineMs) {
          callback(new Error("Deadline passed without connectivity state change"));
          return;
        }
        setTimeout(poll, Math.max(1, Math.min(100, deadlineMs - Date.now()))).unref();
      };
      setTimeout(poll, 0).unref();
    },
    getChannelzRef: () => channelzRef,
    requestPolicy(path: string, metadata?: Metadata) {
      const model = chooseRoutingModel({ profile: profile?.current(), policy: policy?.current() });
      const getHeader = (name: string) => {
        const values = metadata
          ?.get(name)
          .map((value) => (typeof value === "string" ? value : value.toString("latin1")));
        return values === undefined || values.length === 0
          ? undefined
          : values.length === 1
            ? values[0]
            : values;
      };
      return selectRoute(
        model,
        { method: "POST", host: authority, path, getHeader },
        { httpVersion: "http2" },
      );
    },
    async ready(readyOptions = {}) {
      const waitOptions = {
        ...(readyOptions.signal ? { signal: readyOptions.signal } : {}),
        timeoutMs: readyOptions.timeoutMs ?? 3000,
      };
      const routing = Promise.allSettled([profile?.ready(waitOptions), policy?.ready(waitOptions)]);
      await Promise.all([watch.ready(waitOptions), routing]);
    },
    endpointCount: () => current?.size ?? 0,
    close: closeAll,
    [Symbol.asyncDispose]: async () => closeAll(),
  };
}
