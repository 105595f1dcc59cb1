/**
 * Cross-resource validation and lookup tables. A reference Linkerd resolves at runtime and that does not
 * resolve makes the controller ignore that one resource (failing closed): here too, with a warning naming it.
 */
import { serviceAccountIdentity } from "@inmesh/core";
import type { Resources } from "./load.js";
import type { ResolvedClusterOptions } from "./options.js";
import type { Problems, Source } from "./reader.js";
import {
  type GrpcRouteRes,
  type HttpRouteRes,
  isGroup,
  type MeshTLSAuthenticationRes,
  type Meta,
  type NamespaceRes,
  type NetworkAuthenticationRes,
  type ParentRef,
  type PodRes,
  type ServerRes,
  type ServiceRes,
  selectorMatches,
} from "./resources.js";
import type { ServiceProfileRes } from "./service-profile.js";

export const CONTROL_PLANE_NS_LABEL = "linkerd.io/control-plane-ns";
export const INJECT_ANNOTATION = "linkerd.io/inject";

export interface PodModel {
  readonly res: PodRes;
  readonly meshed: boolean;
  /** The control plane the pod belongs to (label value, or ours when injected by annotation). */
  readonly controlPlaneNamespace: string | undefined;
  readonly identity: string;
}

export interface Model {
  readonly options: ResolvedClusterOptions;
  readonly resources: Resources;
  readonly namespaces: ReadonlyMap<string, NamespaceRes>;
  readonly pods: readonly PodModel[];
  readonly podsByKey: ReadonlyMap<string, PodModel>;
  readonly servicesByKey: ReadonlyMap<string, ServiceRes>;
  readonly serversByKey: ReadonlyMap<string, ServerRes>;
  readonly meshTLSByKey: ReadonlyMap<string, MeshTLSAuthenticationRes>;
  readonly networkAuthnByKey: ReadonlyMap<string, NetworkAuthenticationRes>;
  readonly serviceProfilesByKey: ReadonlyMap<string, ServiceProfileRes>;
  /** Inbound HTTPRoutes per Server key, GRPC-conflicted ones removed. */
  readonly serverHttpRoutes: ReadonlyMap<string, readonly HttpRouteRes[]>;
  readonly serverGrpcRoutes: ReadonlyMap<string, readonly GrpcRouteRes[]>;
}

export function key(namespace: string, name: string): string {
  return `${namespace}/${name}`;
}

function addProblem(
  problems: Problems,
  source: Source,
  kind: string,
  name: string,
  field: string | undefined,
  message: string,
): void {
  problems.add(source, kind, name, field, message);
}

export function isServerParent(ref: ParentRef): boolean {
  return ref.kind === "Server" && ref.group.toLowerCase() === "policy.linkerd.io";
}

export function isServiceParent(ref: ParentRef): boolean {
  return ref.kind.toLowerCase() === "service" && isGroup(ref, "core");
}

function isMeshed(pod: PodRes, namespace: NamespaceRes | undefined): boolean {
  if (pod.meta.labels[CONTROL_PLANE_NS_LABEL] !== undefined) return true;
  const podInject = pod.meta.annotations[INJECT_ANNOTATION];
  if (podInject === "enabled" || podInject === "ingress") return true;
  if (podInject === "disabled") return false;
  const nsInject = namespace?.meta.annotations[INJECT_ANNOTATION];
  return nsInject === "enabled" || nsInject === "ingress";
}

