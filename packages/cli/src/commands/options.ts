import { type ClusterOptions, DEFAULT_POLICY_NAMES, isDefaultPolicyName } from "@inmesh/control-plane";
import { parseDurationMs } from "@inmesh/core";
import { UsageError } from "../io.js";

export function parsePortOption(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d{1,5}$/.test(value) || Number(value) > 65535) {
    throw new UsageError(`--${flag} must be a port number 0-65535, got ${JSON.stringify(value)}`);
  }
  return Number(value);
}

export function parseDurationOption(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  try {
    return parseDurationMs(`--${flag}`, value);
  } catch {
    throw new UsageError(`--${flag} must be a duration like 30s, 10m or 24h, got ${JSON.stringify(value)}`);
  }
}

export function parseListOption(value: string | undefined): string[] | undefined {
  if (value === undefined) return undefined;
  return value
    .split(",")
    .map((item) => item.trim())
    .filter((item) => item !== "");
}

/** Options both commands take to know where the control plane listens. */
export const addressOptions = {
  host: { type: "string" },
  "identity-port": { type: "string" },
  "destination-port": { type: "string" },
  "policy-port": { type: "string" },
} as const;

/** Options both commands pass to the manifest model. */
export const clusterOptions = {
  "cluster-domain": { type: "string" },
  "trust-domain": { type: "string" },
  "control-plane-namespace": { type: "string" },
  "default-policy": { type: "string" },
  "cluster-networks": { type: "string" },
  "outbound-transport-mode": { type: "string" },
  "proxy-inbound-port": { type: "string" },
} as const;

export interface ParsedClusterFlags {
  "cluster-domain"?: string | undefined;
  "trust-domain"?: string | undefined;
  "control-plane-namespace"?: string | undefined;
  "default-policy"?: string | undefined;
  "cluster-networks"?: string | undefined;
  "outbound-transport-mode"?: string | undefined;
  "proxy-inbound-port"?: string | undefined;
}

export function clusterFromFlags(values: ParsedClusterFlags): ClusterOptions {
  const cluster: ClusterOptions = {};
  if (values["cluster-domain"] !== undefined) cluster.clusterDomain = values["cluster-domain"];
  if (values["trust-domain"] !== undefined) cluster.trustDomain = values["trust-domain"];
  if (values["control-plane-namespace"] !== undefined)
    cluster.controlPlaneNamespace = values["control-plane-namespace"];
  const policy = values["default-policy"];
  if (policy !== undefined) {
    if (!isDefaultPolicyName(policy)) {
      throw new UsageError(
        `--default-policy must be one of ${DEFAULT_POLICY_NAMES.join(", ")}, got ${JSON.stringify(policy)}`,
      );
    }
    cluster.defaultPolicy = policy;
  }
  const networks = parseListOption(values["cluster-networks"]);
  if (networks !== undefined) cluster.clusterNetworks = networks;
  const mode = values["outbound-transport-mode"];
  if (mode !== undefined) {
    if (mode !== "transport-header" && mode !== "transparent") {
      throw new UsageError(
        `--outbound-transport-mode must be transport-header or transparent, got ${JSON.stringify(mode)}`,
      );
    }
    cluster.outboundTransportMode = mode;
  }
  const inboundPort = parsePortOption("proxy-inbound-port", values["proxy-inbound-port"]);
  // 0 is no port here: the flag names where pods listen, not something to bind.
  if (inboundPort === 0) throw new UsageError("--proxy-inbound-port must be a port number 1-65535, got 0");
  if (inboundPort !== undefined) cluster.proxyInboundPort = inboundPort;
  return cluster;
}

/** Shared by `control-plane` and `env`, so both find the same CA and tokens without flags (git-ignored). */
export const DEFAULT_STATE_DIR = ".inmesh-state";
