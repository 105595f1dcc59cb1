/**
 * @inmesh/control-plane: a development control plane that serves Linkerd's identity, destination and
 * policy gRPC APIs from Kubernetes-style manifests. For development, tests and demos only; in production
 * use Linkerd's control plane.
 */

export type {
  CertificateAuthority,
  CertificateAuthorityChange,
  CertificateAuthorityOptions,
  CertificateAuthorityPemOptions,
  CsrRejectionReason,
  IssuedCertificate,
  IssuedCredentials,
  IssueOptions,
} from "./ca.js";
export {
  CsrRejectedError,
  certificateAuthorityFromPem,
  createCertificateAuthority,
  loadOrCreateCertificateAuthority,
} from "./ca.js";
export type {
  ClusterOptions,
  ClusterState,
  ContainerPortInfo,
  DefaultPolicyName,
  LookupError,
  ManifestFile,
  ManifestProblem,
  OutboundTransportMode,
  PodInfo,
  ResolvedClusterOptions,
  ServiceInfo,
  ServicePortInfo,
  Workload,
} from "./model/index.js";
export {
  buildClusterState,
  DEFAULT_POLICY_NAMES,
  isDefaultPolicyName,
  ManifestError,
  parseWorkload,
} from "./model/index.js";
export type {
  ControlPlane,
  ControlPlaneEvents,
  ControlPlaneOptions,
  ControlPlanePorts,
  ManifestRejectedEvent,
  ReloadedEvent,
  ReloadResult,
} from "./server/control-plane.js";
export {
  DEFAULT_CERTIFICATE_LIFETIME_MS,
  DEFAULT_CONTROL_PLANE_PORTS,
  startControlPlane,
} from "./server/control-plane.js";
export { formatDotenv, formatDotenvValue } from "./server/dotenv.js";
export type { ReadManifestFolderOptions } from "./server/manifest-folder.js";
export { readManifestFolder } from "./server/manifest-folder.js";
export type { PrepareWorkloadEnvOptions, WorkloadEnv, WorkloadEnvOptions } from "./server/prepare-env.js";
export { prepareWorkloadEnv } from "./server/prepare-env.js";
export { formatManifestProblem } from "./server/problems.js";
export type {
  ControlPlaneAddresses,
  ControlPlaneServerNames,
  WorkloadEnvInput,
} from "./server/workload-env.js";
export { buildWorkloadEnv, controlPlaneServerNames, DEFAULT_OPAQUE_PORTS } from "./server/workload-env.js";
