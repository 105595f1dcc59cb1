/**
 * Destination.Get / GetProfile answers, as the destination controller computes them
 * (`controller/api/destination/{get,get_profile,endpoint_translator_utils,profile_translator}.go`;
 * linkerd-contract.md §2.3, §7.1, §8.1–8.3).
 */
import { formatIpAddress, parseIpAddress } from "@inmesh/core";
import { type destination, durationFromMs, type meta, tcpAddressFromString } from "@inmesh/proto";
import { findServer, parsePortAnnotation, podOpaquePorts } from "./inbound.js";
import { key, type Model, type PodModel } from "./model.js";
import { serviceOpaquePorts } from "./outbound.js";
import type { ServiceRes } from "./resources.js";
import { defaultRetryBudget } from "./service-profile.js";
import type { LookupError } from "./types.js";

const DEFAULT_WEIGHT = 10_000;
export const SKIP_INBOUND_PORTS_ANNOTATION = "config.linkerd.io/skip-inbound-ports";
/**
 * The pod's inbound (transport-header) port when it has no `linkerd-proxy` container stating one: dev pods
 * sharing a host address each need their own.
 */
export const INBOUND_PORT_ANNOTATION = "inmesh.dev/inbound-port";
const PROXY_CONTAINER = "linkerd-proxy";

/** Chart `destinationController.meshedHttp2ClientProtobuf`. */
function meshedHttp2(): destination.Http2ClientParams {
  return {
    flowControl: undefined,
    keepAlive: { interval: durationFromMs(10_000), timeout: durationFromMs(3_000), whileIdle: true },
    internals: undefined,
  };
}

export interface ContextToken {
  readonly ns: string | undefined;
  readonly nodeName: string | undefined;
  readonly pod: string | undefined;
}

/** JSON `{"ns","nodeName","pod"}` or legacy `ns:<namespace>`; anything else is ignored (logged upstream). */
export function parseContextToken(token: string): ContextToken {
  const empty: ContextToken = { ns: undefined, nodeName: undefined, pod: undefined };
  if (token === "" || token.length > 4096) return empty;
  try {
    const value: unknown = JSON.parse(token);
    if (typeof value !== "object" || value === null || Array.isArray(value)) return empty;
    const record = value as Record<string, unknown>;
    const text = (v: unknown) => (typeof v === "string" && v !== "" ? v : undefined);
    return { ns: text(record.ns), nodeName: text(record.nodeName), pod: text(record.pod) };
  } catch {
    const parts = token.split(":");
    if (parts.length === 2 && parts[0] === "ns" && parts[1] !== "") return { ...empty, ns: parts[1] };
    return empty;
  }
}

/** `getHostAndPort`: no colon → port 80. */
function hostAndPort(path: string): { host: string; port: number } | undefined {
  if (!path.includes(":")) return { host: path, port: 80 };
  const match = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d+)$/.exec(path);
  if (!match) return undefined;
  const port = Number(match[3]);
  if (!Number.isInteger(port) || port <= 0 || port > 65535) return undefined;
  return { host: match[1] ?? match[2] ?? "", port };
}

function canonicalIp(host: string): string | undefined {
  const ip = parseIpAddress(host);
  return ip ? formatIpAddress(ip.family, ip.value) : undefined;
}

/** `parseK8sServiceName`: `<svc>.<ns>.svc.<domain>` or `<instance>.<svc>.<ns>.svc.<domain>`. */
function parseServiceName(
  model: Model,
  host: string,
): { name: string; namespace: string; instance: string | undefined } | undefined {
  const labels = host.split(".");
  const suffix = ["svc", ...model.options.clusterDomain.split(".")];
  if (
    labels.length < suffix.length ||
    suffix.some((label, i) => labels[labels.length - suffix.length + i] !== label)
  )
    return undefined;
  const n = labels.length - suffix.length;
  if (n === 2) return { name: labels[0] as string, namespace: labels[1] as string, instance: undefined };
  if (n === 3)
    return { name: labels[1] as string, namespace: labels[2] as string, instance: labels[0] as string };
  return undefined;
}

