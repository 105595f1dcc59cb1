import {
  type Cidr,
  ConfigError,
  type ControlPlaneAddress,
  type Env,
  type HostPort,
  isLoopbackHost,
  parseBooleanEnv,
  parseCidrList,
  parseControlPlaneAddress,
  parseDurationMs,
  parseHostPort,
  parseIpAddress,
  parsePortList,
  readEnv,
} from "@inmesh/core";
import { DEFAULT_POLICY_NAMES, type DefaultPolicyName, isDefaultPolicyName } from "@inmesh/policy";

/** The Linkerd chart's default cluster networks. */
export const DEFAULT_CLUSTER_NETWORKS = "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8";

/** Everything createMesh needs besides identity, resolved once from options over the environment. */
export interface MeshConfig {
  readonly policy:
    | {
        readonly address: ControlPlaneAddress;
        /** Sent verbatim as PortSpec.workload, like the proxy does. */
        readonly workload: string;
      }
    | undefined;
  readonly destination:
    | {
        readonly address: ControlPlaneAddress;
        /** Sent verbatim as GetDestination.context_token. */
        readonly contextToken: string;
      }
    | undefined;
  /** Ports the service serves: each gets a policy watch before `ready()` resolves. */
  readonly inboundPorts: readonly number[];
  /** Ports that start with the opaque variant of the default policy. */
  readonly opaquePorts: ReadonlySet<number>;
  readonly defaultPolicy: DefaultPolicyName;
  readonly clusterNetworks: readonly Cidr[];
  readonly clusterNetworksText: string;
  /** Where meshed clients send transport-header connections (Linkerd's inbound port, 4143). */
  readonly inboundListen: HostPort | undefined;
  readonly admin: HostPort;
  /** The pod's own addresses (`LINKERD2_PROXY_INBOUND_IPS`): the admin server treats them as local. */
  readonly podAddresses: readonly string[];
  /** Source address of outbound connections; undefined lets the kernel choose (the pod IP). */
  readonly outboundLocalAddress: string | undefined;
  readonly shutdownGraceMs: number;
  /** HTTP/2 keep-alive of the inbound servers (undefined: the server's default). */
  readonly http2KeepAliveIntervalMs: number | undefined;
  readonly http2KeepAliveTimeoutMs: number | undefined;
}

export interface MeshConfigOptions {
  policyAddress?: string;
  policyServerName?: string;
  workload?: string;
  destinationAddress?: string;
  destinationServerName?: string;
  contextToken?: string;
  inboundPorts?: readonly number[];
  defaultPolicy?: DefaultPolicyName;
  clusterNetworks?: string;
  /** `host:port` for the admin server. @default LINKERD2_PROXY_ADMIN_LISTEN_ADDR, else "127.0.0.1:4191" */
  adminAddress?: string;
  /**
   * The admin server binds the address it is given (the injector's `0.0.0.0:4191`, so kubelet probes
   * and linkerd-viz scrapes reach it); off the pod it answers only `/metrics`, `/ready` and `/live`.
   * `false` (`MESH_SDK_ADMIN_ALLOW_NON_LOOPBACK=false`) is for operators who want it on loopback only:
   * a non-loopback admin address is then refused with a ConfigError, never silently rebound.
   * @default true
   */
  allowNonLoopbackAdmin?: boolean;
  /** Source address of outbound connections (`MESH_SDK_OUTBOUND_LOCAL_ADDRESS`). @default the kernel's choice */
  outboundLocalAddress?: string;
  /** @default 120000, as Linkerd drains for up to 2 minutes */
  shutdownGraceMs?: number;
}

