/**
 * The dev control plane's model: Kubernetes-style YAML manifests in, Linkerd proxy-API messages out,
 * computed with the policy controller's and destination controller's semantics
 * (shared/spec/policy-semantics.md, linkerd-contract.md §2.3, §7, §8).
 *
 * Stable API (the gRPC servers are written against it):
 * - `buildClusterState(files, options)` → `ClusterState`, or throws `ManifestError` listing every problem
 *   (nothing is built); invalid options throw `ConfigError` (`details.variable`).
 * - `ClusterState.inboundServer / outboundPolicy / endpoints / profile` return `{ok: true, …}` or a gRPC-style
 *   `{ok: false, code: "InvalidArgument" | "NotFound", message}`. Every answer is a fresh message.
 *
 * Additions beyond the original brief (optional to use):
 * - `ManifestProblem.line`: 1-based line where the document starts. `document` is the 0-based YAML document
 *   index (a leading `---` opens document 0); entries of a `kind: List` get `items[i].` in `field`.
 * - `ClusterState.warnings`: things Linkerd accepts but silently drops or ignores (an HTTPRoute conflicted by a
 *   GRPCRoute on the same Server, the losing one of two Servers selecting a pod port, Gateway parents, a
 *   ServiceProfile whose name can never match, an externalWorkloadSelector). Not errors.
 * - `ClusterState.services` (parsed Services) and `ClusterState.options` (resolved options).
 * - `parseWorkload(text)`, `DEFAULT_POLICY_NAMES`, `isDefaultPolicyName`, types `ContainerPortInfo`,
 *   `ServiceInfo`, `ServicePortInfo`, `LookupError`, `ResolvedClusterOptions`, `Workload`.
 *
 * Decisions where Linkerd relies on an injector, an API server or runtime warnings:
 * - Meshed pods: label `linkerd.io/control-plane-ns`, or injection requested (`linkerd.io/inject: enabled|ingress`
 *   on the pod, or on its Namespace unless the pod says `disabled`) — the dev control plane plays the injector.
 *   Only meshed pods get inbound policy (unmeshed → NotFound) and mesh fields in endpoints. TLS identities are
 *   sent only for pods of this control plane (label value = `controlPlaneNamespace`, or injected).
 * - Injector-copied annotations (`config.linkerd.io/default-inbound-policy`, `…/opaque-ports`,
 *   `…/proxy-require-identity-inbound-ports`) are resolved at read time: pod value if present, else the
 *   Namespace's. An invalid default-policy value falls back to the cluster default (§2.2). Without any
 *   opaque-ports annotation, the pod's container ports among the chart's default opaque ports are opaque.
 * - API-server defaults are applied: HTTPRoute rules default to one `PathPrefix /` match, a match without path
 *   is `PathPrefix /`, redirects default to 302, Service targetPort defaults to port, namespace to `default`,
 *   serviceAccountName to `default`, status.podIP to 127.0.0.1.
 * - Linkerd ignores some invalid resources at runtime with a warning. A resource that is wrong in itself (bad
 *   annotations, routes with unsupported filters, …) is a ManifestProblem naming file, document and field,
 *   and nothing is built. A reference that does not resolve (an AuthorizationPolicy naming a missing
 *   MeshTLSAuthentication or target, a route whose parent Server or Service is missing, a Server parent in
 *   another namespace or with port/sectionName, a ServerAuthorization for a missing Server) is what
 *   Kubernetes accepts and Linkerd's controller survives: that one resource is ignored, as the controller
 *   does, and reported in `warnings` naming it (like a status condition); everything else is served.
 *   Also as in Linkerd: an invalid default-inbound-policy annotation and an unparsable port-list annotation
 *   fall back (default / empty list).
 * - Order of server-level authorizations (a hash map in Linkerd): ServerAuthorizations by name, then
 *   AuthorizationPolicies by name, then the Server's accessPolicy.
 * - Endpoints: `opaque_transport{inbound_port}` is sent for every port when the pod annotates
 *   `inmesh.dev/inbound-port` (inmesh services serve mesh TLS on their app port, so by default none); for a
 *   pod with a `linkerd-proxy` container, Linkerd's rule applies (opaque ports only, port from
 *   `LINKERD2_PROXY_INBOUND_LISTEN_ADDR`). Such a pod lacking the env is kept, not dropped. Pods sharing an
 *   address collapse to one endpoint. Zone labels are empty (no nodes).
 * - OutboundPolicies for an IP target: a Service cluster IP gets the Service's policy; any other IP is NotFound
 *   (the proxy then forwards to the original destination, using the profile endpoint for identity).
 * - gRPC route filters Linkerd cannot send (ResponseHeaderModifier) are dropped rather than sent kind-less.
 */
import { buildState } from "./build.js";
import type { ClusterOptions } from "./options.js";
import type { ClusterState, ManifestFile } from "./types.js";

export type {
  ClusterOptions,
  DefaultPolicyName,
  OutboundTransportMode,
  ResolvedClusterOptions,
} from "./options.js";
export { DEFAULT_POLICY_NAMES, isDefaultPolicyName } from "./options.js";
export type {
  ClusterState,
  ContainerPortInfo,
  LookupError,
  ManifestFile,
  ManifestProblem,
  PodInfo,
  ServiceInfo,
  ServicePortInfo,
} from "./types.js";
export { ManifestError } from "./types.js";
export type { Workload } from "./workload.js";
export { parseWorkload } from "./workload.js";

/** Parses and validates all files; throws ManifestError listing every problem (file, document index, field) and builds nothing. */
export function buildClusterState(files: ManifestFile[], options: ClusterOptions = {}): ClusterState {
  return buildState(files, options);
}
