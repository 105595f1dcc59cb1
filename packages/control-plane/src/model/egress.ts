/**
 * EgressNetwork (policy.linkerd.io/v1alpha1) and the outbound policies of addresses outside every
 * Service, as the policy controller serves them (`policy-controller/k8s/index/src/outbound/index/
 * egress_network.rs`, `runtime/src/lib.rs` `lookup_ip`, `grpc/src/outbound.rs` `fallback`,
 * `outbound/http.rs` and `outbound/tcp.rs` `default_outbound_egress_route`).
 */
import { type Cidr, cidrContains, formatIpAddress, parseCidr, parseIpAddress } from "@inmesh/core";
import { durationFromMs, type meta, type outbound, tcpAddressFromString } from "@inmesh/proto";
import type { JsonObject, Reader } from "./reader.js";
import { type Meta, parseMeta } from "./resources.js";

/** Where EgressNetworks apply to every namespace (the chart's `egress.globalEgressNetworkNamespace`). */
export const GLOBAL_EGRESS_NETWORK_NAMESPACE = "linkerd-egress";

const DETECT_TIMEOUT_MS = 10_000;
const QUEUE_CAPACITY = 100;
const QUEUE_FAILFAST_MS = 3_000;

export interface EgressNetworkRange {
  readonly cidr: Cidr;
  readonly except: readonly Cidr[];
}

export interface EgressNetworkRes {
  readonly meta: Meta;
  /** undefined: everything outside the cluster networks (Linkerd's default). */
  readonly networks: readonly EgressNetworkRange[] | undefined;
  readonly trafficPolicy: "Allow" | "Deny";
}

export function parseEgressNetwork(r: Reader, doc: JsonObject): EgressNetworkRes | undefined {
  const meta = parseMeta(r, doc, true);
  const spec = r.object(doc, "spec", "spec", true) ?? {};
  const trafficPolicy = r.string(spec, "trafficPolicy", "spec.trafficPolicy", true);
  if (trafficPolicy !== undefined && trafficPolicy !== "Allow" && trafficPolicy !== "Deny") {
    r.fail("spec.trafficPolicy", `must be Allow or Deny, got ${JSON.stringify(trafficPolicy)}`);
  }
  let networks: EgressNetworkRange[] | undefined;
  if (r.raw(spec, "networks") !== undefined) {
    networks = [];
    for (const [item, field] of r.objects(spec, "networks", "spec.networks")) {
      const cidr = cidrAt(r, r.string(item, "cidr", `${field}.cidr`, true), `${field}.cidr`);
      const except: Cidr[] = [];
      for (const [index, text] of (r.strings(item, "except", `${field}.except`) ?? []).entries()) {
        const parsed = cidrAt(r, text, `${field}.except[${index}]`);
        if (parsed) except.push(parsed);
      }
      if (cidr) networks.push({ cidr, except });
    }
  }
  if (!meta || (trafficPolicy !== "Allow" && trafficPolicy !== "Deny")) return undefined;
  return { meta, networks, trafficPolicy };
}

function cidrAt(r: Reader, text: string | undefined, field: string): Cidr | undefined {
  if (text === undefined) return undefined;
  try {
    return parseCidr(text);
  } catch {
    return r.fail(field, `${JSON.stringify(text)} is not a CIDR`);
  }
}

const blockSize = (cidr: Cidr): bigint => 1n << BigInt((cidr.family === 4 ? 32 : 128) - cidr.prefixLength);

/** The smallest of `networks` holding the address (its size), or undefined. */
function matchedSize(
  networks: readonly EgressNetworkRange[],
  ip: { family: 4 | 6; value: bigint },
): bigint | undefined {
  let best: bigint | undefined;
  for (const network of networks) {
    if (!cidrContains(network.cidr, ip.family, ip.value)) continue;
    if (network.except.some((cidr) => cidrContains(cidr, ip.family, ip.value))) continue;
    const size = blockSize(network.cidr);
    if (best === undefined || size < best) best = size;
  }
  return best;
}

