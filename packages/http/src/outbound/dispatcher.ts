import type { Socket } from "node:net";
import { holdTickShape, MeshError, MeshErrorCode } from "@inmesh/core";
import { Agent, Dispatcher } from "undici";
import { chainInterceptors, composeInterceptors } from "./compose.js";
import { createMeshConnect, type MeshConnectOptions } from "./connect.js";
import {
  EndpointResponseHandler,
  isLegacyHandler,
  LegacyResponseHandler,
  type RawResponse,
  syntheticController,
} from "./controller.js";
import { AddressCache } from "./dns.js";
import { opaqueDecision } from "./egress.js";
import { getHeader, headerPairs, isGrpcContentType } from "./headers.js";
import { balanceInterceptor } from "./interceptors/balance.js";
import { identityHeadersInterceptor } from "./interceptors/identity-headers.js";
import { redistributeInterceptor } from "./interceptors/redistribute.js";
import { retryInterceptor } from "./interceptors/retry.js";
import { routeInterceptor } from "./interceptors/route.js";
import { streamTimeoutsInterceptor } from "./interceptors/stream-timeouts.js";
import { telemetryInterceptor } from "./interceptors/telemetry.js";
import { timeoutInterceptor } from "./interceptors/timeout.js";
import { classifyOrigin } from "./names.js";
import { type MeshDispatcherOptions, resolveDispatcherOptions } from "./options.js";
import { RescuingLegacyHandler, rescueInterceptor } from "./proxy-errors.js";
import { type OutboundDecision, OutboundResolver } from "./resolve.js";
import { attemptOf, type CallState, callOf, kCall, type MeshDispatchOptions } from "./state.js";
import { TargetRegistry } from "./targets.js";

type DispatchFn = (opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler) => boolean;

/** Shared by every call that strips no header and applies no filter (both lists are read-only). */
const NONE: readonly never[] = Object.freeze([]);

function originalHost(opts: Dispatcher.DispatchOptions): string {
  return new URL(String(opts.origin)).hostname;
}

/** A Dispatcher around a function, so interceptors can be composed over it with undici's `compose`. */
class FunctionDispatcher extends Dispatcher {
  readonly fn: DispatchFn;
  constructor(fn: DispatchFn) {
    super();
    this.fn = fn;
  }
  override dispatch(opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    return this.fn(opts, handler);
  }
  override close(): Promise<void>;
  override close(callback: () => void): void;
  override close(callback?: () => void): Promise<void> | void {
    if (callback) {
      callback();
      return;
    }
    return Promise.resolve();
  }
  override destroy(): Promise<void>;
  override destroy(err: Error | null): Promise<void>;
  override destroy(callback: () => void): void;
  override destroy(err: Error | null, callback: () => void): void;
  override destroy(...args: unknown[]): Promise<void> | void {
    const callback = args.find((arg) => typeof arg === "function") as (() => void) | undefined;
    if (callback) {
      callback();
      return;
    }
    return Promise.resolve();
  }
}

/** The outbound side of the mesh as an undici Dispatcher: pass it as `dispatcher` to `request` or `fetch`. */
export interface MeshDispatcher extends Dispatcher, AsyncDisposable {
  /** Stops taking requests, lets in-flight ones finish, then closes pools and discovery watches. Idempotent. */
  close(): Promise<void>;
  close(callback: () => void): void;
  /** Aborts everything in flight and closes at once. */
  destroy(): Promise<void>;
  destroy(err: Error | null): Promise<void>;
  destroy(callback: () => void): void;
  destroy(err: Error | null, callback: () => void): void;
  /** Authorities and discovery paths currently tracked (for diagnostics and tests). */
  targetCount(): { readonly targets: number; readonly groups: number };
  /**
   * One connection to `host:port` through the mesh (see `createMeshConnect`): mTLS to a balanced
   * endpoint of a Service, the outbound policy for addresses and external names.
   */
  openConnection(target: string, options?: MeshConnectOptions): Promise<Socket>;
}

/**
 * Creates the mesh's outbound undici Dispatcher. Requests to `http://<svc>.<ns>.svc.<clusterDomain>[:port]`
 * are resolved through Linkerd discovery, balanced (peak-EWMA P2C) across endpoints, sent over mTLS to
 * each endpoint's identity (SNI = identity, no ALPN; transport header on the inbound port when
 * advertised; prior-knowledge HTTP/2 when hinted) or in plaintext to unmeshed endpoints, and retried and
 * timed out as the ServiceProfile or HTTPRoute says. Every other request goes to `fallbackDispatcher`.
 *
 * Interceptor order, outermost first: `[...interceptors, rescue, telemetry, route, timeout, retry,
 * redistribute, streamTimeouts, balance, identityHeaders]`; mTLS is the pools' connector, not an
 * interceptor.
 *
 * @example
 * const dispatcher = createMeshDispatcher({ identity, discovery });
 * const { statusCode, body } = await request("http://books.default.svc.cluster.local/books", { dispatcher });
 * const response = await fetch("http://books.default.svc.cluster.local/books", { dispatcher });
 */
