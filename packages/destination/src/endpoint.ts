import { isDnsName } from "@inmesh/core";
import { type destination, ipAddressToString } from "@inmesh/proto";
import { boundedLabels, positiveDurationMs } from "./convert.js";
import { LIMITS } from "./limits.js";
import { metadataFromProto, type ResourceMetadata } from "./metadata.js";

/** The identity a client must verify on an endpoint, and the SNI it must send. */
export interface EndpointTlsIdentity {
  /** `dns`: a Linkerd identity such as `web.ns.serviceaccount.identity.linkerd.cluster.local`; `uri`: SPIFFE. */
  readonly kind: "dns" | "uri";
  readonly name: string;
  /** The TLS server name (SNI) to send; equals `name` for DNS-like identities of Linkerd pods. */
  readonly serverName: string;
}

/** HTTP/2 client parameters the controller asks for (contract §8.3, §10.5). */
export interface EndpointHttp2Params {
  readonly keepAliveIntervalMs?: number;
  readonly keepAliveTimeoutMs?: number;
  readonly keepAliveWhileIdle: boolean;
  readonly initialStreamWindowSize?: number;
  readonly initialConnectionWindowSize?: number;
  readonly maxFrameSize?: number;
}

/** One discovered endpoint, as the outbound dispatcher needs it. Immutable. */
export interface Endpoint {
  /** `ip:port`, IPv6 in brackets; unique within a set. */
  readonly address: string;
  /** The IP address, without brackets. */
  readonly host: string;
  readonly port: number;
  /** Controller weight (10000 by default). linkerd2-proxy does not balance on it, and neither do we. */
  readonly weight: number;
  /** Set-level labels merged with address-level labels (address wins); prefix with `dst_` for metrics. */
  readonly metricLabels: Readonly<Record<string, string>>;
  /** Present only for meshed endpoints: connect with mTLS and verify this identity. */
  readonly tlsIdentity?: EndpointTlsIdentity;
  /** `h2`: speak prior-knowledge HTTP/2; `opaque`: forward bytes only; undefined: no hint (HTTP/1 as is). */
  readonly protocolHint: "h2" | "opaque" | undefined;
  /** When set, connect to this port and send the transport header naming `port` (contract §4.4). */
  readonly opaqueTransportPort?: number;
  /** Multicluster gateways: the authority to send instead of the original one. */
  readonly authorityOverride?: string;
  readonly http2?: EndpointHttp2Params;
  readonly resourceRef?: ResourceMetadata;
}

/**
 * The endpoints of one authority at one point in time. Each update produces a new immutable snapshot.
 * `exists: false` means the controller says the service does not exist (a DNS fallback is allowed);
 * `exists: true` with no endpoints means it exists but nothing is ready.
 */
export interface EndpointSet {
  readonly exists: boolean;
  readonly endpoints: readonly Endpoint[];
  /** `endpoints.length`, without building the list (a derived set builds it on first read). */
  readonly size: number;
  get(address: string): Endpoint | undefined;
}

export function createEndpointSet(exists: boolean, endpoints: Iterable<Endpoint>): EndpointSet {
  const byAddress = new Map<string, Endpoint>();
  for (const endpoint of endpoints) byAddress.set(endpoint.address, endpoint);
  return new Snapshot(exists, byAddress, undefined, undefined);
}

/** How a set was derived from the previous one by a single update (see `endpointSetDelta`). */
export interface EndpointSetDelta {
  /** `snapshotId` of the set it was derived from. */
  readonly fromId: number;
  /** Endpoints added or replaced. */
  readonly upserted: readonly Endpoint[];
  /** Addresses removed (each was present). */
  readonly removed: readonly string[];
}

/** Past this many deltas a snapshot is flattened, so lookups stay O(1) and old snapshots are released. */
const MAX_CHAIN = 32;
let nextSnapshotId = 1;

/**
 * An immutable endpoint set. A set derived by one small update is stored as that update over the
 * previous snapshot, so applying it costs the size of the update, not of the set; `endpoints` is built
 * on first read. Every MAX_CHAIN updates the chain is flattened (amortised O(set / 32) per update).
 */