export function buildModel(resources: Resources, options: ResolvedClusterOptions, problems: Problems): Model {
  checkDuplicates(resources, problems);

  const namespaces = new Map(resources.namespaces.map((ns) => [ns.meta.name, ns]));
  const pods: PodModel[] = resources.pods.map((res) => {
    const meshed = isMeshed(res, namespaces.get(res.meta.namespace));
    const controlPlaneNamespace = meshed
      ? (res.meta.labels[CONTROL_PLANE_NS_LABEL] ?? options.controlPlaneNamespace)
      : undefined;
    const identity = serviceAccountIdentity(
      res.serviceAccount,
      res.meta.namespace,
      options.controlPlaneNamespace,
      options.trustDomain,
    );
    return { res, meshed, controlPlaneNamespace, identity };
  });
  const byKey = <T extends { meta: Meta }>(list: readonly T[]): Map<string, T> =>
    new Map(list.map((item) => [key(item.meta.namespace, item.meta.name), item]));
  const podsByKey = new Map(pods.map((pod) => [key(pod.res.meta.namespace, pod.res.meta.name), pod]));
  const servicesByKey = byKey(resources.services);
  const serversByKey = byKey(resources.servers);
  const meshTLSByKey = byKey(resources.meshTLSAuthentications);
  const networkAuthnByKey = byKey(resources.networkAuthentications);
  const serviceProfilesByKey = byKey(resources.serviceProfiles);
  const httpRoutesByKey = new Map(
    resources.httpRoutes.map((route) => [
      `${route.group}/${key(route.meta.namespace, route.meta.name)}`,
      route,
    ]),
  );
  const grpcRoutesByKey = byKey(resources.grpcRoutes);

  // Kubernetes accepts objects with dangling references; Linkerd's controller ignores only the resource
  // that does not resolve (and says so in its status). So do we: the resource is left out and reported
  // as a warning naming it, everything else is served.
  const ignored = new Set<object>();
  const ignore = (
    resource: object,
    source: Source,
    kind: string,
    name: string,
    field: string,
    message: string,
  ) => {
    ignored.add(resource);
    problems.warn(source, kind, name, field, `${message}; this ${kind} is ignored`);
  };

  for (const authz of resources.serverAuthorizations) {
    if (authz.serverName !== undefined && !serversByKey.has(key(authz.meta.namespace, authz.serverName))) {
      ignore(
        authz,
        authz.meta.source,
        "ServerAuthorization",
        authz.meta.name,
        "spec.server.name",
        `Server ${JSON.stringify(authz.serverName)} does not exist in namespace ${JSON.stringify(authz.meta.namespace)}`,
      );
    }
  }

  for (const policy of resources.authorizationPolicies) {
    const ns = policy.meta.namespace;
    const report = (field: string, message: string) =>
      ignore(policy, policy.meta.source, "AuthorizationPolicy", policy.meta.name, field, message);
    const target = policy.target;
    if (target.kind === "server" && !serversByKey.has(key(ns, target.name))) {
      report(
        "spec.targetRef.name",
        `Server ${JSON.stringify(target.name)} does not exist in namespace ${JSON.stringify(ns)}`,
      );
    } else if (
      target.kind === "httproute" &&
      !httpRoutesByKey.has(`${target.group}/${key(ns, target.name)}`)
    ) {
      report(
        "spec.targetRef.name",
        `HTTPRoute ${JSON.stringify(target.name)} (group ${target.group}) does not exist in namespace ${JSON.stringify(ns)}`,
      );
    } else if (target.kind === "grpcroute" && !grpcRoutesByKey.has(key(ns, target.name))) {
      report(
        "spec.targetRef.name",
        `GRPCRoute ${JSON.stringify(target.name)} does not exist in namespace ${JSON.stringify(ns)}`,
      );
    }
    // A missing authentication fails closed: the policy grants nothing rather than granting more.
    if (policy.meshTLS && !meshTLSByKey.has(key(policy.meshTLS.namespace, policy.meshTLS.name))) {
      report(
        `${policy.refFields.meshTLS}.name`,
        `MeshTLSAuthentication ${JSON.stringify(policy.meshTLS.name)} does not exist in namespace ${JSON.stringify(policy.meshTLS.namespace)}`,
      );
    }
    if (policy.network && !networkAuthnByKey.has(key(policy.network.namespace, policy.network.name))) {
      report(
        `${policy.refFields.network}.name`,
        `NetworkAuthentication ${JSON.stringify(policy.network.name)} does not exist in namespace ${JSON.stringify(policy.network.namespace)}`,
      );
    }
  }

  for (const limit of resources.rateLimitPolicies) {
    if (!serversByKey.has(key(limit.meta.namespace, limit.serverName))) {
      ignore(
        limit,
        limit.meta.source,
        "HTTPLocalRateLimitPolicy",
        limit.meta.name,
        "spec.targetRef.name",
        `Server ${JSON.stringify(limit.serverName)} does not exist in namespace ${JSON.stringify(limit.meta.namespace)}`,
      );
    }
  }

  const serverHttpRoutes = new Map<string, HttpRouteRes[]>();
  const serverGrpcRoutes = new Map<string, GrpcRouteRes[]>();
  const attach = <R extends HttpRouteRes | GrpcRouteRes>(route: R, into: Map<string, R[]>) => {
    const kindName = route.kind;
    for (const parent of route.parentRefs) {
      const report = (field: string, message: string) =>
        addProblem(problems, route.meta.source, kindName, route.meta.name, field, message);
      if (isServerParent(parent)) {
        // The policy controller ignores the whole route for these (policy-semantics §6.1).
        const skip = (field: string, message: string) =>
          ignore(route, route.meta.source, kindName, route.meta.name, field, message);
        if (parent.namespace !== route.meta.namespace)
          skip(`${parent.field}.namespace`, "a Server parent must be in the route's namespace");
        if (parent.port !== undefined) skip(`${parent.field}.port`, "a Server parent must not set port");
        if (parent.sectionName !== undefined)
          skip(`${parent.field}.sectionName`, "a Server parent must not set sectionName");
        const serverKey = key(parent.namespace, parent.name);
        if (!serversByKey.has(serverKey)) {
          // Not accepted for a Server that does not exist: the route is left out (no status to write).
          skip(
            `${parent.field}.name`,
            `Server ${JSON.stringify(parent.name)} does not exist in namespace ${JSON.stringify(parent.namespace)}`,
          );
          continue;
        }
        const list = into.get(serverKey) ?? [];
        if (!list.includes(route)) list.push(route);
        into.set(serverKey, list);
      } else if (isServiceParent(parent)) {
        if (!servicesByKey.has(key(parent.namespace, parent.name))) {
          ignore(
            route,
            route.meta.source,
            kindName,
            route.meta.name,
            `${parent.field}.name`,
            `Service ${JSON.stringify(parent.name)} does not exist in namespace ${JSON.stringify(parent.namespace)}`,
          );
        }
        if (parent.sectionName !== undefined)
          report(`${parent.field}.sectionName`, "a Service parent must not set sectionName");
      } else {
        problems.warn(
          route.meta.source,
          kindName,
          route.meta.name,
          parent.field,
          `parent ${parent.group}/${parent.kind} is ignored: Linkerd attaches routes to Servers (inbound) and Services (outbound)`,
        );
      }
    }
    if (route.parentRefs.length === 0) {
      problems.warn(
        route.meta.source,
        kindName,
        route.meta.name,
        "spec.parentRefs",
        "the route has no parentRefs and applies nowhere",
      );
    }
    for (const rule of route.rules) {
      for (const backend of rule.backendRefs) {
        if (!servicesByKey.has(key(backend.namespace, backend.name))) {
          addProblem(
            problems,
            route.meta.source,
            kindName,
            route.meta.name,
            `${backend.field}.name`,
            `Service ${JSON.stringify(backend.name)} does not exist in namespace ${JSON.stringify(backend.namespace)}`,
          );
        }
      }
    }
  };
  for (const route of resources.grpcRoutes) attach(route, serverGrpcRoutes);
  for (const route of resources.httpRoutes) attach(route, serverHttpRoutes);
  // An ignored route is ignored everywhere: on every Server it named, and outbound.
  for (const routes of [...serverGrpcRoutes.values(), ...serverHttpRoutes.values()]) {
    for (let i = routes.length - 1; i >= 0; i -= 1) if (ignored.has(routes[i] as object)) routes.splice(i, 1);
  }
  // GEP-1426: a GRPCRoute on the same Server wins; the status controller marks the HTTPRoute Conflicted.
  for (const [serverKey, routes] of serverHttpRoutes) {
    if ((serverGrpcRoutes.get(serverKey)?.length ?? 0) === 0) continue;
    for (const route of routes) {
      problems.warn(
        route.meta.source,
        "HTTPRoute",
        route.meta.name,
        "spec.parentRefs",
        `conflicts with a GRPCRoute on Server ${JSON.stringify(serverKey.split("/")[1])}; Linkerd drops this HTTPRoute there`,
      );
    }
    serverHttpRoutes.set(serverKey, []);
  }

  for (const profile of resources.serviceProfiles) {
    if (!profile.meta.name.endsWith(`.svc.${options.clusterDomain}`)) {
      problems.warn(
        profile.meta.source,
        "ServiceProfile",
        profile.meta.name,
        "metadata.name",
        `a ServiceProfile applies only when named <service>.<namespace>.svc.${options.clusterDomain}`,
      );
    }
  }

  const kept = <T extends object>(list: T[]): T[] => list.filter((item) => !ignored.has(item));
  const model: Model = {
    options,
    resources:
      ignored.size === 0
        ? resources
        : {
            ...resources,
            serverAuthorizations: kept(resources.serverAuthorizations),
            authorizationPolicies: kept(resources.authorizationPolicies),
            httpRoutes: kept(resources.httpRoutes),
            grpcRoutes: kept(resources.grpcRoutes),
            rateLimitPolicies: kept(resources.rateLimitPolicies),
          },
    namespaces,
    pods,
    podsByKey,
    servicesByKey,
    serversByKey,
    meshTLSByKey,
    networkAuthnByKey,
    serviceProfilesByKey,
    serverHttpRoutes,
    serverGrpcRoutes,
  };
  warnOverlappingServers(model, problems);
  return model;
}