/**
 * The EgressNetwork an address belongs to: those of the source namespace if it has any, else those of
 * the global namespace; the most specific network wins, then the oldest resource, then namespace/name.
 */
export function resolveEgressNetwork(
  egressNetworks: readonly EgressNetworkRes[],
  clusterNetworks: readonly Cidr[],
  ipText: string,
  sourceNamespace: string,
): EgressNetworkRes | undefined {
  const ip = parseIpAddress(ipText);
  if (!ip) return undefined;
  const local = egressNetworks.filter((n) => n.meta.namespace === sourceNamespace);
  const candidates =
    local.length > 0
      ? local
      : egressNetworks.filter((n) => n.meta.namespace === GLOBAL_EGRESS_NETWORK_NAMESPACE);
  const outsideCluster: EgressNetworkRange[] = [
    { cidr: parseCidr("0.0.0.0/0"), except: clusterNetworks.filter((c) => c.family === 4) },
    { cidr: parseCidr("::/0"), except: clusterNetworks.filter((c) => c.family === 6) },
  ];
  let best: { network: EgressNetworkRes; size: bigint } | undefined;
  for (const network of candidates) {
    const size = matchedSize(network.networks ?? outsideCluster, ip);
    if (size === undefined) continue;
    if (!best || compare(network, size, best.network, best.size) < 0) best = { network, size };
  }
  return best?.network;
}

function compare(a: EgressNetworkRes, aSize: bigint, b: EgressNetworkRes, bSize: bigint): number {
  if (aSize !== bSize) return aSize < bSize ? -1 : 1;
  const at = a.meta.creationTimestampMs ?? Number.POSITIVE_INFINITY;
  const bt = b.meta.creationTimestampMs ?? Number.POSITIVE_INFINITY;
  if (at !== bt) return at < bt ? -1 : 1;
  return `${a.meta.namespace}/${a.meta.name}`.localeCompare(`${b.meta.namespace}/${b.meta.name}`);
}

export function isInClusterNetworks(clusterNetworks: readonly Cidr[], ipText: string): boolean {
  const ip = parseIpAddress(ipText);
  return ip !== undefined && clusterNetworks.some((cidr) => cidrContains(cidr, ip.family, ip.value));
}

function forwardBackend(metadata: meta.Metadata, ip: string, port: number): outbound.Backend {
  return {
    metadata,
    queue: { capacity: QUEUE_CAPACITY, failfastTimeout: durationFromMs(QUEUE_FAILFAST_MS) },
    kind: {
      $case: "forward",
      value: {
        addr: tcpAddressFromString(canonical(ip), port),
        weight: 1,
        metricLabels: {},
        tlsIdentity: undefined,
        protocolHint: undefined,
        authorityOverride: undefined,
        http2: undefined,
        resourceRef: undefined,
      },
    },
  };
}

function canonical(ip: string): string {
  const parsed = parseIpAddress(ip);
  return parsed ? formatIpAddress(parsed.family, parsed.value) : ip;
}

function detectPolicy(
  metadata: meta.Metadata,
  httpRoute: outbound.HttpRoute,
  opaqueRoute: outbound.OpaqueRoute,
): outbound.OutboundPolicy {
  return {
    metadata,
    protocol: {
      kind: {
        $case: "detect",
        value: {
          timeout: durationFromMs(DETECT_TIMEOUT_MS),
          opaque: { routes: [opaqueRoute] },
          http1: { routes: [httpRoute], failureAccrual: undefined },
          http2: { routes: [httpRoute], failureAccrual: undefined },
        },
      },
    },
  };
}

const firstAvailable = (backend: outbound.Backend): outbound.OpaqueRoute_Distribution => ({
  kind: { $case: "firstAvailable", value: { backends: [{ backend, filters: [] }] } },
});

