import { isIP } from "node:net";
import { debuglog } from "node:util";
import {
  type CallCredentials,
  type ChannelInterface,
  type ChannelOptions,
  connectivityState as ConnectivityState,
  type experimental,
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
} from "@inmesh/core";
import {
  chooseRoutingModel,
  createRetryBudget,
  DEFAULT_GRPC_FAILURE_CODES,
  type Discovery,
  type EndpointSet,
  type GrpcFilter,
  type HttpFilter,
  type OpaqueFilter,
  type OutboundPolicyState,
  type ProfileState,
  type RequestPolicy,
  type RequestTimeouts,
  type RetryBudget,
  selectBackend,
  selectRoute,
  type Watch,
} from "@inmesh/destination";
import type { IdentityProvider } from "@inmesh/identity";
import {
  createEndpointGroup,
  type EndpointGroup,
  type EndpointGroupSettings,
  type Lease,
} from "./endpoint-group.js";
import {
  backendPaths,
  grpcFailureAccrual,
  injectedFailure,
  meshStatus,
  modifyRequestMetadata,
  noRouteStatus,
  timeoutError,
} from "./routing.js";

export { MESH_ERROR_METADATA_KEY } from "./routing.js";

const debug = debuglog("mesh");
const attemptStart = meshChannel(MeshChannel.outboundAttemptStart);
const attemptEnd = meshChannel(MeshChannel.outboundAttemptEnd);

type CallStream = experimental.CallStream;
type CreateCallArgs = Parameters<ChannelInterface["createCall"]>;
type ChannelRef = ReturnType<ChannelInterface["getChannelzRef"]>;
type AnyFilter = HttpFilter | GrpcFilter | OpaqueFilter;

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
  /**
   * Runs `run` once the target's routes are known (its ServiceProfile and OutboundPolicy watches have
   * answered, or `failFastTimeoutMs` passed): at once when they are, as linkerd2-proxy routes no request
   * before its policy has been discovered.
   */
  withRoutes(run: () => void): void;
  /** Resolves once discovery has answered (endpoints, and routes within the same bound). */
  ready(options?: { signal?: AbortSignal; timeoutMs?: number }): Promise<void>;
  /** Endpoints currently known (of the logical target; traffic-split backends not included). */
  endpointCount(): number;
  close(): void;
}

/**
 * Shares the logical call with the channel while an interceptor creates an attempt: its telemetry, the
 * attempt number, the route chosen once for the whole call, and when the call started (the route's
 * request timeout runs from there, across retries).
 */
export interface AttemptContext {
  readonly call: OutboundCallMessage | undefined;
  readonly attempt: number;
  /** The call's route (set before the attempt starts); `policy` undefined means no route matched. */
  route?: { readonly policy: RequestPolicy | undefined } | undefined;
  /** `performance.now()` when the logical call started. */
  readonly startedAtMs?: number;
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

/** Route timers of one attempt (contract §7.2 stream timeouts); absent kinds are not armed. */
interface AttemptTimers {
  request: NodeJS.Timeout | undefined;
  response: NodeJS.Timeout | undefined;
  idle: NodeJS.Timeout | undefined;
}

/**
 * Creates a grpc-js Channel that resolves its target through Linkerd discovery and picks an endpoint per
 * call with the peak-EWMA P2C balancer. Each endpoint gets its own grpc-js channel with mesh credentials
 * for that endpoint's identity (SNI = identity, no ALPN, transport header when advertised), or plaintext
 * for unmeshed endpoints. Endpoints removed by discovery finish their calls, then close.
 *
 * Each call is routed as linkerd2-proxy's outbound gRPC router does: the GRPCRoute (or profile route) of
 * the method and metadata, NOT_FOUND when the policy has routes and none matches, the rule's filters
 * (request header modifier, failure injector), a backend drawn by weight (traffic split) with its own
 * balancer, the rule's request/response/idle timeouts (DEADLINE_EXCEEDED), and the policy's failure
 * accrual on every backend's balancer.
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
  const useRoutes = options.useRoutes ?? true;
  if (options.localAddress !== undefined && isIP(options.localAddress) === 0) {
    throw new MeshError(
      MeshErrorCode.INVALID_CONFIG,
      `localAddress must be an IP address, got ${JSON.stringify(options.localAddress)}`,
    );
  }
  const identity = options.identity;
  const discovery = options.discovery;
  const settings: EndpointGroupSettings = {
    authority,
    identity,
    useTransportHeader: options.useTransportHeader ?? true,
    localAddress: options.localAddress,
    channelOptions: options.channelOptions,
  };

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
  const budget = createRetryBudget();
  const target = createEndpointGroup(authority, watch, settings);
  /** Backend groups by discovery path; the logical target's is `target`. */
  const groups = new Map<string, EndpointGroup>([[authority, target]]);
  let closed = false;
  let callNumber = 0;