function checkDuplicates(resources: Resources, problems: Problems): void {
  const seen = new Map<string, Source>();
  const check = (kind: string, meta: Meta) => {
    const id = `${kind}/${meta.namespace}/${meta.name}`;
    const first = seen.get(id);
    if (first) {
      const line = first.line === undefined ? "" : `:${first.line}`;
      const item = first.fieldPrefix ? ` ${first.fieldPrefix.slice(0, -1)}` : "";
      const where = `${first.file}${line} (document ${first.document}${item})`;
      problems.add(
        meta.source,
        kind.split("/").pop(),
        meta.name,
        "metadata.name",
        `duplicate ${kind.split("/").pop()} ${meta.namespace ? `${meta.namespace}/` : ""}${meta.name} (first defined in ${where})`,
      );
    } else {
      seen.set(id, meta.source);
    }
  };
  for (const r of resources.namespaces) check("Namespace", r.meta);
  for (const r of resources.serviceAccounts) check("ServiceAccount", r.meta);
  for (const r of resources.pods) check("Pod", r.meta);
  for (const r of resources.services) check("Service", r.meta);
  for (const r of resources.servers) check("Server", r.meta);
  for (const r of resources.serverAuthorizations) check("ServerAuthorization", r.meta);
  for (const r of resources.authorizationPolicies) check("AuthorizationPolicy", r.meta);
  for (const r of resources.meshTLSAuthentications) check("MeshTLSAuthentication", r.meta);
  for (const r of resources.rateLimitPolicies) check("HTTPLocalRateLimitPolicy", r.meta);
  for (const r of resources.networkAuthentications) check("NetworkAuthentication", r.meta);
  for (const r of resources.httpRoutes) check(`${r.group}/HTTPRoute`, r.meta);
  for (const r of resources.grpcRoutes) check("GRPCRoute", r.meta);
  for (const r of resources.serviceProfiles) check("ServiceProfile", r.meta);
}