const httpFirstAvailable = (backend: outbound.Backend): outbound.HttpRoute_Distribution => ({
  kind: {
    $case: "firstAvailable",
    value: { backends: [{ backend, filters: [], requestTimeout: undefined }] },
  },
});

/** The policy of an address in an EgressNetwork: forward to the original destination, or refuse. */
export function egressNetworkPolicy(
  network: EgressNetworkRes,
  ip: string,
  port: number,
): outbound.OutboundPolicy {
  const metadata: meta.Metadata = {
    kind: {
      $case: "resource",
      value: {
        group: "policy.linkerd.io",
        kind: "EgressNetwork",
        name: network.meta.name,
        namespace: network.meta.namespace,
        section: "",
        port,
      },
    },
  };
  const backend = forwardBackend(metadata, ip, port);
  const deny = network.trafficPolicy === "Deny";
  const httpRoute: outbound.HttpRoute = {
    metadata: { kind: { $case: "default", value: deny ? "http-egress-deny" : "http-egress-allow" } },
    hosts: [],
    rules: [
      {
        matches: [
          {
            path: { kind: { $case: "prefix", value: "/" } },
            headers: [],
            queryParams: [],
            method: undefined,
          },
        ],
        filters: deny
          ? [
              {
                kind: {
                  $case: "failureInjector",
                  value: { status: 403, message: "traffic not allowed", ratio: undefined },
                },
              },
            ]
          : [],
        backends: httpFirstAvailable(backend),
        requestTimeout: undefined,
        timeouts: { request: undefined, response: undefined, idle: undefined },
        retry: undefined,
        allowL5dRequestHeaders: false,
      },
    ],
  };
  const opaqueRoute: outbound.OpaqueRoute = {
    metadata: { kind: { $case: "default", value: deny ? "tcp-egress-deny" : "tcp-egress-allow" } },
    rules: [
      {
        backends: firstAvailable(backend),
        filters: deny ? [{ kind: { $case: "forbidden", value: {} } }] : [],
      },
    ],
  };
  return detectPolicy(metadata, httpRoute, opaqueRoute);
}

/** An address outside the cluster networks and every EgressNetwork: forwarded as addressed. */
export function egressFallbackPolicy(ip: string, port: number): outbound.OutboundPolicy {
  const metadata: meta.Metadata = { kind: { $case: "default", value: "egress-fallback" } };
  const backend = forwardBackend(metadata, ip, port);
  const httpRoute: outbound.HttpRoute = {
    metadata,
    hosts: [],
    rules: [
      {
        matches: [{ path: undefined, headers: [], queryParams: [], method: undefined }],
        filters: [],
        backends: httpFirstAvailable(backend),
        requestTimeout: undefined,
        timeouts: undefined,
        retry: undefined,
        allowL5dRequestHeaders: false,
      },
    ],
  };
  const opaqueRoute: outbound.OpaqueRoute = {
    metadata,
    rules: [{ backends: firstAvailable(backend), filters: [] }],
  };
  return detectPolicy(metadata, httpRoute, opaqueRoute);
}

/**
 * Cluster IPs for Services that declare none (a dev manifest rarely does): stable per namespace/name, in
 * 10.96.0.0/12 as kube-apiserver's default range, never clashing with a declared one. Headless
 * (`clusterIP: None`) and ExternalName Services get none.
 */
export function assignClusterIp(taken: Set<string>, namespace: string, name: string): string {
  let hash = 2166136261;
  for (const char of `${namespace}/${name}`) {
    hash ^= char.charCodeAt(0);
    hash = Math.imul(hash, 16777619) >>> 0;
  }
  const size = 1 << 20;
  for (let probe = 0; probe < size; probe++) {
    const offset = (hash + probe) % size;
    if (offset < 10) continue;
    const value = (10n << 24n) | (96n << 16n) | BigInt(offset);
    const ip = formatIpAddress(4, value);
    if (!taken.has(ip)) {
      taken.add(ip);
      return ip;
    }
  }
  throw new Error("no free cluster IP in 10.96.0.0/12");
}