const ENV = {
  policyAddr: "LINKERD2_PROXY_POLICY_SVC_ADDR",
  workload: "LINKERD2_PROXY_POLICY_WORKLOAD",
  clusterNetworks: "LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS",
  context: "LINKERD2_PROXY_DESTINATION_CONTEXT",
  defaultPolicy: "LINKERD2_PROXY_INBOUND_DEFAULT_POLICY",
  inboundPorts: "LINKERD2_PROXY_INBOUND_PORTS",
  opaquePorts: "LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION",
  inboundListen: "LINKERD2_PROXY_INBOUND_LISTEN_ADDR",
  adminListen: "LINKERD2_PROXY_ADMIN_LISTEN_ADDR",
  inboundIps: "LINKERD2_PROXY_INBOUND_IPS",
  allowNonLoopbackAdmin: "MESH_SDK_ADMIN_ALLOW_NON_LOOPBACK",
  shutdownGrace: "LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD",
  outboundLocalAddress: "MESH_SDK_OUTBOUND_LOCAL_ADDRESS",
  http2KeepAliveInterval: "LINKERD2_PROXY_INBOUND_SERVER_HTTP2_KEEP_ALIVE_INTERVAL",
  http2KeepAliveTimeout: "LINKERD2_PROXY_INBOUND_SERVER_HTTP2_KEEP_ALIVE_TIMEOUT",
} as const;

function controlPlaneAddress(
  env: Env,
  prefix: string,
  address: string | undefined,
  serverName: string | undefined,
): ControlPlaneAddress | undefined {
  const overridden: Record<string, string | undefined> = { ...env };
  if (address !== undefined) overridden[`${prefix}_SVC_ADDR`] = address;
  if (serverName !== undefined) overridden[`${prefix}_SVC_NAME`] = serverName;
  return parseControlPlaneAddress(overridden, prefix);
}

function parseDefaultPolicy(variable: string, value: string): DefaultPolicyName {
  if (isDefaultPolicyName(value)) return value;
  throw new ConfigError(
    `${variable}=${JSON.stringify(value)} is invalid: expected one of ${DEFAULT_POLICY_NAMES.join(", ")}`,
    {
      details: { variable },
    },
  );
}

/**
 * Reads the `LINKERD2_PROXY_*` variables the Linkerd injector sets (linkerd-contract.md §2.1), with
 * options taking precedence, and rejects contradictions the proxy rejects too.
 */