/** pkg/k8s `GetPodLabels`: owner label, pod, serviceaccount, control_plane_ns, pod_template_hash. */
function podMetricLabels(pod: PodModel): Record<string, string> {
  const res = pod.res;
  const labels: Record<string, string> = {};
  let ownerKind = "pod";
  let ownerName = res.meta.name;
  if (res.owner) {
    const hash = res.meta.labels["pod-template-hash"];
    if (res.owner.kind === "ReplicaSet" && hash !== undefined && res.owner.name.endsWith(`-${hash}`)) {
      ownerKind = "deployment";
      ownerName = res.owner.name.slice(0, -(hash.length + 1));
    } else {
      ownerKind = res.owner.kind.toLowerCase();
      ownerName = res.owner.name;
    }
  }
  labels[ownerKind] = ownerName;
  labels.pod = res.meta.name;
  labels.serviceaccount = res.serviceAccount;
  if (pod.controlPlaneNamespace !== undefined) labels.control_plane_ns = pod.controlPlaneNamespace;
  const hash = res.meta.labels["pod-template-hash"];
  if (hash !== undefined) labels.pod_template_hash = hash;
  labels.zone = "";
  return labels;
}

function portFromEnv(pod: PodModel, variable: string): number | undefined {
  for (const container of [...pod.res.initContainers, ...pod.res.containers]) {
    if (container.name !== PROXY_CONTAINER) continue;
    const value = container.env.find((e) => e.name === variable)?.value;
    const match = value === undefined ? null : /:(\d{1,5})$/.exec(value);
    return match ? Number(match[1]) : undefined;
  }
  return undefined;
}

/**
 * Where the pod accepts transport-header connections: its `linkerd-proxy` container's
 * `LINKERD2_PROXY_INBOUND_LISTEN_ADDR` (what the destination controller reads), else the
 * `inmesh.dev/inbound-port` annotation, else `proxyInboundPort` (4143).
 */
export function podInboundPort(
  options: { readonly proxyInboundPort: number },
  pod: {
    readonly meta: { readonly annotations: Readonly<Record<string, string>> };
    readonly initContainers: readonly ContainerEnvSource[];
    readonly containers: readonly ContainerEnvSource[];
  },
): number {
  for (const container of [...pod.initContainers, ...pod.containers]) {
    if (container.name !== PROXY_CONTAINER) continue;
    const value = container.env.find((e) => e.name === "LINKERD2_PROXY_INBOUND_LISTEN_ADDR")?.value;
    const match = value === undefined ? null : /:(\d{1,5})$/.exec(value);
    if (match) return Number(match[1]);
  }
  const annotated = pod.meta.annotations[INBOUND_PORT_ANNOTATION];
  const annotatedPort = annotated !== undefined && /^\d{1,5}$/.test(annotated) ? Number(annotated) : 0;
  return annotatedPort >= 1 && annotatedPort <= 65535 ? annotatedPort : options.proxyInboundPort;
}

interface ContainerEnvSource {
  readonly name: string;
  readonly env: readonly { readonly name: string; readonly value?: string | undefined }[];
}

/** `createWeightedAddr` for a pod endpoint. */
export function podWeightedAddr(model: Model, pod: PodModel, port: number): destination.WeightedAddr {
  const addr: destination.WeightedAddr = {
    addr: tcpAddressFromString(pod.res.ip, port),
    weight: DEFAULT_WEIGHT,
    metricLabels: podMetricLabels(pod),
    tlsIdentity: undefined,
    protocolHint: undefined,
    authorityOverride: undefined,
    http2: undefined,
    resourceRef: undefined,
  };
  const skipped = parsePortAnnotation(pod.res.meta.annotations[SKIP_INBOUND_PORTS_ANNOTATION]).has(port);
  if (!pod.meshed || skipped) return addr;
  addr.http2 = meshedHttp2();
  const opaque = podOpaquePorts(model, pod).has(port) || findServer(model, pod, port)?.protocol === "opaque";
  const hint: destination.ProtocolHint = {
    protocol: opaque ? { $case: "opaque", value: {} } : { $case: "h2", value: {} },
    opaqueTransport: undefined,
  };
  // endpoint_translator.go: opaque_transport for every port but the proxy's own admin and control ports
  // in transport-header mode (ForceOpaqueTransport), for opaque ports only in transparent mode.
  const metaPorts = [
    portFromEnv(pod, "LINKERD2_PROXY_ADMIN_LISTEN_ADDR"),
    portFromEnv(pod, "LINKERD2_PROXY_CONTROL_LISTEN_ADDR"),
  ];
  const force = model.options.outboundTransportMode === "transport-header";
  if (!metaPorts.includes(port) && (force || opaque)) {
    hint.opaqueTransport = { inboundPort: podInboundPort(model.options, pod.res) };
  }
  addr.protocolHint = hint;
  if (pod.controlPlaneNamespace === model.options.controlPlaneNamespace) {
    addr.tlsIdentity = {
      strategy: { $case: "dnsLikeIdentity", value: { name: pod.identity } },
      serverName: { name: pod.identity },
    };
  }
  return addr;
}