  const groupFor = (path: string): EndpointGroup => {
    const key = path.toLowerCase();
    let group = groups.get(key);
    if (!group) {
      group = createEndpointGroup(key, discovery.watchEndpoints(key), settings);
      group.setFailureAccrual(grpcFailureAccrual(policy?.current()));
      groups.set(key, group);
    }
    return group;
  };

  /**
   * A new policy or profile: the policy's failure accrual on every balancer; backends neither names any
   * more (route backendRefs, profile dstOverrides) close once idle.
   */
  const applyRouting = () => {
    if (closed) return;
    const state = policy?.current();
    const accrual = grpcFailureAccrual(state);
    const named = backendPaths(state);
    const profileState = profile?.current();
    if (profileState?.kind === "profile")
      for (const override of profileState.dstOverrides) named.add(override.authority.toLowerCase());
    for (const [path, group] of [...groups]) {
      if (group !== target && !named.has(path) && ![...group.channels()].some((e) => e.inflight > 0)) {
        groups.delete(path);
        group.close();
        continue;
      }
      group.setFailureAccrual(accrual);
    }
  };
  const unsubscribePolicy = policy?.onUpdate(applyRouting);
  const unsubscribeProfile = profile?.onUpdate(applyRouting);
  applyRouting();

  const answered = (routeWatch: Watch<unknown> | undefined) =>
    routeWatch === undefined || routeWatch.current() !== undefined || routeWatch.state().terminated;
  let routesKnown = false;
  let routesPending: (() => void)[] | undefined;
  const withRoutes = (run: () => void): void => {
    if (routesKnown || closed || (answered(profile) && answered(policy))) {
      routesKnown = true;
      run();
      return;
    }
    if (routesPending) {
      routesPending.push(run);
      return;
    }
    const pending = [run];
    routesPending = pending;
    const waitOptions = { timeoutMs: failFastTimeoutMs };
    void Promise.allSettled([profile?.ready(waitOptions), policy?.ready(waitOptions)]).then(() => {
      routesKnown = true;
      routesPending = undefined;
      for (const fn of pending) fn();
    });
  };

  const selectPolicy = (path: string, metadata: Metadata | undefined): RequestPolicy | undefined => {
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
    return selectRoute(model, { method: "POST", host: authority, path, getHeader }, { httpVersion: "http2" });
  };

  /** Checks our own identity for a meshed endpoint: an expired one fails the call now (R2). */
  const identityProblem = (lease: Lease): MeshError | undefined => {
    if (!lease.entry.identity) return undefined;
    if (!identity) {
      return new DestinationError(
        MeshErrorCode.INVALID_CONFIG,
        `endpoint ${lease.entry.endpoint.address} requires mTLS, but the channel has no identity`,
      );
    }
    try {
      identity.clientSecureContext();
      return undefined;
    } catch (error) {
      return MeshError.from(error);
    }
  };

  const noEndpoint = (group: EndpointGroup) => {
    const current = group.current();
    return new DestinationError(
      MeshErrorCode.DESTINATION_NO_ENDPOINTS,
      current === undefined
        ? `no discovery answer for ${group.path}`
        : current.exists
          ? `no endpoint of ${group.path} became ready within ${failFastTimeoutMs} ms`
          : `discovery says ${group.path} does not exist`,
      { details: { authority, backend: group.path } },
    );
  };

  class MeshChannelCall implements CallStream {
    readonly #method: string;
    readonly #args: CreateCallArgs;
    readonly #context: AttemptContext | undefined;
    readonly #number = ++callNumber;
    #delegate: CallStream | undefined;
    #lease: Lease | undefined;
    #group: EndpointGroup = target;
    #ops: ((call: CallStream) => void)[] = [];
    #listener: InterceptingListener | undefined;
    #credentials: CallCredentials | undefined;
    /** The status went (or is going) to the listener. */
    #done = false;
    #leaseDone = false;
    #waitAbort: AbortController | undefined;
    #message: OutboundAttemptMessage | undefined;
    #startedAtMs = performance.now();
    #pendingStatus: StatusObject | undefined;
    #timers: AttemptTimers | undefined;
    #timeouts: RequestTimeouts | undefined;
    #lastActivityMs = 0;
    /** The caller's deadline while the call waits for the target's routes. */
    #routesWait: NodeJS.Timeout | undefined;
    #responseStarted = false;
    #halfClosed = false;
    #firstWrite = false;