class Snapshot implements EndpointSet {
  readonly id = nextSnapshotId++;
  readonly exists: boolean;
  readonly delta: EndpointSetDelta | undefined;
  readonly size: number;
  readonly #flat: Map<string, Endpoint> | undefined;
  readonly #base: Snapshot | undefined;
  readonly #upserts: Map<string, Endpoint> | undefined;
  readonly #removed: Set<string> | undefined;
  readonly #depth: number;
  #list: readonly Endpoint[] | undefined;

  constructor(
    exists: boolean,
    flat: Map<string, Endpoint> | undefined,
    derived: { base: Snapshot; upserts: Map<string, Endpoint>; removed: Set<string> } | undefined,
    delta: EndpointSetDelta | undefined,
  ) {
    this.exists = exists;
    this.delta = delta;
    if (derived === undefined || derived.base.#depth + 1 > MAX_CHAIN) {
      this.#flat =
        flat ?? (derived ? applied(derived.base.#collect(), derived.upserts, derived.removed) : new Map());
      this.#depth = 0;
      this.size = this.#flat.size;
    } else {
      const { base, upserts, removed } = derived;
      this.#base = base;
      this.#upserts = upserts;
      this.#removed = removed;
      this.#depth = base.#depth + 1;
      let added = 0;
      for (const address of upserts.keys()) if (base.get(address) === undefined) added += 1;
      this.size = base.size + added - removed.size;
    }
    // Public fields frozen like the plain snapshots before; the private list cache stays writable.
    Object.freeze(this);
  }

  get(address: string): Endpoint | undefined {
    if (this.#flat !== undefined) return this.#flat.get(address);
    if (this.#removed?.has(address)) return undefined;
    return this.#upserts?.get(address) ?? this.#base?.get(address);
  }

  get endpoints(): readonly Endpoint[] {
    if (this.#list === undefined) {
      this.#list = Object.freeze([...(this.#flat ?? this.#collect()).values()]);
    }
    return this.#list;
  }

  /** A fresh Map of this snapshot: the flat root copied, then each delta applied, oldest first. */
  #collect(): Map<string, Endpoint> {
    const chain: Snapshot[] = [];
    let node: Snapshot = this;
    while (node.#flat === undefined) {
      chain.push(node);
      node = node.#base as Snapshot;
    }
    const map = new Map(node.#flat);
    for (let i = chain.length - 1; i >= 0; i -= 1) {
      const level = chain[i] as Snapshot;
      applied(map, level.#upserts, level.#removed);
    }
    return map;
  }
}

/** Applies one delta to `map` in place, with a Map's order (a replaced entry keeps its place). */
function applied(
  map: Map<string, Endpoint>,
  upserts: Map<string, Endpoint> | undefined,
  removed: Set<string> | undefined,
): Map<string, Endpoint> {
  if (removed) for (const address of removed) map.delete(address);
  if (upserts) for (const [address, endpoint] of upserts) map.set(address, endpoint);
  return map;
}

/**
 * For consumers that keep per-endpoint state (the balancer): when `set` came from the set whose
 * `snapshotId` is `previousId` by one update, what changed; otherwise undefined (rebuild from
 * `set.endpoints`).
 */
export function endpointSetDelta(
  set: EndpointSet,
  previousId: number | undefined,
): EndpointSetDelta | undefined {
  if (!(set instanceof Snapshot) || set.delta === undefined || previousId === undefined) return undefined;
  return set.delta.fromId === previousId ? set.delta : undefined;
}

/**
 * What changed from `previous` to `next` when `next` was derived from it by one published update (the
 * watch publishes every set this way, except after a reset); undefined otherwise: rebuild from `next`.
 * For consumers that keep per-endpoint state, so that an update costs what it changed.
 */
export function endpointSetChanges(
  previous: EndpointSet | undefined,
  next: EndpointSet,
): EndpointSetDelta | undefined {
  return previous === undefined ? undefined : endpointSetDelta(next, snapshotId(previous));
}

export function snapshotId(set: EndpointSet): number | undefined {
  return set instanceof Snapshot ? set.id : undefined;
}

export const NO_ENDPOINTS: EndpointSet = createEndpointSet(true, []);

function tlsIdentityFromProto(
  tls: destination.TlsIdentity | undefined,
): EndpointTlsIdentity | undefined | null {
  if (!tls?.strategy) return undefined;
  const serverName = tls.serverName?.name;
  if (serverName !== undefined && serverName !== "" && !isDnsName(serverName)) return null;
  if (tls.strategy.$case === "dnsLikeIdentity") {
    const name = tls.strategy.value.name;
    if (!isDnsName(name)) return null;
    return Object.freeze({ kind: "dns", name, serverName: serverName || name });
  }
  const uri = tls.strategy.value.uri;
  // A URI identity cannot double as an SNI: without a server name the endpoint cannot be verified.
  if (!/^[a-z][a-z0-9+.-]*:\/\/[\x21-\x7e]+$/i.test(uri) || uri.length > 2048 || !serverName) return null;
  return Object.freeze({ kind: "uri", name: uri, serverName });
}

/**
 * Converts the `WeightedAddr`s of one update. Everything the addresses of one message usually share is
 * computed once per message rather than once per address (set labels merged and validated, TLS identities
 * validated), so a 10,000-address update costs one pass and little garbage.
 */
export function createEndpointConverter(
  setLabels: { readonly [key: string]: string } = {},
): (addr: destination.WeightedAddr) => Endpoint | undefined {
  const sharedLabels = boundedLabels([setLabels]);
  const identities = new Map<string, EndpointTlsIdentity | undefined | null>();
  const identity = (tls: destination.TlsIdentity | undefined) => {
    const strategy = tls?.strategy;
    if (!strategy) return undefined;
    const name = strategy.$case === "dnsLikeIdentity" ? strategy.value.name : strategy.value.uri;
    const key = `${strategy.$case}\n${name}\n${tls.serverName?.name ?? ""}`;
    let converted = identities.get(key);
    if (converted === undefined && !identities.has(key)) {
      converted = tlsIdentityFromProto(tls);
      // Bounded: a hostile message may carry a distinct identity per address.
      if (identities.size < 1024) identities.set(key, converted);
    }
    return converted;
  };
  return (addr) => convertEndpoint(addr, setLabels, sharedLabels, identity);
}

/**
 * Converts one `WeightedAddr`. Returns undefined when the address is unusable: no IP, port out of range,
 * or a TLS identity that cannot be verified (never downgraded to plaintext).
 */
export function endpointFromProto(
  addr: destination.WeightedAddr,
  setLabels: { readonly [key: string]: string } = {},
): Endpoint | undefined {
  return createEndpointConverter(setLabels)(addr);
}

function isEmpty(labels: { readonly [key: string]: string } | undefined): boolean {
  for (const _ in labels) return false;
  return true;
}

function convertEndpoint(
  addr: destination.WeightedAddr,
  setLabels: { readonly [key: string]: string },
  sharedLabels: Readonly<Record<string, string>>,
  identity: (tls: destination.TlsIdentity | undefined) => EndpointTlsIdentity | undefined | null,
): Endpoint | undefined {
  const host = hostOf(addr.addr?.ip);
  const port = addr.addr?.port ?? 0;
  if (host === undefined || !Number.isInteger(port) || port < 1 || port > 65535) return undefined;
  const tlsIdentity = identity(addr.tlsIdentity);
  if (tlsIdentity === null) return undefined;
  // Address labels come second so they override set labels of the same name.
  const metricLabels = isEmpty(addr.metricLabels)
    ? sharedLabels
    : boundedLabels([setLabels, addr.metricLabels]);
  const hint = addr.protocolHint;
  const protocolHint =
    hint?.protocol?.$case === "h2" ? "h2" : hint?.protocol?.$case === "opaque" ? "opaque" : undefined;
  const transportPort = hint?.opaqueTransport?.inboundPort;
  const override = addr.authorityOverride?.authorityOverride;

  const endpoint: {
    -readonly [K in keyof Endpoint]: Endpoint[K];
  } = {
    address: host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`,
    host,
    port,
    weight: addr.weight,
    metricLabels,
    protocolHint,
  };
  if (tlsIdentity) endpoint.tlsIdentity = tlsIdentity;
  if (transportPort !== undefined && transportPort >= 1 && transportPort <= 65535)
    endpoint.opaqueTransportPort = transportPort;
  if (override !== undefined && override !== "" && override.length <= 512)
    endpoint.authorityOverride = override;
  if (addr.http2) {
    const keepAlive = addr.http2.keepAlive;
    const flow = addr.http2.flowControl;
    const params: { -readonly [K in keyof EndpointHttp2Params]: EndpointHttp2Params[K] } = {
      keepAliveWhileIdle: keepAlive?.whileIdle ?? false,
    };
    const interval = positiveDurationMs(keepAlive?.interval);
    const timeout = positiveDurationMs(keepAlive?.timeout);
    if (interval !== undefined) params.keepAliveIntervalMs = interval;
    if (timeout !== undefined) params.keepAliveTimeoutMs = timeout;
    if (flow?.initialStreamWindowSize) params.initialStreamWindowSize = flow.initialStreamWindowSize;
    if (flow?.initialConnectionWindowSize)
      params.initialConnectionWindowSize = flow.initialConnectionWindowSize;
    if (addr.http2.internals?.maxFrameSize) params.maxFrameSize = addr.http2.internals.maxFrameSize;
    endpoint.http2 = Object.freeze(params);
  }
  if (addr.resourceRef?.kind) endpoint.resourceRef = metadataFromProto(addr.resourceRef);
  return Object.freeze(endpoint);
}

function sameRecord(a: object | undefined, b: object | undefined): boolean {
  if (a === b) return true;
  if (a === undefined || b === undefined) return false;
  const left = a as Record<string, unknown>;
  const right = b as Record<string, unknown>;
  let count = 0;
  for (const key in left) {
    if (left[key] !== right[key]) return false;
    count += 1;
  }
  for (const _ in right) count -= 1;
  return count === 0;
}

/** Field by field (a resync re-adds every endpoint: no serialisation per endpoint). */
export function sameEndpoint(a: Endpoint, b: Endpoint): boolean {
  return (
    a === b ||
    (a.address === b.address &&
      a.weight === b.weight &&
      a.protocolHint === b.protocolHint &&
      a.opaqueTransportPort === b.opaqueTransportPort &&
      a.authorityOverride === b.authorityOverride &&
      sameRecord(a.metricLabels, b.metricLabels) &&
      sameRecord(a.tlsIdentity, b.tlsIdentity) &&
      sameRecord(a.http2, b.http2) &&
      JSON.stringify(a.resourceRef) === JSON.stringify(b.resourceRef))
  );
}

/**
 * The host part of an address. IPv4, nearly every address Linkerd sends, is formatted with plain number
 * arithmetic: the generic formatter goes through BigInt and cost ~2 µs an address, which made a 50,000-
 * address update spend most of its time here.
 */
function hostOf(ip: Parameters<typeof ipAddressToString>[0]): string | undefined {
  const inner = ip?.ip;
  if (inner?.$case === "ipv4") {
    const v = inner.value >>> 0;
    return `${v >>> 24}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
  }
  return ipAddressToString(ip);
}

export function addressKey(tcp: { ip?: Parameters<typeof ipAddressToString>[0]; port: number } | undefined) {
  const host = hostOf(tcp?.ip);
  if (host === undefined || tcp === undefined) return undefined;
  return host.includes(":") ? `[${host}]:${tcp.port}` : `${host}:${tcp.port}`;
}

/**
 * Endpoints beyond `LIMITS.maxEndpoints` are left out rather than the update refused: Linkerd endpoints
 * of one service are interchangeable replicas, so balancing over the first 10,000 is still correct,
 * while refusing would leave a very large service with no endpoints at all. Said once per process, as a
 * warning with a stable code, so that it is visible without flooding the log on every resync.
 */
let cappedWarned = false;
export function onEndpointsCapped(dropped: number): void {
  if (cappedWarned) return;
  cappedWarned = true;
  process.emitWarning(
    `a destination update exceeded the cap of ${LIMITS.maxEndpoints} endpoints per set; ${dropped} new ` +
      "addresses were left out (LIMITS.maxEndpoints)",
    { code: "MESH_DESTINATION_ENDPOINTS_CAPPED" },
  );
}

/**
 * A snapshot over `base` changed by one update; `base` may be any EndpointSet (then copied flat). The
 * snapshot keeps `upserts` and `removed`: the caller must not change them afterwards.
 */
export function deriveEndpointSet(
  base: EndpointSet,
  upserts: Map<string, Endpoint>,
  removed: Set<string>,
): EndpointSet {
  if (!(base instanceof Snapshot)) {
    const flat = new Map<string, Endpoint>();
    for (const endpoint of base.endpoints)
      if (!removed.has(endpoint.address)) flat.set(endpoint.address, endpoint);
    for (const [address, endpoint] of upserts) flat.set(address, endpoint);
    return new Snapshot(true, flat, undefined, undefined);
  }
  const delta: EndpointSetDelta = Object.freeze({
    fromId: base.id,
    upserted: Object.freeze([...upserts.values()]),
    removed: Object.freeze([...removed]),
  });
  // Over an empty set the upserts are the whole set: kept flat, with nothing to resolve on reads.
  if (base.size === 0 && removed.size === 0) return new Snapshot(true, upserts, undefined, delta);
  // A non-existent base (`exists: false`) is never derived from: applyEndpointUpdate starts from NO_ENDPOINTS.
  return new Snapshot(true, undefined, { base, upserts, removed }, delta);
}

/**
 * Applies one `Update` to the current set (contract §8.2). `fresh` marks the first message of a new
 * stream: it is applied to an empty state, so endpoints removed while disconnected do not linger.
 * Returns `previous` itself when nothing changed and undefined when the message is ignored (an `add`
 * with no valid address, or an empty oneof).
 */
export function applyEndpointUpdate(
  previous: EndpointSet | undefined,
  update: destination.Update,
  fresh: boolean,
): EndpointSet | undefined {
  const kind = update.update;
  if (!kind) return undefined;
  const base = fresh || previous === undefined || !previous.exists ? NO_ENDPOINTS : previous;
  switch (kind.$case) {
    case "noEndpoints": {
      const next = kind.value.exists ? NO_ENDPOINTS : createEndpointSet(false, []);
      return previous && previous.exists === next.exists && previous.endpoints.length === 0 ? previous : next;
    }
    case "add": {
      const convert = createEndpointConverter(kind.value.metricLabels);
      const upserts = new Map<string, Endpoint>();
      const current = (address: string) => upserts.get(address) ?? base.get(address);
      let size = base instanceof Snapshot ? base.size : base.endpoints.length;
      let valid = 0;
      let dropped = 0;
      for (const addr of kind.value.addrs) {
        // Past the cap only updates of known addresses can apply: new ones are not even converted, so the
        // work stays proportional to the cap, not to what the message holds.
        if (size >= LIMITS.maxEndpoints && current(addressKey(addr.addr) ?? "") === undefined) {
          dropped += 1;
          continue;
        }
        const endpoint = convert(addr);
        if (endpoint === undefined) continue;
        valid += 1;
        const existing = current(endpoint.address);
        if (existing !== undefined && sameEndpoint(existing, endpoint)) continue;
        if (existing === undefined) size += 1;
        upserts.set(endpoint.address, endpoint);
      }
      if (dropped > 0) onEndpointsCapped(dropped);
      if (valid === 0 && dropped === 0) return undefined;
      if (upserts.size === 0 && base === previous) return previous;
      return deriveEndpointSet(base, upserts, new Set());
    }
    case "remove": {
      const removed = new Set<string>();
      for (const tcp of kind.value.addrs) {
        const key = addressKey(tcp);
        if (key !== undefined && base.get(key) !== undefined) removed.add(key);
      }
      if (base === previous && removed.size === 0) return previous;
      return deriveEndpointSet(base, new Map(), removed);
    }
  }
}
