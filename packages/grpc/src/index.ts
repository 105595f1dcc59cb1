// Two engineers own the two halves of this package; each edits only its own block.
// BEGIN server exports

// END server exports
// BEGIN client exports
export { createMeshCertificateProvider } from "./client/certificate-provider.js";
export type { MeshGrpcChannel, MeshGrpcChannelOptions, MeshGrpcDiscovery } from "./client/channel.js";
export { createMeshGrpcChannel, MESH_ERROR_METADATA_KEY } from "./client/channel.js";
export { meshClientArguments } from "./client/client-arguments.js";
export type { MeshChannelCredentialsOptions, MeshClientIdentity } from "./client/credentials.js";
export { createMeshChannelCredentials } from "./client/credentials.js";
export type { MeshClientInterceptorOptions } from "./client/interceptors.js";
export {
  createMeshClientInterceptors,
  createMeshClientOptions,
  createMeshRetryInterceptor,
  createMeshTelemetryInterceptor,
} from "./client/interceptors.js";
export type {
  MeshGrpcCallContext,
  MeshGrpcPolicyInput,
  MeshGrpcServerIdentity,
} from "./server/authorization.js";
export { meshCallContext, meshPeer } from "./server/authorization.js";
export type {
  MeshConnectionInjector,
  MeshConnectionInjectorOptions,
  MeshServerCredentialsOptions,
} from "./server/credentials.js";
export { createMeshConnectionInjector, createMeshServerCredentials } from "./server/credentials.js";
