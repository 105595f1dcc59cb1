import { type Cidr, ConfigError, formatIpAddress, isDnsName, parseCidr, parseIpAddress } from "@inmesh/core";

/** The six default inbound policy names (policy-semantics.md §2.1). */
export const DEFAULT_POLICY_NAMES = [
  "all-unauthenticated",
  "all-authenticated",
  "cluster-unauthenticated",
  "cluster-authenticated",
  "deny",
  "audit",
] as const;

export type DefaultPolicyName = (typeof DEFAULT_POLICY_NAMES)[number];

export function isDefaultPolicyName(value: unknown): value is DefaultPolicyName {
  return typeof value === "string" && (DEFAULT_POLICY_NAMES as readonly string[]).includes(value);
}

export interface ClusterOptions {
  /** @default "cluster.local" */
  clusterDomain?: string;
  /** @default "cluster.local" */
  trustDomain?: string;
  /** @default "linkerd" */
  controlPlaneNamespace?: string;
  /** Cluster default inbound policy (`--default-policy`). @default "all-unauthenticated" */
  defaultPolicy?: DefaultPolicyName;
  /** @default the chart's 10.0.0.0/8, 100.64.0.0/10, 172.16.0.0/12, 192.168.0.0/16, fd00::/8 */
  clusterNetworks?: string[];
  /** Networks allowed to reach kubelet probe routes; empty disables probe routes. @default 0.0.0.0/0, ::/0 */
  probeNetworks?: string[];
  /**
   * The chart's `proxy.outboundTransportMode`. `transport-header` (Linkerd 2.18's default): every meshed
   * endpoint is advertised with `opaque_transport`, so clients connect to the pod's inbound port with a
   * transport header. `transparent`: only opaque ports are.
   * @default "transport-header"
   */
  outboundTransportMode?: OutboundTransportMode;
  /**
   * The inbound (transport-header) port of pods that do not state one: no `linkerd-proxy` container with
   * `LINKERD2_PROXY_INBOUND_LISTEN_ADDR` and no `inmesh.dev/inbound-port` annotation. Local pods that
   * share an address need one each: give them the annotation.
   * @default 4143
   */
  proxyInboundPort?: number;
  /**
   * The policy controller's `--allow-l5d-request-headers`: outbound routes tell clients to honour (and
   * strip) the `l5d-retry-*`, `l5d-timeout`, `l5d-request-timeout` and `l5d-response-timeout` request
   * headers.
   * @default false
   */
  allowL5dRequestHeaders?: boolean;
}

export type OutboundTransportMode = "transport-header" | "transparent";
export const OUTBOUND_TRANSPORT_MODES: readonly OutboundTransportMode[] = ["transport-header", "transparent"];

export interface ResolvedClusterOptions {
  readonly clusterDomain: string;
  readonly trustDomain: string;
  readonly controlPlaneNamespace: string;
  readonly defaultPolicy: DefaultPolicyName;
  /** Canonical CIDR strings, in the order given. */
  readonly clusterNetworks: readonly string[];
  readonly probeNetworks: readonly string[];
  readonly outboundTransportMode: OutboundTransportMode;
  readonly proxyInboundPort: number;
  readonly allowL5dRequestHeaders: boolean;
}

export const CHART_CLUSTER_NETWORKS = [
  "10.0.0.0/8",
  "100.64.0.0/10",
  "172.16.0.0/12",
  "192.168.0.0/16",
  "fd00::/8",
] as const;
export const ALL_NETWORKS = ["0.0.0.0/0", "::/0"] as const;

function networkList(variable: string, value: unknown): string[] {
  if (!Array.isArray(value))
    throw new ConfigError(`${variable} must be an array of CIDR strings`, { details: { variable } });
  return value.map((item, index) => {
    if (typeof item !== "string") {
      throw new ConfigError(`${variable}[${index}] must be a CIDR string`, { details: { variable } });
    }
    let cidr: Cidr;
    try {
      cidr = parseCidr(item);
    } catch (error) {
      throw new ConfigError(`${variable}[${index}]: ${(error as Error).message}`, { details: { variable } });
    }
    return canonicalNetwork(item, cidr);
  });
}

function dnsOption(variable: string, value: unknown, fallback: string): string {
  if (value === undefined) return fallback;
  if (typeof value !== "string" || !isDnsName(value)) {
    throw new ConfigError(`${variable} must be a lower-case DNS name, got ${JSON.stringify(value)}`, {
      details: { variable },
    });
  }
  return value;
}

/** Validates once, at construction, and fills in the defaults. */
export function resolveClusterOptions(options: ClusterOptions): ResolvedClusterOptions {
  if (options.defaultPolicy !== undefined && !isDefaultPolicyName(options.defaultPolicy)) {
    throw new ConfigError(
      `defaultPolicy must be one of ${DEFAULT_POLICY_NAMES.join(", ")}, got ${JSON.stringify(options.defaultPolicy)}`,
      { details: { variable: "defaultPolicy" } },
    );
  }
  const mode = options.outboundTransportMode ?? "transport-header";
  if (!OUTBOUND_TRANSPORT_MODES.includes(mode)) {
    throw new ConfigError(
      `outboundTransportMode must be one of ${OUTBOUND_TRANSPORT_MODES.join(", ")}, got ${JSON.stringify(mode)}`,
      { details: { variable: "outboundTransportMode" } },
    );
  }
  const inboundPort = options.proxyInboundPort ?? 4143;
  if (!Number.isInteger(inboundPort) || inboundPort < 1 || inboundPort > 65535) {
    throw new ConfigError(`proxyInboundPort must be a port (1-65535), got ${String(inboundPort)}`, {
      details: { variable: "proxyInboundPort" },
    });
  }
  if (options.allowL5dRequestHeaders !== undefined && typeof options.allowL5dRequestHeaders !== "boolean") {
    throw new ConfigError(
      `allowL5dRequestHeaders must be a boolean, got ${JSON.stringify(options.allowL5dRequestHeaders)}`,
      { details: { variable: "allowL5dRequestHeaders" } },
    );
  }
  return {
    allowL5dRequestHeaders: options.allowL5dRequestHeaders ?? false,
    outboundTransportMode: mode,
    proxyInboundPort: inboundPort,
    clusterDomain: dnsOption("clusterDomain", options.clusterDomain, "cluster.local"),
    trustDomain: dnsOption("trustDomain", options.trustDomain, "cluster.local"),
    controlPlaneNamespace: dnsOption("controlPlaneNamespace", options.controlPlaneNamespace, "linkerd"),
    defaultPolicy: options.defaultPolicy ?? "all-unauthenticated",
    clusterNetworks: networkList("clusterNetworks", options.clusterNetworks ?? [...CHART_CLUSTER_NETWORKS]),
    probeNetworks: networkList("probeNetworks", options.probeNetworks ?? [...ALL_NETWORKS]),
  };
}

/** `10.1.2.3` → `10.1.2.3/32`; keeps host bits (as Linkerd does) but normalizes the address spelling. */
export function canonicalNetwork(text: string, cidr: Cidr = parseCidr(text)): string {
  const address = text.trim().split("/")[0] ?? "";
  const ip = parseIpAddress(address);
  return `${ip ? formatIpAddress(ip.family, ip.value) : address}/${cidr.prefixLength}`;
}
