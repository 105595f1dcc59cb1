import { debuglog } from "node:util";
import {
  type Cidr,
  cidrContains,
  DestinationError,
  MeshChannel,
  MeshError,
  MeshErrorCode,
  meshChannel,
  parseIpAddress,
  secureRandom,
} from "@inmesh/core";
import {
  type Balancer,
  type Pick as BalancerPick,
  chooseRoutingModel,
  createEndpointSet,
  createRetryBudget,
  type Discovery,
  type Endpoint,
  type EndpointSet,
  endpointSetChanges,
  type FailureAccrualPolicy,
  type OutboundPolicyState,
  type ProfileState,
  type RetryBudget,
  type RoutingModel,
  type Watch,
} from "@inmesh/destination";
import type { IdentityProvider } from "@inmesh/identity";
import { Pool } from "undici";
import {
  createEndpointConnector,
  type EndpointRoute,
  endpointRoute,
  type RouteOptions,
  routeKey,
} from "./connector.js";
import { BackendFailureAccrual, GroupBreakers } from "./failure-accrual.js";

const debug = debuglog("mesh");
const destinationChanged = meshChannel(MeshChannel.destinationChanged);

/** The discovery surface the dispatcher uses; `createDiscovery()` provides it. */
export type MeshDiscovery = Pick<Discovery, "watchEndpoints"> &
  Partial<Pick<Discovery, "watchProfile" | "watchOutboundPolicy">>;

export interface PoolSettings extends RouteOptions {
  readonly identity: IdentityProvider | undefined;
  readonly connectTimeoutMs: number;
  readonly localAddress: string | undefined;
  readonly keepAliveTimeoutMs: number | undefined;
  readonly maxConnectionsPerEndpoint: number | undefined;
}

/** One balanced use of an endpoint: the balancer handle plus the pool to send on. */
export interface EndpointLease {
  readonly pick: BalancerPick<Endpoint>;
  readonly route: EndpointRoute;
  readonly pool: Pool;
}

interface PoolEntry {
  readonly key: string;
  readonly route: EndpointRoute;
  readonly pool: Pool;
}

// linkerd2-proxy's outbound connect backoff (LINKERD2_PROXY_OUTBOUND_CONNECT_BACKOFF_{MIN,MAX}).
const CONNECT_BACKOFF_MIN_MS = 100;
const CONNECT_BACKOFF_MAX_MS = 500;
/** Concurrent requests on one prior-knowledge HTTP/2 connection (below the 200 hyper and we advertise). */
const HTTP2_STREAMS_PER_CONNECTION = 100;

/**
 * How many connections an endpoint's pool may open, and how many requests each carries at once. undici
 * sends one request at a time on a connection unless told otherwise, HTTP/2 included, and its pool opens
 * a new connection for every request that arrives while the others are still connecting: forty
 * concurrent calls to a meshed endpoint made forty mTLS connections, and a loop stall at 500 requests a
 * second made thousands. Between two linkerd2-proxies, a peer's requests share one HTTP/2 connection;
 * so do ours, unless `maxConnectionsPerEndpoint` allows more. HTTP/1 keeps one request per connection
 * (pipelining is unsafe), uncapped by default as hyper's pool is.
 */
function poolConcurrency(
  http2: boolean,
  maxConnections: number | undefined,
): { connections?: number; pipelining?: number } {
  if (http2) return { connections: maxConnections ?? 1, pipelining: HTTP2_STREAMS_PER_CONNECTION };
  return maxConnections === undefined ? {} : { connections: maxConnections };
}

/**
 * The endpoints of one discovery path (`svc.ns.svc.cluster.local:port`): a destination watch, a peak-EWMA
 * P2C balancer, and one undici Pool per endpoint. Endpoints whose connect failed sit out a short
 * backoff, as linkerd2-proxy keeps an endpoint that cannot connect out of its ready set. Pools of
 * removed endpoints are closed gracefully: in-flight requests finish, nothing new is sent.
 */
export class EndpointGroup {
  readonly path: string;
  readonly #watch: Watch<EndpointSet> | undefined;
  readonly #balancer: Balancer<Endpoint>;
  readonly #breakers: GroupBreakers;
  readonly #settings: PoolSettings;
  readonly #pools = new Map<string, PoolEntry>();
  readonly #byEndpoint = new WeakMap<Endpoint, PoolEntry>();
  readonly #excluded = new Map<string, { untilMs: number; failures: number }>();
  readonly #waiters = new Set<() => void>();
  #set: EndpointSet | undefined;
  #exclusionTimer: NodeJS.Timeout | undefined;
  #closed = false;
  #unsubscribe: (() => void) | undefined;
  lastUsedMs = performance.now();
  inflight = 0;

