import {
  destination as destinationProto,
  inbound as inboundProto,
  outbound as outboundProto,
} from "@inmesh/proto";
import { endpoints, podInboundPort, profile } from "./destination.js";
import { assignClusterIp } from "./egress.js";
import { effectiveDefaultPolicy, inboundServer, podOpaquePorts } from "./inbound.js";
import { loadResources } from "./load.js";
import { buildModel, key, type Model } from "./model.js";
import { type ClusterOptions, resolveClusterOptions } from "./options.js";
import { outboundPolicy, parseOutboundAnnotations } from "./outbound.js";
import { joinField, Problems } from "./reader.js";
import type { Meta, ServiceRes } from "./resources.js";
import {
  type ClusterState,
  ManifestError,
  type ManifestFile,
  type ManifestProblem,
  type PodInfo,
  type ServiceInfo,
} from "./types.js";

function checkOutboundAnnotations(model: Model, problems: Problems): void {
  const check = (kind: string, meta: Meta) => {
    for (const error of parseOutboundAnnotations(meta.annotations).errors) {
      problems.add(
        meta.source,
        kind,
        meta.name,
        joinField("metadata.annotations", error.annotation),
        error.message,
      );
    }
  };
  for (const service of model.resources.services) check("Service", service.meta);
  for (const route of model.resources.httpRoutes) check("HTTPRoute", route.meta);
  for (const route of model.resources.grpcRoutes) check("GRPCRoute", route.meta);
}

/** Problems are found in passes (per document, then across resources); report them in file order. */
function sortProblems(list: readonly ManifestProblem[], files: readonly ManifestFile[]): ManifestProblem[] {
  const fileOrder = new Map(files.map((file, index) => [file.path, index]));
  return list
    .map((problem, index) => ({ problem, index }))
    .sort(
      (a, b) =>
        (fileOrder.get(a.problem.file) ?? 0) - (fileOrder.get(b.problem.file) ?? 0) ||
        a.problem.document - b.problem.document ||
        a.index - b.index,
    )
    .map((entry) => entry.problem);
}

function freeze<T>(value: T): T {
  return Object.freeze(value);
}

/**
 * Every answer is a fresh message (built, then round-tripped through the codec's fromPartial), so a
 * caller mutating a result never changes the state.
 */
export function buildState(files: ManifestFile[], options: ClusterOptions): ClusterState {
  const resolved = resolveClusterOptions(options);
  if (!Array.isArray(files)) throw new TypeError("files must be an array of {path, text}");
  const problems = new Problems();
  for (const [index, file] of files.entries()) {
    if (typeof file?.path !== "string" || typeof file.text !== "string") {
      throw new TypeError(`files[${index}] must be {path: string, text: string}`);
    }
  }
  const resources = loadResources(files, problems);
  assignMissingClusterIps(resources.services);
  const model = buildModel(resources, resolved, problems);
  checkOutboundAnnotations(model, problems);
  if (problems.list.length > 0) throw new ManifestError(sortProblems(problems.list, files));

  const pods: PodInfo[] = model.pods.map((pod) =>
    freeze({
      name: pod.res.meta.name,
      namespace: pod.res.meta.namespace,
      serviceAccount: pod.res.serviceAccount,
      identity: pod.identity,
      ip: pod.res.ip,
      labels: freeze({ ...pod.res.meta.labels }),
      annotations: freeze({ ...pod.res.meta.annotations }),
      containerPorts: freeze(
        pod.res.containers.flatMap((container) =>
          container.ports.map((port) =>
            freeze({
              container: container.name,
              containerPort: port.containerPort,
              name: port.name,
              protocol: port.protocol,
            }),
          ),
        ),
      ),
      meshed: pod.meshed,
      defaultInboundPolicy: effectiveDefaultPolicy(model, pod),
      opaquePorts: freeze([...podOpaquePorts(model, pod)].sort((a, b) => a - b)),
      inboundPort: podInboundPort(resolved, pod.res),
    }),
  );
  const podsByKey = new Map(pods.map((pod) => [key(pod.namespace, pod.name), pod]));
  const services: ServiceInfo[] = model.resources.services.map((service) =>
    freeze({
      name: service.meta.name,
      namespace: service.meta.namespace,
      selector: service.selector === undefined ? undefined : freeze({ ...service.selector }),
      ports: freeze(service.ports.map((port) => freeze({ ...port }))),
      clusterIP: service.clusterIPs[0],
      annotations: freeze({ ...service.meta.annotations }),
    }),
  );

  return freeze({
    options: resolved,
    pods: freeze(pods),
    services: freeze(services),
    warnings: freeze(sortProblems(problems.warnings, files)),
    findPod: (namespace: string, name: string) => podsByKey.get(key(namespace, name)),
    inboundServer: (workload: string, port: number) => {
      const result = inboundServer(model, workload, port);
      return result.ok
        ? { ok: true as const, server: inboundProto.Server.fromPartial(result.server) }
        : result;
    },
    outboundPolicy: (spec: outboundProto.TrafficSpec) => {
      const result = outboundPolicy(model, spec);
      return result.ok
        ? { ok: true as const, policy: outboundProto.OutboundPolicy.fromPartial(result.policy) }
        : result;
    },
    endpoints: (path: string, contextToken: string) => {
      const result = endpoints(model, path, contextToken);
      return result.ok
        ? {
            ok: true as const,
            exists: result.exists,
            set: destinationProto.WeightedAddrSet.fromPartial(result.set),
          }
        : result;
    },
    profile: (path: string, contextToken: string) => {
      const result = profile(model, path, contextToken);
      return result.ok
        ? { ok: true as const, profile: destinationProto.DestinationProfile.fromPartial(result.profile) }
        : result;
    },
  });
}

/** Pods address Services by cluster IP too; a dev manifest rarely sets one, so give each its own. */
function assignMissingClusterIps(services: ServiceRes[]): void {
  const taken = new Set(services.flatMap((service) => service.clusterIPs));
  services.forEach((service, index) => {
    if (service.clusterIPs.length > 0 || service.headless || service.type === "ExternalName") return;
    const clusterIP = assignClusterIp(taken, service.meta.namespace, service.meta.name);
    services[index] = { ...service, clusterIPs: [clusterIP] };
  });
}
