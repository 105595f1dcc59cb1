import { type Cidr, ConfigError, parseCidr } from "@inmesh/core";
import { defaultRoute, network } from "./compile.js";
import { buildPolicy } from "./evaluator.js";
import {
  AUTHN_TLS_AUTHENTICATED,
  AUTHN_UNAUTHENTICATED,
  type AuthnKind,
  type IrAuthz,
  type IrHttpMatch,
  type IrNetwork,
} from "./ir.js";
import { defaultMeta, isAuditMeta } from "./meta.js";
import type { CompiledServerPolicy } from "./types.js";
import { indexedList } from "./util.js";

/** The default-policy names Linkerd accepts (`config.linkerd.io/default-inbound-policy`, `--default-policy`). */
export type DefaultPolicyName =
  | "all-unauthenticated"
  | "all-authenticated"
  | "cluster-unauthenticated"
  | "cluster-authenticated"
  | "deny"
  | "audit";

export const DEFAULT_POLICY_NAMES: readonly DefaultPolicyName[] = Object.freeze([
  "all-unauthenticated",
  "all-authenticated",
  "cluster-unauthenticated",
  "cluster-authenticated",
  "deny",
  "audit",
]);

export interface DefaultServerPolicyOptions {
  /** Networks for `cluster-*` (LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS), as CIDR strings or parsed CIDRs. */
  clusterNetworks?: readonly (string | Cidr)[];
  /** The port has protocol detection disabled (LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION). */
  opaque?: boolean;
  /** @default 10000 */
  detectTimeoutMs?: number;
  /** The port the policy serves, recorded on the policy for labels. */
  port?: number;
}

const U32 = 0xffffffffn;

export function cidrToNetwork(cidr: Cidr): IrNetwork {
  const v = cidr.address;
  if (cidr.family === 4) return network(4, [Number(v & U32), 0, 0, 0], cidr.prefixLength, []);
  return network(
    6,
    [Number((v >> 96n) & U32), Number((v >> 64n) & U32), Number((v >> 32n) & U32), Number(v & U32)],
    cidr.prefixLength,
    [],
  );
}

const ALL_NETWORKS: readonly IrNetwork[] = indexedList([
  network(4, [0, 0, 0, 0], 0, []),
  network(6, [0, 0, 0, 0], 0, []),
]);

export function isDefaultPolicyName(name: string): name is DefaultPolicyName {
  return (DEFAULT_POLICY_NAMES as readonly string[]).includes(name);
}

/**
 * The proxy's built-in policy for a port before (or without) the controller: `detect` with one
 * authorization named after the policy and a catch-all `default` route. Unlike controller policies,
 * these get NO `localhost` authorization, and `deny` is `opaque` with no authorizations at all, so every
 * connection (localhost and HTTP included) is closed.
 *
 * As in the proxy's env parsing, when `clusterNetworks` is empty every name other than `deny` and `all-*`
 * is refused, `audit` included.
 */
export function defaultServerPolicy(
  name: DefaultPolicyName,
  options: DefaultServerPolicyOptions = {},
): CompiledServerPolicy {
  if (!isDefaultPolicyName(name)) {
    throw new ConfigError(`unknown default inbound policy ${JSON.stringify(name)}`, {
      details: { variable: "LINKERD2_PROXY_INBOUND_DEFAULT_POLICY", value: name },
    });
  }
  const clusterNetworks = (options.clusterNetworks ?? []).map((n) => {
    const cidr = typeof n === "string" ? parseCidr(n) : n;
    return cidrToNetwork(cidr);
  });
  if (
    clusterNetworks.length === 0 &&
    name !== "deny" &&
    name !== "all-authenticated" &&
    name !== "all-unauthenticated"
  ) {
    throw new ConfigError(`default inbound policy ${name} requires cluster networks`, {
      details: { variable: "LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS", policy: name },
    });
  }
  const detectTimeoutMs = options.detectTimeoutMs ?? 10_000;
  if (!(detectTimeoutMs > 0) || !Number.isFinite(detectTimeoutMs)) {
    throw new ConfigError(`invalid detectTimeoutMs ${detectTimeoutMs}`);
  }
  const meta = defaultMeta(name);

  if (name === "deny") {
    return buildPolicy(
      {
        status: "default",
        meta,
        protocol: "opaque",
        detectTimeoutMs: undefined,
        connectionAuthorizations: [],
        httpRoutes: [],
        grpcRoutes: [],
      },
      options.port,
    );
  }

  const authn: AuthnKind = name.endsWith("-authenticated") ? AUTHN_TLS_AUTHENTICATED : AUTHN_UNAUTHENTICATED;
  const authz: IrAuthz = Object.freeze({
    meta,
    networks: name.startsWith("cluster-") ? indexedList(clusterNetworks) : ALL_NETWORKS,
    authn,
    identities: undefined,
    suffixes: undefined,
    suffixDots: indexedList([]),
    // `*-authenticated` is one empty suffix: any DNS-like client identity.
    anyDnsIdentity: authn === AUTHN_TLS_AUTHENTICATED,
    audit: isAuditMeta(meta),
  });
  const authorizations = indexedList([authz]);
  return buildPolicy(
    {
      status: "default",
      meta,
      protocol: options.opaque ? "opaque" : "detect",
      detectTimeoutMs: options.opaque ? undefined : detectTimeoutMs,
      connectionAuthorizations: authorizations,
      httpRoutes: options.opaque ? [] : [defaultRoute<IrHttpMatch>(authorizations)],
      grpcRoutes: [],
    },
    options.port,
  );
}