  constructor(path: string, source: MeshDiscovery | readonly Endpoint[], settings: PoolSettings) {
    this.path = path;
    this.#settings = settings;
    this.#breakers = new GroupBreakers(() => this.#rebalance());
    this.#balancer = this.#breakers.balancer;
    if (Array.isArray(source)) {
      this.#apply(createEndpointSet(true, source as readonly Endpoint[]));
      return;
    }
    const watch = (source as MeshDiscovery).watchEndpoints(path);
    this.#watch = watch;
    this.#unsubscribe = watch.onUpdate((set) => this.#apply(set));
    const current = watch.current();
    if (current) this.#apply(current);
  }

  /** Resolves with the first discovery answer; rejects with a DestinationError. */
  async ready(signal: AbortSignal, timeoutMs: number): Promise<EndpointSet> {
    if (this.#set) return this.#set;
    if (!this.#watch) throw new MeshError(MeshErrorCode.INTERNAL, "endpoint group without a source");
    try {
      return await this.#watch.ready({ signal, timeoutMs });
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      throw error instanceof DestinationError
        ? error
        : new DestinationError(
            MeshErrorCode.DESTINATION_UNREACHABLE,
            `no discovery answer for ${this.path}: ${(error as Error)?.message}`,
            { cause: error },
          );
    }
  }

  get exists(): boolean {
    return this.#set?.exists ?? true;
  }

  endpointCount(): number {
    return this.#set?.size ?? 0;
  }

  /**
   * A balanced pick with its pool, or undefined when no endpoint is ready now.
   * @param nowMs the caller's reading of `performance.now()`, when it has one.
   */
  lease(nowMs: number = performance.now()): EndpointLease | undefined {
    this.lastUsedMs = nowMs;
    const pick = this.#balancer.tryPick();
    if (!pick) {
      this.#breakers.noneReady();
      return undefined;
    }
    const entry = this.#poolFor(pick.endpoint);
    return { pick, route: entry.route, pool: entry.pool };
  }

  /** Resolves when an endpoint may be ready (an update arrived or a backoff ended). */
  changed(signal: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        this.#waiters.delete(done);
        reject(signal.reason);
      };
      const done = () => {
        signal.removeEventListener("abort", onAbort);
        resolve();
      };
      if (signal.aborted) {
        reject(signal.reason);
        return;
      }
      this.#waiters.add(done);
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Circuit breaking of this backend's endpoints, from the outbound policy (see failure-accrual.ts). */
  setFailureAccrual(policy: FailureAccrualPolicy): void {
    this.#breakers.configure(policy);
  }

  /** Takes an endpoint out of the ready set for a short, growing backoff after a failed connect. */
  connectFailed(address: string): void {
    if (this.#closed || !this.#set?.get(address)) return;
    const previous = this.#excluded.get(address);
    const failures = (previous?.failures ?? 0) + 1;
    const base = Math.min(CONNECT_BACKOFF_MAX_MS, CONNECT_BACKOFF_MIN_MS * 2 ** Math.min(failures - 1, 8));
    const delayMs = base * (1 + 0.1 * secureRandom());
    this.#excluded.set(address, { untilMs: performance.now() + delayMs, failures });
    debug("outbound %s: endpoint %s failed to connect, backing off %d ms", this.path, address, delayMs);
    this.#rebalance();
  }

  /** A successful exchange ends an endpoint's connect backoff history. */
  connected(address: string): void {
    const entry = this.#excluded.get(address);
    if (entry && entry.untilMs <= performance.now()) this.#excluded.delete(address);
  }

  #apply(set: EndpointSet): void {
    if (this.#closed) return;
    const previous = this.#set;
    this.#set = set;
    // Usually one update's changes: only the endpoints it touched can have lost their pool.
    const changes = endpointSetChanges(previous, set);
    if (changes && previous) {
      for (const address of changes.removed) this.#retirePool(previous.get(address), undefined);
      for (const endpoint of changes.upserted) this.#retirePool(previous.get(endpoint.address), endpoint);
    } else if (this.#pools.size > 0) {
      const live = new Set<string>();
      for (const endpoint of set.endpoints) live.add(routeKey(endpointRoute(endpoint, this.#settings)));
      for (const [key, entry] of this.#pools) {
        if (live.has(key)) continue;
        this.#pools.delete(key);
        this.#drain(entry);
      }
    }
    for (const address of this.#excluded.keys()) if (!set.get(address)) this.#excluded.delete(address);
    this.#rebalance();
    if (destinationChanged.hasSubscribers)
      destinationChanged.publish({ authority: this.path, endpointCount: set.size });
  }

  /** Drains the pool of `old` unless `next` (its replacement, if any) keeps the same connection parameters. */
  #retirePool(old: Endpoint | undefined, next: Endpoint | undefined): void {
    if (old === undefined) return;
    const key = routeKey(endpointRoute(old, this.#settings));
    if (next !== undefined && routeKey(endpointRoute(next, this.#settings)) === key) return;
    const entry = this.#pools.get(key);
    if (entry === undefined) return;
    this.#pools.delete(key);
    this.#drain(entry);
  }

  #rebalance(): void {
    const set = this.#set;
    if (!set) return;
    const now = performance.now();
    let backingOff = false;
    for (const excluded of this.#excluded.values()) if (excluded.untilMs > now) backingOff = true;
    if (!backingOff) {
      // The balancer takes the set itself, and with it the update's changes, not a rebuilt list.
      if (this.#exclusionTimer) clearTimeout(this.#exclusionTimer);
      this.#exclusionTimer = undefined;
      this.#balancer.update(set);
      if (set.size > 0) this.#wakeWaiters();
      return;
    }
    let nextExpiry: number | undefined;
    const ready: Endpoint[] = [];
    for (const endpoint of set.endpoints) {
      const excluded = this.#excluded.get(endpoint.address);
      if (excluded && excluded.untilMs > now) {
        nextExpiry = nextExpiry === undefined ? excluded.untilMs : Math.min(nextExpiry, excluded.untilMs);
        continue;
      }
      ready.push(endpoint);
    }
    this.#balancer.update(ready);
    if (this.#exclusionTimer) clearTimeout(this.#exclusionTimer);
    this.#exclusionTimer = undefined;
    if (nextExpiry !== undefined) {
      this.#exclusionTimer = setTimeout(() => this.#rebalance(), Math.max(1, nextExpiry - now));
      this.#exclusionTimer.unref();
    }
    if (ready.length > 0) this.#wakeWaiters();
  }

  #wakeWaiters(): void {
    const waiters = [...this.#waiters];
    this.#waiters.clear();
    for (const wake of waiters) wake();
  }

  #poolFor(endpoint: Endpoint): PoolEntry {
    // Endpoint objects are immutable snapshots: the common case is one map lookup by identity.
    const known = this.#byEndpoint.get(endpoint);
    if (known && this.#pools.get(known.key) === known) return known;
    const route = endpointRoute(endpoint, this.#settings);
    const key = routeKey(route);
    let entry = this.#pools.get(key);
    if (!entry) {
      const settings = this.#settings;
      const pool = new Pool(`http://${endpoint.address}`, {
        connect: createEndpointConnector({
          route,
          identity: settings.identity,
          connectTimeoutMs: settings.connectTimeoutMs,
          localAddress: settings.localAddress,
        }),
        allowH2: route.http2,
        ...poolConcurrency(route.http2, settings.maxConnectionsPerEndpoint),
        ...(settings.keepAliveTimeoutMs !== undefined
          ? { keepAliveTimeout: settings.keepAliveTimeoutMs }
          : {}),
      });
      // Connection errors surface on the requests; the pool's own events need a listener only to stay quiet.
      pool.on("connectionError", () => {});
      entry = { key, route, pool };
      this.#pools.set(key, entry);
    }
    this.#byEndpoint.set(endpoint, entry);
    return entry;
  }

  #drain(entry: PoolEntry): void {
    entry.pool.close().catch((error: unknown) => {
      debug("outbound %s: closing pool %s failed: %s", this.path, entry.key, (error as Error)?.message);
    });
  }

  poolCount(): number {
    return this.#pools.size;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#unsubscribe?.();
    this.#breakers.close();
    if (this.#exclusionTimer) clearTimeout(this.#exclusionTimer);
    await this.#watch?.close();
    const pools = [...this.#pools.values()];
    this.#pools.clear();
    await Promise.allSettled(pools.map((entry) => entry.pool.close()));
  }

  destroy(reason: Error): void {
    this.#closed = true;
    this.#unsubscribe?.();
    this.#breakers.close();
    if (this.#exclusionTimer) clearTimeout(this.#exclusionTimer);
    this.#watch?.close().catch(() => undefined);
    for (const entry of this.#pools.values()) entry.pool.destroy(reason).catch(() => undefined);
    this.#pools.clear();
  }
}

/**
 * A logical target (the authority the application addressed): its default endpoint group, its
 * ServiceProfile and OutboundPolicy watches when discovery offers them, and the retry budget shared by
 * all requests to it.
 */
export class LogicalTarget {
  readonly authority: string;
  readonly group: EndpointGroup;
  readonly budget: RetryBudget;
  readonly #profile: Watch<ProfileState> | undefined;
  readonly #policy: Watch<OutboundPolicyState> | undefined;
  readonly #profileRoutes: boolean;
  readonly #policyRequired: boolean;
  readonly #routingListeners = new Set<(closed: boolean) => void>();
  #ready = false;

  constructor(
    authority: string,
    group: EndpointGroup,
    discovery: MeshDiscovery,
    watches: {
      readonly profile: boolean;
      readonly policy: boolean;
      /**
       * An address target: use only the profile's `endpoint`, never its routes, and require the
       * policy's answer.
       */
      readonly profileEndpointOnly?: boolean;
    },
  ) {
    this.authority = authority;
    this.group = group;
    this.#profileRoutes = watches.profileEndpointOnly !== true;
    this.#policyRequired = watches.profileEndpointOnly === true;
    this.budget = createRetryBudget();
    this.#profile = watches.profile ? optionalWatch(() => discovery.watchProfile?.(authority)) : undefined;
    this.#policy = watches.policy
      ? optionalWatch(() => discovery.watchOutboundPolicy?.(authority))
      : undefined;
  }

  /** The OutboundPolicy answer, once it arrived (undefined without a policy watch). */
  outboundPolicy(): OutboundPolicyState | undefined {
    return this.#policy?.current();
  }

  /**
   * Waits for the endpoints (required: a DestinationError otherwise) and, within the same bound, for the
   * profile and policy. A route source that does not answer in time leaves the default route in place.
   */
  async ready(signal: AbortSignal, timeoutMs: number): Promise<void> {
    if (this.#ready) return;
    const routing = Promise.allSettled(
      [this.#profile, this.#policy].map((watch) => watch?.ready({ signal, timeoutMs })),
    );
    await Promise.all([
      this.group.ready(signal, timeoutMs),
      routing,
      this.#requiredPolicy(signal, timeoutMs),
    ]);
    // Each caller waits with its own signal; once answered, later requests do not wait at all.
    this.#ready = true;
  }

  /**
   * An address is only what its OutboundPolicy says (a Service, an allowed or denied EgressNetwork):
   * without an answer the call fails rather than going out unchecked, as the proxy holds it too.
   */
  async #requiredPolicy(signal: AbortSignal, timeoutMs: number): Promise<void> {
    if (!this.#policyRequired || !this.#policy) return;
    try {
      await this.#policy.ready({ signal, timeoutMs });
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      throw new DestinationError(
        MeshErrorCode.DESTINATION_UNREACHABLE,
        `no outbound policy for ${this.authority} within ${timeoutMs} ms: ${(error as Error)?.message}`,
        { cause: error, details: { target: this.authority } },
      );
    }
  }

  /** True once the first answers arrived (requests then route synchronously). */
  get isReady(): boolean {
    return this.#ready;
  }

  routingModel(): RoutingModel {
    return chooseRoutingModel({
      profile: this.#profileRoutes ? this.#profile?.current() : undefined,
      policy: this.#policy?.current(),
    });
  }

  /**
   * For an address the policy controller does not know (a pod IP), the endpoint its profile describes,
   * when meshed: the proxy forwards to the original destination with that identity (mTLS).
   */
  meshedOriginalDestination(): Endpoint | undefined {
    if (this.#policy?.current()?.kind === "policy") return undefined;
    const profile = this.#profile?.current();
    const endpoint = profile?.kind === "profile" ? profile.endpoint : undefined;
    return endpoint?.tlsIdentity ? endpoint : undefined;
  }

  /** Calls `listener` after each ServiceProfile or OutboundPolicy answer, and with `true` once closed. */
  onRoutingChange(listener: (closed: boolean) => void): void {
    this.#routingListeners.add(listener);
    this.#profile?.onUpdate(() => listener(false));
    this.#policy?.onUpdate(() => listener(false));
  }

  async close(): Promise<void> {
    for (const listener of this.#routingListeners) listener(true);
    this.#routingListeners.clear();
    await Promise.allSettled([this.#profile?.close(), this.#policy?.close()]);
  }
}

function inNetworks(networks: readonly Cidr[] | undefined, ip: string): boolean {
  if (networks === undefined) return true;
  const parsed = parseIpAddress(ip);
  return parsed !== undefined && networks.some((cidr) => cidrContains(cidr, parsed.family, parsed.value));
}

/** An address with nothing known about it: plaintext, no protocol hint. */
function originalDestination(address: string, ip: string, port: number): Endpoint {
  return Object.freeze({
    address,
    host: ip,
    port,
    weight: 1,
    metricLabels: Object.freeze({}),
    protocolHint: undefined,
  });
}

function optionalWatch<T>(open: () => Watch<T> | undefined): Watch<T> | undefined {
  try {
    return open();
  } catch (error) {
    // No policy client or source workload configured: route with defaults, as without a controller.
    debug("outbound: route watch unavailable: %s", (error as Error)?.message);
    return undefined;
  }
}

export interface TargetRegistryOptions {
  readonly discovery: MeshDiscovery;
  readonly settings: PoolSettings;
  /** Watch ServiceProfiles and OutboundPolicies for routes, retries and timeouts. */
  readonly useRouting: boolean;
  /**
   * Addresses whose ServiceProfile is looked up (for a pod IP's identity), as the proxy's
   * `LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS`; others get only their OutboundPolicy. undefined: all.
   */
  readonly profileNetworks?: readonly Cidr[] | undefined;
  /** Most distinct authorities and discovery paths kept open at once. */
  readonly maxTargets: number;
  /** A target unused this long is closed (its watches and pools). */
  readonly idleTimeoutMs: number;
}

/**
 * Logical targets by authority and endpoint groups by discovery path, opened on first use and closed
 * when idle. Both maps are bounded: past `maxTargets`, idle entries are evicted first, and a new
 * authority is refused with `MESH_ERR_DESTINATION_WATCH_LIMIT` when nothing is idle.
 */
export class TargetRegistry {
  readonly #options: TargetRegistryOptions;
  readonly #targets = new Map<string, LogicalTarget & { lastUsedMs: number }>();
  readonly #groups = new Map<string, EndpointGroup>();
  readonly #accrual = new BackendFailureAccrual((path) => this.#groups.get(path));
  readonly #sweeper: NodeJS.Timeout;
  #closed = false;

  constructor(options: TargetRegistryOptions) {
    this.#options = options;
    this.#sweeper = setInterval(
      () => this.#sweep(),
      Math.max(1000, Math.min(60_000, options.idleTimeoutMs / 2)),
    );
    this.#sweeper.unref();
  }

  /** @param nowMs the caller's reading of `performance.now()`, when it has one (a clock read per call is not free). */
  target(authority: string, nowMs: number = performance.now()): LogicalTarget {
    this.#checkOpen();
    const existing = this.#targets.get(authority);
    if (existing) {
      existing.lastUsedMs = nowMs;
      return existing;
    }
    this.#makeRoom(this.#targets.size + this.#groups.size);
    const routing = this.#options.useRouting;
    const target = Object.assign(
      new LogicalTarget(authority, this.group(authority), this.#options.discovery, {
        profile: routing,
        policy: routing,
      }),
      { lastUsedMs: performance.now() },
    );
    this.#targets.set(authority, target);
    this.#accrual.follow(target);
    return target;
  }

  /** The target of `authority` if one is open, without opening one. */
  peek(authority: string): LogicalTarget | undefined {
    return this.#targets.get(authority);
  }

  /**
   * The target of an `ip:port` the application addressed (a cluster IP, a pod IP, an external address):
   * what it is comes from the OutboundPolicy looked up by address, as the proxy does for intercepted
   * traffic; until a route says otherwise it is the address itself, unmeshed.
   */
  addressTarget(address: string, ip: string, port: number): LogicalTarget {
    this.#checkOpen();
    const existing = this.#targets.get(address);
    if (existing) {
      existing.lastUsedMs = performance.now();
      return existing;
    }
    this.#makeRoom(this.#targets.size + this.#groups.size);
    const group = this.forwardGroup(originalDestination(address, ip, port));
    const target = Object.assign(
      new LogicalTarget(address, group, this.#options.discovery, {
        profile: inNetworks(this.#options.profileNetworks, ip),
        policy: true,
        profileEndpointOnly: true,
      }),
      { lastUsedMs: performance.now() },
    );
    this.#targets.set(address, target);
    this.#accrual.follow(target);
    return target;
  }

  group(path: string): EndpointGroup {
    this.#checkOpen();
    let group = this.#groups.get(path);
    if (!group) {
      this.#makeRoom(this.#targets.size + this.#groups.size);
      group = new EndpointGroup(path, this.#options.discovery, this.#options.settings);
      group.setFailureAccrual(this.#accrual.policyFor(path));
      this.#groups.set(path, group);
    }
    return group;
  }

  /** A group of one fixed endpoint (an OutboundPolicy `forward` backend). */
  forwardGroup(endpoint: Endpoint): EndpointGroup {
    const key = `forward:${endpoint.address}|${endpoint.tlsIdentity?.name ?? ""}`;
    this.#checkOpen();
    let group = this.#groups.get(key);
    if (!group) {
      this.#makeRoom(this.#targets.size + this.#groups.size);
      group = new EndpointGroup(key, [endpoint], this.#options.settings);
      this.#groups.set(key, group);
    }
    return group;
  }

  size(): { targets: number; groups: number } {
    return { targets: this.#targets.size, groups: this.#groups.size };
  }

  #checkOpen(): void {
    if (this.#closed) throw new MeshError(MeshErrorCode.CLOSED, "the mesh dispatcher is closed");
  }

  #makeRoom(count: number): void {
    if (count < this.#options.maxTargets) return;
    this.#evict(Number.POSITIVE_INFINITY, count - this.#options.maxTargets + 1);
    if (this.#targets.size + this.#groups.size >= this.#options.maxTargets) {
      throw new DestinationError(
        MeshErrorCode.DESTINATION_WATCH_LIMIT,
        `the mesh dispatcher already tracks ${this.#options.maxTargets} targets, none of them idle`,
        { details: { maxTargets: this.#options.maxTargets } },
      );
    }
  }

  #sweep(): void {
    this.#evict(this.#options.idleTimeoutMs, Number.POSITIVE_INFINITY);
  }

  /** Closes up to `count` entries idle for at least `idleMs`, least recently used first. */
  #evict(idleMs: number, count: number): void {
    const now = performance.now();
    const minIdle = Number.isFinite(idleMs) ? idleMs : 0;
    const candidates: { lastUsedMs: number; close: () => void }[] = [];
    const owned = new Set<EndpointGroup>();
    for (const target of this.#targets.values()) {
      const group = target.group;
      owned.add(group);
      const lastUsedMs = Math.max(target.lastUsedMs, group.lastUsedMs);
      if (now - lastUsedMs < minIdle || group.inflight > 0) continue;
      candidates.push({
        lastUsedMs,
        close: () => {
          // A target owns the group of its own authority: they go together.
          this.#targets.delete(target.authority);
          if (this.#groups.get(group.path) === group) this.#groups.delete(group.path);
          target.close().catch(() => undefined);
          group.close().catch(() => undefined);
        },
      });
    }
    for (const [path, group] of this.#groups) {
      if (owned.has(group) || group.inflight > 0 || now - group.lastUsedMs < minIdle) continue;
      candidates.push({
        lastUsedMs: group.lastUsedMs,
        close: () => {
          this.#groups.delete(path);
          group.close().catch(() => undefined);
        },
      });
    }
    candidates.sort((a, b) => a.lastUsedMs - b.lastUsedMs);
    for (const candidate of candidates.slice(0, count)) candidate.close();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#sweeper);
    const targets = [...this.#targets.values()];
    const groups = [...this.#groups.values()];
    this.#targets.clear();
    this.#groups.clear();
    await Promise.allSettled([...targets.map((t) => t.close()), ...groups.map((g) => g.close())]);
  }

  destroy(reason: Error): void {
    this.#closed = true;
    clearInterval(this.#sweeper);
    for (const target of this.#targets.values()) target.close().catch(() => undefined);
    for (const group of this.#groups.values()) group.destroy(reason);
    this.#targets.clear();
    this.#groups.clear();
  }
}