export function resolveMeshConfig(env: Env, options: MeshConfigOptions = {}): MeshConfig {
  const policyAddress = controlPlaneAddress(
    env,
    "LINKERD2_PROXY_POLICY",
    options.policyAddress,
    options.policyServerName,
  );
  // The proxy sends the value verbatim, trailing newline included; blank counts as unset.
  const workload =
    options.workload ?? (readEnv(env, ENV.workload) === undefined ? undefined : env[ENV.workload]);
  if (policyAddress && workload === undefined) {
    throw new ConfigError(`${ENV.workload} is required when ${ENV.policyAddr} is set`, {
      details: { variable: ENV.workload },
    });
  }
  const destinationAddress = controlPlaneAddress(
    env,
    "LINKERD2_PROXY_DESTINATION",
    options.destinationAddress,
    options.destinationServerName,
  );

  const defaultPolicyText = options.defaultPolicy ?? readEnv(env, ENV.defaultPolicy) ?? "all-unauthenticated";
  const defaultPolicy = parseDefaultPolicy(ENV.defaultPolicy, defaultPolicyText);
  const clusterNetworksText =
    options.clusterNetworks ?? readEnv(env, ENV.clusterNetworks) ?? DEFAULT_CLUSTER_NETWORKS;
  const clusterNetworks = parseCidrList(ENV.clusterNetworks, clusterNetworksText);

  const inboundPortsText = readEnv(env, ENV.inboundPorts);
  const inboundPorts =
    options.inboundPorts ?? (inboundPortsText ? [...parsePortList(ENV.inboundPorts, inboundPortsText)] : []);
  for (const port of inboundPorts) {
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      throw new ConfigError(`inbound port ${port} is outside 1-65535`, {
        details: { variable: ENV.inboundPorts },
      });
    }
  }
  const opaqueText = readEnv(env, ENV.opaquePorts);
  const opaquePorts = opaqueText ? parsePortList(ENV.opaquePorts, opaqueText) : new Set<number>();

  const inboundListenText = readEnv(env, ENV.inboundListen);
  const inboundListen = inboundListenText
    ? parseHostPort(ENV.inboundListen, inboundListenText, { listen: true })
    : undefined;

  const allowText = readEnv(env, ENV.allowNonLoopbackAdmin);
  const allowNonLoopbackAdmin =
    options.allowNonLoopbackAdmin ??
    (allowText === undefined ? true : parseBooleanEnv(ENV.allowNonLoopbackAdmin, allowText));
  const adminText = options.adminAddress ?? readEnv(env, ENV.adminListen) ?? "127.0.0.1:4191";
  const admin = parseHostPort(ENV.adminListen, adminText, { listen: true });
  if (!isLoopbackHost(admin.host) && !allowNonLoopbackAdmin) {
    const why =
      options.allowNonLoopbackAdmin === false
        ? "allowNonLoopbackAdmin is false"
        : `${ENV.allowNonLoopbackAdmin}=${allowText ?? ""}`;
    throw new ConfigError(
      `the admin address ${adminText} is not loopback, and ${why} keeps the admin server on loopback: ` +
        `set ${ENV.adminListen} to a loopback address (kubelet probes and linkerd-viz then cannot reach it), ` +
        "or allow it (off the pod only /metrics, /ready and /live answer)",
      { details: { variable: ENV.adminListen } },
    );
  }

  const podAddressText = readEnv(env, ENV.inboundIps) ?? "";
  const podAddresses = podAddressText
    .split(",")
    .map((address) => address.trim())
    .filter((address) => address !== "");
  for (const address of podAddresses) {
    if (parseIpAddress(address) === undefined) {
      throw new ConfigError(
        `${ENV.inboundIps}=${JSON.stringify(podAddressText)}: ${address} is not an IP address`,
        {
          details: { variable: ENV.inboundIps },
        },
      );
    }
  }

  const graceText = readEnv(env, ENV.shutdownGrace);
  const shutdownGraceMs =
    options.shutdownGraceMs ?? (graceText ? parseDurationMs(ENV.shutdownGrace, graceText) : 120_000);

  const keepAliveIntervalText = readEnv(env, ENV.http2KeepAliveInterval);
  const keepAliveTimeoutText = readEnv(env, ENV.http2KeepAliveTimeout);

  const outboundLocalAddress = options.outboundLocalAddress ?? readEnv(env, ENV.outboundLocalAddress);
  if (outboundLocalAddress !== undefined && parseIpAddress(outboundLocalAddress) === undefined) {
    throw new ConfigError(
      `${ENV.outboundLocalAddress}=${JSON.stringify(outboundLocalAddress)} is not an IP address`,
      {
        details: { variable: ENV.outboundLocalAddress },
      },
    );
  }

  return Object.freeze({
    policy: policyAddress && workload !== undefined ? { address: policyAddress, workload } : undefined,
    destination: destinationAddress
      ? { address: destinationAddress, contextToken: options.contextToken ?? env[ENV.context] ?? "" }
      : undefined,
    inboundPorts: Object.freeze([...inboundPorts]),
    opaquePorts,
    defaultPolicy,
    clusterNetworks,
    clusterNetworksText,
    inboundListen,
    admin,
    podAddresses: Object.freeze(podAddresses),
    outboundLocalAddress,
    shutdownGraceMs,
    http2KeepAliveIntervalMs: keepAliveIntervalText
      ? parseDurationMs(ENV.http2KeepAliveInterval, keepAliveIntervalText)
      : undefined,
    http2KeepAliveTimeoutMs: keepAliveTimeoutText
      ? parseDurationMs(ENV.http2KeepAliveTimeout, keepAliveTimeoutText)
      : undefined,
  });
}