function isReady(pod: PodModel): boolean {
  return pod.res.ready && !pod.res.terminating && pod.res.phase !== "Succeeded" && pod.res.phase !== "Failed";
}

/** The pod's port behind a Service port: a number, or the named container port with the same protocol. */
function targetPortOf(pod: PodModel, target: number | string, protocol: string): number | undefined {
  if (typeof target === "number") return target;
  for (const container of pod.res.containers) {
    const found = container.ports.find((p) => p.name === target && p.protocol === protocol);
    if (found) return found.containerPort;
  }
  return undefined;
}

export function serviceEndpoints(
  model: Model,
  service: ServiceRes,
  port: number,
  instance: string | undefined,
): destination.WeightedAddrSet {
  const set: destination.WeightedAddrSet = {
    addrs: [],
    metricLabels: { namespace: service.meta.namespace, service: service.meta.name },
  };
  const servicePort = service.ports.find((p) => p.port === port);
  if (!servicePort || service.selector === undefined) return set;
  const selector = service.selector;
  const seen = new Set<string>();
  const pods = model.pods
    .filter(
      (pod) =>
        pod.res.meta.namespace === service.meta.namespace &&
        Object.entries(selector).every(([k, v]) => pod.res.meta.labels[k] === v) &&
        isReady(pod) &&
        (instance === undefined || pod.res.hostname === instance),
    )
    .sort((a, b) => (a.res.meta.name < b.res.meta.name ? -1 : a.res.meta.name > b.res.meta.name ? 1 : 0));
  for (const pod of pods) {
    const target = targetPortOf(pod, servicePort.targetPort, servicePort.protocol);
    if (target === undefined) continue;
    // Pods sharing an address (127.0.0.1 in dev) would collapse in the proxy's balancer anyway.
    const addressKey = `${pod.res.ip}:${target}`;
    if (seen.has(addressKey)) continue;
    seen.add(addressKey);
    set.addrs.push(podWeightedAddr(model, pod, target));
  }
  return set;
}

export function endpoints(
  model: Model,
  path: string,
  _contextToken: string,
): { ok: true; exists: boolean; set: destination.WeightedAddrSet } | LookupError {
  const hp = hostAndPort(path);
  if (!hp) return { ok: false, code: "InvalidArgument", message: `Invalid authority: ${path}` };
  if (parseIpAddress(hp.host))
    return {
      ok: false,
      code: "InvalidArgument",
      message: `IP queries not supported by Get API: host=${hp.host}`,
    };
  const name = parseServiceName(model, hp.host);
  if (!name) return { ok: false, code: "InvalidArgument", message: `Invalid authority: ${path}` };
  const service = model.servicesByKey.get(key(name.namespace, name.name));
  if (!service)
    return { ok: false, code: "NotFound", message: `Service ${name.name}.${name.namespace} not found` };
  if (service.type === "ExternalName")
    return { ok: false, code: "InvalidArgument", message: `Invalid authority: ${path}` };
  return { ok: true, exists: true, set: serviceEndpoints(model, service, hp.port, name.instance) };
}

function resourceMeta(
  group: string,
  kind: string,
  name: string,
  namespace: string,
  port: number,
): meta.Metadata {
  return { kind: { $case: "resource", value: { group, kind, name, namespace, section: "", port } } };
}

