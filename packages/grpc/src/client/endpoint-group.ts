import { debuglog } from "node:util";
import {
  type ChannelCredentials,
  type ChannelOptions,
  connectivityState as ConnectivityState,
  Channel as GrpcChannel,
  credentials as grpcCredentials,
} from "@grpc/grpc-js";
import { DestinationError, MeshErrorCode, secureRandom } from "@inmesh/core";
import {
  type Balancer,
  type Pick as BalancerPick,
  createBalancer,
  type Endpoint,
  type EndpointSet,
  endpointSetChanges,
  type FailureAccrualPolicy,
  type Watch,
} from "@inmesh/destination";
import type { IdentityProvider } from "@inmesh/identity";
import { createMeshChannelCredentials } from "./credentials.js";
import { sourceAddressTarget } from "./local-address.js";

const debug = debuglog("mesh");

const CONNECT_BACKOFF_MIN_MS = 100;
const CONNECT_BACKOFF_MAX_MS = 500;

/** What every endpoint group of one mesh channel shares. */
export interface EndpointGroupSettings {
  /** `:authority` of every call: the logical target, whichever backend serves it. */
  readonly authority: string;
  readonly identity: IdentityProvider | undefined;
  readonly useTransportHeader: boolean;
  readonly localAddress: string | undefined;
  readonly channelOptions: ChannelOptions | undefined;
}

export interface EndpointChannel {
  readonly key: string;
  readonly endpoint: Endpoint;
  readonly channel: GrpcChannel;
  readonly identity: string | undefined;
  inflight: number;
  removed: boolean;
}

export interface Lease {
  readonly pick: BalancerPick<Endpoint>;
  readonly entry: EndpointChannel;
  readonly group: EndpointGroup;
}

/**
 * The endpoints of one backend (a `watchEndpoints` path): their balancer, with the failure accrual the
 * outbound policy gives, and one grpc-js channel per endpoint. The logical target is one group; a route
 * whose backends name other Services (a traffic split) adds a group per backend.
 */
export interface EndpointGroup {
  readonly path: string;
  /** A load-tracked endpoint channel, or undefined when no endpoint is ready now. */
  lease(): Lease | undefined;
  /** Resolves on the next change that may make an endpoint ready; rejects when `signal` aborts. */
  changed(signal: AbortSignal): Promise<void>;
  /** After the call of a lease ended: `cannotConnect` when its channel could not connect. */
  release(lease: Lease, cannotConnect: boolean): void;
  /** Replaces the breaker configuration (a new balancer; endpoints and their channels stay). */
  setFailureAccrual(policy: FailureAccrualPolicy): void;
  /** The latest discovery answer, if any. */
  current(): EndpointSet | undefined;
  readonly watch: Watch<EndpointSet>;
  channels(): Iterable<EndpointChannel>;
  endpointCount(): number;
  close(): void;
}

function channelKey(endpoint: Endpoint, useTransportHeader: boolean): string {
  return [
    endpoint.address,
    endpoint.tlsIdentity?.name ?? "",
    endpoint.tlsIdentity?.serverName ?? "",
    useTransportHeader ? (endpoint.opaqueTransportPort ?? "") : "",
  ].join("|");
}