/** TCP container ports of the pod (all containers) carrying a name. */
export function namedPorts(pod: PodRes, name: string): number[] {
  const result = new Set<number>();
  for (const container of pod.containers) {
    for (const port of container.ports) {
      if (port.protocol === "TCP" && port.name === name) result.add(port.containerPort);
    }
  }
  return [...result];
}

export function serverSelectsPort(server: ServerRes, pod: PodRes, port: number): boolean {
  if (!server.podSelector || server.meta.namespace !== pod.meta.namespace) return false;
  if (!selectorMatches(server.podSelector, pod.meta.labels)) return false;
  return typeof server.port === "number" ? server.port === port : namedPorts(pod, server.port).includes(port);
}

/** policy-semantics.md §4: oldest creationTimestamp first, then name; the others are skipped. */
export function compareServers(a: ServerRes, b: ServerRes): number {
  const at = a.meta.creationTimestampMs;
  const bt = b.meta.creationTimestampMs;
  if (at !== undefined && bt !== undefined && at !== bt) return at - bt;
  if (at !== undefined && bt === undefined) return -1;
  if (at === undefined && bt !== undefined) return 1;
  return a.meta.name < b.meta.name ? -1 : a.meta.name > b.meta.name ? 1 : 0;
}

function warnOverlappingServers(model: Model, problems: Problems): void {
  for (const pod of model.pods) {
    const byPort = new Map<number, ServerRes[]>();
    for (const server of model.resources.servers) {
      if (!server.podSelector || server.meta.namespace !== pod.res.meta.namespace) continue;
      if (!selectorMatches(server.podSelector, pod.res.meta.labels)) continue;
      const ports = typeof server.port === "number" ? [server.port] : namedPorts(pod.res, server.port);
      for (const port of ports) byPort.set(port, [...(byPort.get(port) ?? []), server]);
    }
    for (const [port, servers] of byPort) {
      if (servers.length < 2) continue;
      const [winner, ...losers] = [...servers].sort(compareServers);
      for (const loser of losers) {
        problems.warn(
          loser.meta.source,
          "Server",
          loser.meta.name,
          "spec.port",
          `Server ${JSON.stringify(winner?.meta.name)} already selects port ${port} of pod ${pod.res.meta.name}; this one is skipped there`,
        );
      }
    }
  }
}