function serviceProfile(
  model: Model,
  name: string,
  namespace: string,
  fqn: string,
  port: number,
  token: ContextToken,
): destination.DestinationProfile {
  const service = model.servicesByKey.get(key(namespace, name));
  const opaqueProtocol = service ? serviceOpaquePorts(service).has(port) : false;
  const profileName = `${name}.${namespace}.svc.${model.options.clusterDomain}`;
  // The client's namespace is the primary lookup, the service's namespace the fallback.
  const candidates = token.ns !== undefined && token.ns !== namespace ? [token.ns, namespace] : [namespace];
  const profile = candidates
    .map((ns) => model.serviceProfilesByKey.get(key(ns, profileName)))
    .find((p) => p !== undefined);
  if (!profile) {
    // The controller sends no parent_ref with the default profile.
    return {
      fullyQualifiedName: fqn,
      opaqueProtocol,
      routes: [],
      retryBudget: defaultRetryBudget(),
      dstOverrides: [],
      endpoint: undefined,
      parentRef: undefined,
      profileRef: undefined,
    };
  }
  return {
    fullyQualifiedName: fqn,
    opaqueProtocol,
    routes: profile.routes.map((route) => ({ ...route })),
    retryBudget: { ...profile.retryBudget },
    dstOverrides: profile.dstOverrides.map((dst) => ({
      authority: /:\d+$/.test(dst.authority) ? dst.authority : `${dst.authority}:${port}`,
      weight: dst.weight,
      backendRef: undefined,
    })),
    endpoint: undefined,
    parentRef: resourceMeta("core", "Service", name, namespace, port),
    profileRef: resourceMeta("linkerd.io", "ServiceProfile", profile.meta.name, profile.meta.namespace, 0),
  };
}

function endpointProfile(
  model: Model,
  pod: PodModel | undefined,
  ip: string,
  port: number,
): destination.DestinationProfile {
  let endpoint: destination.WeightedAddr;
  let opaqueProtocol = false;
  if (pod) {
    endpoint = podWeightedAddr(model, pod, port);
    endpoint.metricLabels.namespace = pod.res.meta.namespace;
    opaqueProtocol =
      podOpaquePorts(model, pod).has(port) || findServer(model, pod, port)?.protocol === "opaque";
  } else {
    endpoint = {
      addr: tcpAddressFromString(ip, port),
      weight: DEFAULT_WEIGHT,
      metricLabels: {},
      tlsIdentity: undefined,
      protocolHint: undefined,
      authorityOverride: undefined,
      http2: undefined,
      resourceRef: undefined,
    };
  }
  return {
    fullyQualifiedName: "",
    opaqueProtocol,
    routes: [],
    retryBudget: defaultRetryBudget(),
    dstOverrides: [],
    endpoint,
    parentRef: undefined,
    profileRef: undefined,
  };
}

/** Among pods sharing an IP (common in dev), prefer the one that declares the port. */
function podByIp(model: Model, ip: string, port: number): PodModel | undefined {
  const candidates = model.pods.filter((pod) => pod.res.ip === ip && isReady(pod));
  return (
    candidates.find((pod) => pod.res.containers.some((c) => c.ports.some((p) => p.containerPort === port))) ??
    (candidates.length === 1 ? candidates[0] : undefined)
  );
}

export function profile(
  model: Model,
  path: string,
  contextToken: string,
): { ok: true; profile: destination.DestinationProfile } | LookupError {
  const hp = hostAndPort(path);
  if (!hp)
    return { ok: false, code: "InvalidArgument", message: `invalid authority: ${JSON.stringify(path)}` };
  const token = parseContextToken(contextToken);
  const ip = canonicalIp(hp.host);
  if (ip !== undefined) {
    const service = model.resources.services.find((s) => s.clusterIPs.includes(ip));
    if (service) {
      const fqn = `${service.meta.name}.${service.meta.namespace}.svc.${model.options.clusterDomain}`;
      return {
        ok: true,
        profile: serviceProfile(model, service.meta.name, service.meta.namespace, fqn, hp.port, token),
      };
    }
    return { ok: true, profile: endpointProfile(model, podByIp(model, ip, hp.port), ip, hp.port) };
  }
  const name = parseServiceName(model, hp.host);
  if (!name)
    return { ok: false, code: "InvalidArgument", message: `invalid service ${JSON.stringify(hp.host)}` };
  if (name.instance !== undefined) {
    const service = model.servicesByKey.get(key(name.namespace, name.name));
    const pod = service
      ? model.pods.find((p) => p.res.meta.namespace === name.namespace && p.res.hostname === name.instance)
      : undefined;
    if (!pod)
      return {
        ok: false,
        code: "NotFound",
        message: `no pod ${name.instance} for service ${name.name}.${name.namespace}`,
      };
    return { ok: true, profile: endpointProfile(model, pod, pod.res.ip, hp.port) };
  }
  return { ok: true, profile: serviceProfile(model, name.name, name.namespace, hp.host, hp.port, token) };
}
