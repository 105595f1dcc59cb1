import { isLoopbackHost, serviceAccountIdentity } from "@inmesh/core";
import type { PodInfo, ResolvedClusterOptions } from "../model/index.js";

/** The injector's default `proxy.opaquePorts` (contract §2.1). */
export const DEFAULT_OPAQUE_PORTS = "25,587,3306,4444,5432,6379,9300,11211";

/** linkerd2-proxy's admin port (`LINKERD2_PROXY_ADMIN_LISTEN_ADDR`, `/metrics`, `/ready`, `/live`). */
export const DEFAULT_ADMIN_PORT = 4191;

export interface ControlPlaneAddresses {
  /** `host:port` */
  readonly identity: string;
  readonly destination: string;
  readonly policy: string;
}

export interface ControlPlaneServerNames {
  /** `linkerd-identity.<cpns>.serviceaccount.identity.<cpns>.<td>` */
  readonly identity: string;
  /** `linkerd-destination.<cpns>.serviceaccount.identity.<cpns>.<td>`: the policy controller shares it. */
  readonly destination: string;
  readonly policy: string;
}

export function controlPlaneServerNames(options: ResolvedClusterOptions): ControlPlaneServerNames {
  const { controlPlaneNamespace: cpns, trustDomain } = options;
  const destination = serviceAccountIdentity("linkerd-destination", cpns, cpns, trustDomain);
  return {
    identity: serviceAccountIdentity("linkerd-identity", cpns, cpns, trustDomain),
    destination,
    policy: destination,
  };
}

export interface WorkloadEnvInput {
  readonly pod: PodInfo;
  readonly options: ResolvedClusterOptions;
  readonly trustAnchorsPem: string;
  /** Absolute path of the file holding the pod's identity token. */
  readonly tokenFile: string;
  readonly addresses: ControlPlaneAddresses;
}

function uniqueSortedPorts(ports: Iterable<number>): string {
  return [...new Set(ports)].sort((a, b) => a - b).join(",");
}

/**
 * The LINKERD2_PROXY_* variables the Linkerd injector gives a pod (contract §2.1, chart defaults), with the
 * control-plane addresses pointing at the dev control plane. The workload strings carry no trailing
 * newline (the chart's YAML block adds one; both controllers parse the JSON and ignore it).
 */
export function buildWorkloadEnv(input: WorkloadEnvInput): Record<string, string> {
  const { pod, options } = input;
  const names = controlPlaneServerNames(options);
  // The injector copies namespace annotations onto the pod; the model resolved that already.
  const defaultPolicy = pod.defaultInboundPolicy;
  const opaquePorts = pod.annotations["config.linkerd.io/opaque-ports"] ?? DEFAULT_OPAQUE_PORTS;
  const clusterNetworks = options.clusterNetworks.join(",");
  const inboundPorts = uniqueSortedPorts(
    pod.containerPorts.filter((port) => port.protocol === "TCP").map((port) => port.containerPort),
  );

  const env: Record<string, string> = {
    LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS: input.trustAnchorsPem.trim(),
    LINKERD2_PROXY_IDENTITY_LOCAL_NAME: serviceAccountIdentity(
      pod.serviceAccount,
      pod.namespace,
      options.controlPlaneNamespace,
      options.trustDomain,
    ),
    LINKERD2_PROXY_IDENTITY_TOKEN_FILE: input.tokenFile,
    LINKERD2_PROXY_IDENTITY_SVC_ADDR: input.addresses.identity,
    LINKERD2_PROXY_IDENTITY_SVC_NAME: names.identity,
    LINKERD2_PROXY_DESTINATION_SVC_ADDR: input.addresses.destination,
    LINKERD2_PROXY_DESTINATION_SVC_NAME: names.destination,
    LINKERD2_PROXY_DESTINATION_CONTEXT: JSON.stringify({ ns: pod.namespace, pod: pod.name }),
    LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS: clusterNetworks,
    LINKERD2_PROXY_DESTINATION_PROFILE_SUFFIXES: `svc.${options.clusterDomain}.`,
    LINKERD2_PROXY_POLICY_SVC_ADDR: input.addresses.policy,
    LINKERD2_PROXY_POLICY_SVC_NAME: names.policy,
    LINKERD2_PROXY_POLICY_WORKLOAD: JSON.stringify({ ns: pod.namespace, pod: pod.name }),
    LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS: clusterNetworks,
    LINKERD2_PROXY_INBOUND_DEFAULT_POLICY: defaultPolicy,
  };
  if (inboundPorts !== "") env.LINKERD2_PROXY_INBOUND_PORTS = inboundPorts;
  // Where meshed clients connect with a transport header (every meshed port in transport-header mode).
  env.LINKERD2_PROXY_INBOUND_LISTEN_ADDR = formatAddress(pod.ip === "" ? "0.0.0.0" : pod.ip, pod.inboundPort);
  if (opaquePorts.trim() !== "")
    env.LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION = opaquePorts.trim();
  if (pod.ip !== "") env.LINKERD2_PROXY_INBOUND_IPS = pod.ip;
  // Local pods share one host. Their calls must leave from their own pod IP, as in a cluster: from
  // 127.0.0.1 they would match Linkerd's implicit localhost authorization and bypass every policy.
  if (pod.ip !== "" && pod.ip !== "127.0.0.1" && pod.ip !== "::1" && isLoopbackHost(pod.ip)) {
    env.MESH_SDK_OUTBOUND_LOCAL_ADDRESS = pod.ip;
    // Each local pod binds what a sidecar binds on its own address, so a second service on the same host
    // does not collide on 127.0.0.1:4191 (the admin server) the way pods never do in a cluster.
    env.LINKERD2_PROXY_ADMIN_LISTEN_ADDR = formatAddress(pod.ip, DEFAULT_ADMIN_PORT);
  }
  return env;
}

/** `host:port`, bracketing IPv6 hosts. */
export function formatAddress(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}
