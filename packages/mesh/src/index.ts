export type { MeshConfig, MeshConfigOptions } from "./config.js";
export { DEFAULT_CLUSTER_NETWORKS, resolveMeshConfig } from "./config.js";
export type { ControlPlaneCredentialsFactory } from "./control-plane.js";
export {
  CONTROL_PLANE_MAX_MESSAGE_BYTES,
  defaultControlPlaneCredentials,
} from "./control-plane.js";
export type { CreateMeshOptions, Mesh, MeshServeOptions } from "./create-mesh.js";
export { createMesh } from "./create-mesh.js";
export type {
  MeshCore,
  MeshEvents,
  MeshInboundPolicy,
  MeshOptions,
  MeshReadyOptions,
  MeshState,
  MeshStatus,
} from "./mesh.js";
export { createMeshCore } from "./mesh.js";
export type { MeshOutbound } from "./outbound.js";
export type { MeshWarningHandler, MissingDependency } from "./readiness.js";