export function createEndpointGroup(
  path: string,
  watch: Watch<EndpointSet>,
  settings: EndpointGroupSettings,
): EndpointGroup {
  // A probe's answer may make an endpoint ready again; only the balancer sees it.
  const balancer: Balancer<Endpoint> = createBalancer<Endpoint>({ onProbeSettled: () => wake() });
  const channels = new Map<string, EndpointChannel>();
  const excluded = new Map<string, { untilMs: number; failures: number }>();
  const waiters = new Set<() => void>();
  let current: EndpointSet | undefined;
  let exclusionTimer: NodeJS.Timeout | undefined;
  let probeTimer: NodeJS.Timeout | undefined;
  let closed = false;

  const closeEntry = (entry: EndpointChannel) => {
    channels.delete(entry.key);
    entry.channel.close();
  };

  const wake = () => {
    if (waiters.size === 0) return;
    const wakeAll = [...waiters];
    waiters.clear();
    for (const fn of wakeAll) fn();
  };

  /** With every endpoint ejected, waiters wake when the first breaker lets a probe through. */
  const armProbeTimer = () => {
    if (probeTimer || waiters.size === 0 || balancer.readyCount() > 0) return;
    const inMs = balancer.nextReadyInMs();
    if (inMs === undefined) return;
    probeTimer = setTimeout(
      () => {
        probeTimer = undefined;
        wake();
      },
      Math.max(1, Math.ceil(inMs)),
    );
    probeTimer.unref();
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
      if (current.size > 0) wake();
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
    if (ready.length > 0) wake();
  };

  const retire = (entry: EndpointChannel) => {
    entry.removed = true;
    // Calls in flight finish on the old channel; it closes with the last of them.
    if (entry.inflight === 0) closeEntry(entry);
  };

  /** Retires the channel of `old` unless `next` (its replacement, if any) keeps its parameters. */
  const retireChanged = (old: Endpoint | undefined, next: Endpoint | undefined) => {
    if (old === undefined) return;
    const key = channelKey(old, settings.useTransportHeader);
    if (next !== undefined && channelKey(next, settings.useTransportHeader) === key) return;
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
      const live = new Set(
        set.endpoints.map((endpoint) => channelKey(endpoint, settings.useTransportHeader)),
      );
      for (const entry of [...channels.values()]) if (!live.has(entry.key)) retire(entry);
    }
    for (const address of excluded.keys()) if (!set.get(address)) excluded.delete(address);
    rebalance();
  };
  const unsubscribe = watch.onUpdate(apply);
  const initial = watch.current();
  if (initial) apply(initial);

  const channelFor = (endpoint: Endpoint): EndpointChannel => {
    const key = channelKey(endpoint, settings.useTransportHeader);
    let entry = channels.get(key);
    if (entry) return entry;
    const tls = endpoint.tlsIdentity;
    const viaTransportHeader =
      tls !== undefined && settings.useTransportHeader && endpoint.opaqueTransportPort !== undefined;
    const host = endpoint.host.includes(":") ? `[${endpoint.host}]` : endpoint.host;
    const port = viaTransportHeader ? (endpoint.opaqueTransportPort as number) : endpoint.port;
    const target =
      settings.localAddress !== undefined
        ? sourceAddressTarget(settings.localAddress, endpoint.host, port)
        : `${endpoint.host.includes(":") ? "ipv6" : "ipv4"}:${host}:${port}`;
    let credentials: ChannelCredentials;
    if (tls) {
      const identity = settings.identity;
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
      ...settings.channelOptions,
      "grpc.default_authority": settings.authority,
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

  const connectFailed = (address: string) => {
    if (closed || !current?.get(address)) return;
    const failures = (excluded.get(address)?.failures ?? 0) + 1;
    const base = Math.min(CONNECT_BACKOFF_MAX_MS, CONNECT_BACKOFF_MIN_MS * 2 ** Math.min(failures - 1, 8));
    excluded.set(address, { untilMs: performance.now() + base * (1 + 0.1 * secureRandom()), failures });
    rebalance();
  };

  const group: EndpointGroup = {
    path,
    watch,
    lease() {
      if (closed) return undefined;
      const pick = balancer.tryPick();
      if (!pick) return undefined;
      try {
        return { pick, entry: channelFor(pick.endpoint), group };
      } catch (error) {
        pick.onComplete("canceled");
        throw error;
      }
    },
    changed(signal) {
      return new Promise((resolve, reject) => {
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
        armProbeTimer();
      });
    },
    release(lease, cannotConnect) {
      const entry = lease.entry;
      // UNAVAILABLE while the endpoint's channel cannot connect: give the endpoint a backoff, as
      // linkerd2-proxy keeps an endpoint that fails to connect out of its ready set.
      if (
        cannotConnect &&
        entry.channel.getConnectivityState(false) === ConnectivityState.TRANSIENT_FAILURE
      ) {
        connectFailed(lease.pick.endpoint.address);
      }
      entry.inflight -= 1;
      if (entry.removed && entry.inflight === 0 && channels.get(entry.key) === entry) closeEntry(entry);
      // An outcome may have reopened (or closed) a breaker; a waiter may now find an endpoint.
      if (waiters.size > 0) {
        if (balancer.readyCount() > 0) wake();
        else armProbeTimer();
      }
    },
    setFailureAccrual(policy) {
      if (closed) return;
      debug("grpc channel %s: failure accrual %s for %s", settings.authority, policy.kind, path);
      // Same settings keep every breaker; new ones start every endpoint afresh (the balancer decides).
      balancer.setFailureAccrual(policy);
      if (balancer.readyCount() > 0) wake();
    },
    current: () => current,
    channels: () => channels.values(),
    endpointCount: () => current?.size ?? 0,
    close() {
      if (closed) return;
      closed = true;
      unsubscribe();
      if (exclusionTimer) clearTimeout(exclusionTimer);
      if (probeTimer) clearTimeout(probeTimer);
      wake();
      watch.close().catch(() => undefined);
      for (const entry of [...channels.values()]) closeEntry(entry);
    },
  };
  return group;
}