    constructor(args: CreateCallArgs, context: AttemptContext | undefined) {
      this.#method = args[0];
      this.#args = args;
      this.#context = context;
    }

    #deadlineMs(): number | undefined {
      const deadline = this.#args[1];
      const at = deadline instanceof Date ? deadline.getTime() : deadline;
      return Number.isFinite(at) ? at - Date.now() : undefined;
    }

    /** Routes the call; whatever goes wrong ends this call with a status, never throws into grpc-js. */
    #route(metadata: Metadata, listener: InterceptingListener): void {
      try {
        this.#routeUnsafe(metadata, listener);
      } catch (error) {
        this.#end(meshStatus(Status.UNAVAILABLE, MeshError.from(error)));
      }
    }

    /** Route, filters, backend and timers; then an endpoint (now, or once one is ready). */
    #routeUnsafe(metadata: Metadata, listener: InterceptingListener): void {
      const route = this.#context?.route ?? { policy: selectPolicy(this.#method, metadata) };
      const policy = route.policy;
      if (!policy) {
        this.#end(noRouteStatus(authority));
        return;
      }
      let filters: readonly AnyFilter[] = policy.filters;
      const backend = policy.backends ? selectBackend<AnyFilter>(policy.backends) : undefined;
      if (backend) {
        if (backend.filters.length > 0) filters = [...filters, ...backend.filters];
        // A forward backend (one address, no discovery) is not a gRPC Service target: the logical one serves it.
        if (backend.backend.target.kind === "balancer") {
          try {
            this.#group = groupFor(backend.backend.target.path);
          } catch (error) {
            // No watch for the backend (the discovery's watch limit, say): the call fails, nothing else.
            this.#end(meshStatus(Status.UNAVAILABLE, MeshError.from(error)));
            return;
          }
        }
      }
      if (filters.length > 0) {
        const failure = injectedFailure(filters);
        if (failure) {
          this.#end(failure);
          return;
        }
        metadata = modifyRequestMetadata(metadata, filters);
      }
      this.#armTimers(policy.timeouts);
      const wrapped = this.#wrap(listener);
      this.#ops.unshift((call) => call.start(metadata, wrapped));
      const leased = this.#tryLease();
      if (leased) this.#attach(leased);
      else if (!this.#done) this.#wait();
    }

    #tryLease(): Lease | undefined {
      try {
        return this.#group.lease();
      } catch (error) {
        this.#end(meshStatus(Status.UNAVAILABLE, MeshError.from(error)));
        return undefined;
      }
    }

    #armTimers(timeouts: RequestTimeouts): void {
      const { requestMs, responseMs, idleMs } = timeouts;
      if (requestMs === undefined && responseMs === undefined && idleMs === undefined) return;
      this.#timeouts = timeouts;
      const timers: AttemptTimers = { request: undefined, response: undefined, idle: undefined };
      this.#timers = timers;
      if (requestMs !== undefined) {
        // The request timeout bounds the logical call, retries included: it runs from the call's start.
        const startedAtMs = this.#context?.startedAtMs ?? this.#startedAtMs;
        const leftMs = Math.max(0, startedAtMs + requestMs - performance.now());
        timers.request = setTimeout(() => this.#expire("request", requestMs), leftMs);
      }
      if (idleMs !== undefined) {
        this.#lastActivityMs = performance.now();
        timers.idle = setTimeout(() => this.#idleCheck(idleMs), idleMs);
      }
      // Half-closed while the routes were still unknown: the response timeout starts now.
      if (this.#halfClosed) this.#armResponseTimer();
    }

    /** The response timeout runs from the end of the request (or the response headers, if earlier). */
    #armResponseTimer(): void {
      const responseMs = this.#timeouts?.responseMs;
      const timers = this.#timers;
      if (responseMs === undefined || !timers || timers.response || this.#done) return;
      timers.response = setTimeout(() => this.#expire("response", responseMs), responseMs);
    }

    #idleCheck(idleMs: number): void {
      const timers = this.#timers;
      if (!timers || this.#done) return;
      const idleForMs = performance.now() - this.#lastActivityMs;
      if (idleForMs >= idleMs) {
        this.#expire("idle", idleMs);
        return;
      }
      timers.idle = setTimeout(() => this.#idleCheck(idleMs), idleMs - idleForMs);
    }

    #active(): void {
      if (this.#timers?.idle) this.#lastActivityMs = performance.now();
    }

    #clearTimers(): void {
      const timers = this.#timers;
      if (!timers) return;
      this.#timers = undefined;
      if (timers.request) clearTimeout(timers.request);
      if (timers.response) clearTimeout(timers.response);
      if (timers.idle) clearTimeout(timers.idle);
    }

    /** Linkerd answers an expired stream timeout with DEADLINE_EXCEEDED naming the timeout. */
    #expire(kind: "request" | "response" | "idle", timeoutMs: number): void {
      if (this.#done) return;
      const error = timeoutError(kind, timeoutMs, this.#responseStarted, authority);
      // Neither a failure nor a success for the endpoint's breaker: linkerd2-proxy drops the response
      // future of a timed-out call, which classifies nothing.
      this.#end(meshStatus(Status.DEADLINE_EXCEEDED, error));
    }

    #wait(): void {
      const remaining = Math.min(failFastTimeoutMs, this.#deadlineMs() ?? Number.POSITIVE_INFINITY);
      const group = this.#group;
      if (remaining <= 0) {
        this.#end(meshStatus(Status.UNAVAILABLE, noEndpoint(group)));
        return;
      }
      const abort = new AbortController();
      this.#waitAbort = abort;
      const signal = AbortSignal.any([abort.signal, AbortSignal.timeout(Math.ceil(remaining))]);
      const retry = (): void => {
        if (this.#done || abort.signal.aborted) return;
        if (closed) {
          this.#end(meshStatus(Status.UNAVAILABLE, closedError()));
          return;
        }
        const leased = this.#tryLease();
        if (leased) {
          this.#attach(leased);
          return;
        }
        if (this.#done) return;
        group.changed(signal).then(retry, () => {
          if (!abort.signal.aborted) this.#end(meshStatus(Status.UNAVAILABLE, noEndpoint(group)));
        });
      };
      retry();
    }

    #attach(leased: Lease): void {
      if (this.#done) {
        leased.pick.onComplete("canceled");
        return;
      }
      const problem = identityProblem(leased);
      if (problem) {
        leased.pick.onComplete("canceled");
        this.#end(meshStatus(Status.UNAVAILABLE, problem));
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

    /** Ends the call with a status the mesh made up; a call in flight is cancelled underneath. */
    #end(status: StatusObject): void {
      if (this.#done) return;
      this.#done = true;
      this.#clearTimers();
      if (this.#routesWait) clearTimeout(this.#routesWait);
      this.#waitAbort?.abort();
      this.#ops = [];
      this.#completeLease(status.code, "canceled", false);
      // Its own status comes back through the wrapped listener, which ignores it now.
      this.#delegate?.cancelWithStatus(Status.CANCELLED, status.details);
      const listener = this.#listener;
      if (listener) queueMicrotask(() => listener.onReceiveStatus(status));
      else this.#pendingStatus = status;
    }

    #run(op: (call: CallStream) => void): void {
      if (this.#delegate) op(this.#delegate);
      else if (!this.#done) this.#ops.push(op);
    }

    #wrap(listener: InterceptingListener): InterceptingListener {
      let metadataSeen = false;
      let firstMessage = true;
      return {
        onReceiveMetadata: (metadata) => {
          if (this.#done) return;
          metadataSeen = true;
          this.#responseStarted = true;
          this.#active();
          this.#armResponseTimer();
          listener.onReceiveMetadata(metadata);
        },
        onReceiveMessage: (message) => {
          if (this.#done) return;
          if (firstMessage) {
            firstMessage = false;
            // Load is tracked until the first response DATA frame (contract §8.4).
            this.#lease?.pick.onFirstByte();
          }
          this.#active();
          listener.onReceiveMessage(message);
        },
        onReceiveStatus: (status) => {
          if (this.#done) return;
          this.#done = true;
          this.#clearTimers();
          const outcome =
            status.code === Status.CANCELLED
              ? "canceled"
              : DEFAULT_GRPC_FAILURE_CODES.has(status.code)
                ? "failure"
                : "success";
          this.#completeLease(status.code, outcome, status.code === Status.UNAVAILABLE && !metadataSeen);
          listener.onReceiveStatus(status);
        },
      };
    }

    #completeLease(code: Status, outcome: "success" | "failure" | "canceled", cannotConnect: boolean): void {
      const leased = this.#lease;
      if (!leased || this.#leaseDone) return;
      this.#leaseDone = true;
      leased.pick.onComplete(outcome);
      leased.group.release(leased, cannotConnect);
      const message = this.#message;
      if (message) {
        message.statusCode = 200;
        message.grpcStatus = code;
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
      if (this.#done) return;
      if (closed) {
        this.#end(meshStatus(Status.UNAVAILABLE, closedError()));
        return;
      }
      if (this.#context?.route) {
        this.#route(metadata, listener);
        return;
      }
      let routed = false;
      withRoutes(() => {
        routed = true;
        if (this.#routesWait) clearTimeout(this.#routesWait);
        if (this.#done) return;
        if (closed) this.#end(meshStatus(Status.UNAVAILABLE, closedError()));
        else this.#route(metadata, listener);
      });
      const leftMs = this.#deadlineMs();
      if (routed || leftMs === undefined) return;
      // The caller's deadline also bounds the wait for the routes.
      this.#routesWait = setTimeout(
        () =>
          this.#end({
            code: Status.DEADLINE_EXCEEDED,
            details: "Deadline exceeded",
            metadata: new Metadata(),
          }),
        Math.max(0, leftMs),
      );
    }

    sendMessageWithContext(
      context: Parameters<CallStream["sendMessageWithContext"]>[0],
      message: Buffer,
    ): void {
      this.#active();
      let sending = context;
      if (!this.#firstWrite) {
        this.#firstWrite = true;
        const callback = context.callback;
        sending = {
          ...context,
          callback: (error?: Error | null) => {
            this.#markSent();
            callback?.(error);
          },
        };
      }
      this.#run((call) => call.sendMessageWithContext(sending, message));
    }

    /**
     * The first message is written: the balancer measures the round trip from here, not from the pick
     * (a connect is not the endpoint's latency).
     */
    #markSent(): void {
      this.#lease?.pick.onSent();
    }

    startRead(): void {
      this.#run((call) => call.startRead());
    }

    halfClose(): void {
      this.#halfClosed = true;
      this.#armResponseTimer();
      this.#run((call) => call.halfClose());
    }

    cancelWithStatus(code: Status, details: string): void {
      if (this.#delegate && !this.#done) {
        this.#clearTimers();
        this.#delegate.cancelWithStatus(code, details);
        return;
      }
      this.#end({ code, details, metadata: new Metadata() });
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

  const closedError = () =>
    new MeshError(MeshErrorCode.CLOSED, `the mesh channel to ${authority} is closed`, {
      details: { authority },
    });

  const channelzRef = { kind: "channel", id: -1, name: `mesh:${authority}` } as unknown as ChannelRef;

  const state = (): ConnectivityState => {
    if (closed) return ConnectivityState.SHUTDOWN;
    let best = ConnectivityState.IDLE;
    for (const group of groups.values()) {
      for (const entry of group.channels()) {
        const s = entry.channel.getConnectivityState(false);
        if (s === ConnectivityState.READY) return s;
        if (s === ConnectivityState.CONNECTING) best = s;
        else if (s === ConnectivityState.TRANSIENT_FAILURE && best === ConnectivityState.IDLE) best = s;
      }
    }
    return best;
  };

  const closeAll = () => {
    if (closed) return;
    closed = true;
    unsubscribePolicy?.();
    unsubscribeProfile?.();
    profile?.close().catch(() => undefined);
    policy?.close().catch(() => undefined);
    for (const group of groups.values()) group.close();
    groups.clear();
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
        for (const group of groups.values())
          for (const entry of group.channels()) entry.channel.getConnectivityState(true);
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
    requestPolicy: selectPolicy,
    withRoutes,
    async ready(readyOptions = {}) {
      const waitOptions = {
        ...(readyOptions.signal ? { signal: readyOptions.signal } : {}),
        timeoutMs: readyOptions.timeoutMs ?? 3000,
      };
      const routing = Promise.allSettled([profile?.ready(waitOptions), policy?.ready(waitOptions)]);
      await Promise.all([watch.ready(waitOptions), routing]);
    },
    endpointCount: () => target.endpointCount(),
    close: closeAll,
    [Symbol.asyncDispose]: async () => closeAll(),
  };
}