export function createMeshDispatcher(options: MeshDispatcherOptions): MeshDispatcher {
  const resolved = resolveDispatcherOptions(options);
  holdTickShape();
  const ownsFallback = options.fallbackDispatcher === undefined;
  const fallback: Dispatcher = options.fallbackDispatcher ?? new Agent();
  const registry = new TargetRegistry({
    discovery: resolved.discovery,
    settings: {
      identity: resolved.identity,
      connectTimeoutMs: resolved.connectTimeoutMs,
      localAddress: resolved.localAddress,
      keepAliveTimeoutMs: resolved.keepAliveTimeoutMs,
      maxConnectionsPerEndpoint: resolved.maxConnectionsPerEndpoint,
      useTransportHeader: resolved.useTransportHeader,
      http2PriorKnowledge: resolved.http2PriorKnowledge,
    },
    useRouting: resolved.useRoutes,
    profileNetworks: resolved.profileNetworks,
    maxTargets: resolved.maxTargets,
    idleTimeoutMs: resolved.targetIdleTimeoutMs,
  });

  const endpoints: DispatchFn = (opts, handler) => {
    const lease = attemptOf(opts).lease;
    if (!lease) return false;
    // Old handler API to the pool: what its clients speak natively (no adapter added by undici).
    const bottom = new EndpointResponseHandler(handler, callOf(opts).rawResponse);
    return lease.pool.dispatch(opts, bottom as unknown as Dispatcher.DispatchHandler);
  };
  const mesh = chainInterceptors(endpoints, [
    ...(resolved.proxyErrorResponses ? [rescueInterceptor()] : []),
    telemetryInterceptor(),
    routeInterceptor(resolved, registry),
    timeoutInterceptor(resolved),
    retryInterceptor(resolved),
    redistributeInterceptor(registry),
    streamTimeoutsInterceptor(),
    balanceInterceptor(resolved),
    identityHeadersInterceptor(),
  ]);

  let closed = false;
  const resolver = new OutboundResolver(
    registry,
    {
      names: resolved,
      discoveryTimeoutMs: resolved.discoveryTimeoutMs,
      policyByAddress: typeof resolved.discovery.watchOutboundPolicy === "function",
    },
    new AddressCache(),
  );
  // Parsing the origin is a visible share of the per-request cost; applications use few origins.
  const origins = new Map<string, ReturnType<typeof classifyOrigin>>();
  // undici's `request` and `fetch` build a new origin string per call: a Map lookup hashes it each
  // time, a comparison with the last one (the common case: one origin after another) does not.
  let lastOrigin: string | undefined;
  let lastClassified: ReturnType<typeof classifyOrigin>;
  const classify = (origin: unknown): ReturnType<typeof classifyOrigin> => {
    if (typeof origin !== "string") return classifyOrigin(origin, resolved);
    if (origin === lastOrigin) return lastClassified;
    lastClassified = cachedClassify(origin);
    lastOrigin = origin;
    return lastClassified;
  };
  const cachedClassify = (origin: string): ReturnType<typeof classifyOrigin> => {
    if (origins.has(origin)) return origins.get(origin);
    const classified = classifyOrigin(origin, resolved);
    if (origins.size >= 1024) origins.clear();
    origins.set(origin, classified);
    return classified;
  };

  const fail = (handler: Dispatcher.DispatchHandler, error: unknown): void => {
    const meshError = MeshError.from(error);
    if (handler.onResponseError) handler.onResponseError(syntheticController(), meshError);
    else handler.onError?.(meshError);
  };

  /** After a bounded wait (discovery of a short name, DNS of an external one), the request goes on. */
  const later = (
    decided: Promise<OutboundDecision>,
    handler: Dispatcher.DispatchHandler,
    go: (decision: OutboundDecision) => void,
  ): boolean => {
    decided.then(
      (decision) => {
        if (closed) {
          fail(handler, new MeshError(MeshErrorCode.CLOSED, "the mesh dispatcher is closed"));
          return;
        }
        try {
          go(decision);
        } catch (error) {
          fail(handler, error);
        }
      },
      (error: unknown) => fail(handler, error),
    );
    return true;
  };

  const route: DispatchFn = (opts, handler) => {
    if (closed) {
      fail(handler, new MeshError(MeshErrorCode.CLOSED, "the mesh dispatcher is closed"));
      return false;
    }
    const classified = classify(opts.origin);
    if (classified === undefined) return fallback.dispatch(opts, handler);
    const { name, secure } = classified;
    if (!secure) {
      const now = resolver.now(name);
      if (now)
        return now.kind === "passthrough"
          ? fallback.dispatch(opts, handler)
          : dispatchMesh(opts, handler, now);
      return later(resolver.resolve(name, originalHost(opts)), handler, (decision) =>
        decision.kind === "passthrough"
          ? fallback.dispatch(opts, handler)
          : dispatchMesh(opts, handler, decision),
      );
    }
    // The application's own TLS: a Service name goes as is; an address can still be refused by policy.
    if (name.kind === "service") return fallback.dispatch(opts, handler);
    const gate = (decision: OutboundDecision): void => {
      if (decision.kind !== "address") {
        fallback.dispatch(opts, handler);
        return;
      }
      const target = registry.addressTarget(decision.address.key, decision.address.ip, decision.address.port);
      const check = (): void => {
        try {
          const verdict = opaqueDecision(decision.authority, target.outboundPolicy());
          if (verdict.denied) fail(handler, verdict.denied);
          else fallback.dispatch(opts, handler);
        } catch (error) {
          fail(handler, error);
        }
      };
      if (target.isReady) check();
      else
        target
          .ready(new AbortController().signal, resolved.discoveryTimeoutMs)
          .then(check, (error: unknown) => fail(handler, error));
    };
    const now = resolver.now(name);
    if (now) {
      gate(now);
      return true;
    }
    return later(resolver.resolve(name, originalHost(opts)), handler, gate);
  };

  const dispatchMesh = (
    opts: Dispatcher.DispatchOptions,
    handler: Dispatcher.DispatchHandler,
    decision: Exclude<OutboundDecision, { kind: "passthrough" }>,
  ): boolean => {
    const pairs = headerPairs(opts.headers);
    // An old-API handler (undici's request, fetch) gets the endpoint's raw headers handed through.
    const rawResponse: RawResponse | undefined = isLegacyHandler(handler)
      ? { headers: undefined, rawHeaders: undefined, trailers: undefined, rawTrailers: undefined }
      : undefined;
    const call: CallState = {
      authority: decision.authority,
      address: decision.kind === "address" ? decision.address : undefined,
      hostHeader: decision.kind === "service" ? decision.hostHeader : undefined,
      method: (opts.method ?? "GET").toUpperCase(),
      path: opts.path,
      protocol: isGrpcContentType(getHeader(pairs, "content-type")) ? "grpc" : "http",
      headers: pairs,
      startedAtMs: performance.now(),
      telemetry: undefined,
      extraHeaders: [],
      target: undefined,
      group: undefined,
      policy: undefined,
      stripHeaders: NONE,
      headerFilters: NONE,
      deadlineAtMs: undefined,
      budget: undefined,
      splitPolicy: undefined,
      attempts: 0,
      rawResponse,
    };
    // A store after the copy: a computed key inside the literal goes through a slow runtime path in V8.
    const meshOpts: Dispatcher.DispatchOptions & MeshDispatchOptions = { ...opts };
    meshOpts[kCall] = call;
    if (!rawResponse) return mesh(meshOpts, handler);
    return mesh(
      meshOpts,
      resolved.proxyErrorResponses
        ? new RescuingLegacyHandler(handler, rawResponse, call)
        : new LegacyResponseHandler(handler, rawResponse),
    );
  };
  const entry: DispatchFn =
    resolved.interceptors.length === 0
      ? route
      : (() => {
          const composed = composeInterceptors(new FunctionDispatcher(route), resolved.interceptors);
          return (opts, handler) => composed.dispatch(opts, handler);
        })();

  class MeshDispatcherImpl extends Dispatcher {
    override dispatch(opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
      return entry(opts, handler);
    }
  }
  const dispatcher = new MeshDispatcherImpl() as unknown as MeshDispatcher;
  const connect = createMeshConnect(registry, resolver, resolved);

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      closed = true;
      await registry.close();
      if (ownsFallback) await fallback.close();
    })();
    return closing;
  };
  const destroy = (error?: Error | null): Promise<void> => {
    closed = true;
    const reason = error ?? new MeshError(MeshErrorCode.CLOSED, "the mesh dispatcher was destroyed");
    registry.destroy(reason);
    closing ??= ownsFallback ? fallback.destroy(reason) : Promise.resolve();
    return closing;
  };

  Object.assign(dispatcher, {
    close(callback?: () => void) {
      const done = close();
      if (typeof callback === "function") {
        done.then(callback, callback);
        return;
      }
      return done;
    },
    destroy(...args: unknown[]) {
      const callback = args.find((arg) => typeof arg === "function") as (() => void) | undefined;
      const error = args.find((arg) => arg instanceof Error) as Error | undefined;
      const done = destroy(error);
      if (callback) {
        done.then(callback, callback);
        return;
      }
      return done;
    },
    targetCount: () => registry.size(),
    openConnection: (target: string, connectOptions?: MeshConnectOptions) => {
      if (closed) return Promise.reject(new MeshError(MeshErrorCode.CLOSED, "the mesh dispatcher is closed"));
      return connect(target, connectOptions);
    },
    [Symbol.asyncDispose]: () => close(),
  });
  return dispatcher;
}
