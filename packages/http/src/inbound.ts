// `@inmesh/http/inbound`: the server side alone. It loads neither undici nor the outbound stack, so an
// inbound-only service (createMesh's servers) does not pay for them; `@inmesh/http` exports the same.
export type { MeshServerIdentity } from "./inbound/connection.js";
export type { MeshConnectionInfo, MeshRequestContext } from "./inbound/context.js";
export { meshContext } from "./inbound/context.js";
export type { MeshAuthorization, MeshSyntheticResponse } from "./inbound/gate.js";
export type { OrigProto } from "./inbound/headers.js";
export { L5D_CLIENT_ID, L5D_ORIG_PROTO, L5D_PROXY_ERROR } from "./inbound/headers.js";
export type {
  MeshRequest,
  MeshRequestAuthorizer,
  MeshRequestAuthorizerOptions,
  MeshRequestListener,
  MeshRequestListenerOptions,
  MeshResponse,
} from "./inbound/listener.js";
export {
  createMeshRequestAuthorizer,
  createMeshRequestListener,
  sendMeshResponse,
} from "./inbound/listener.js";
export type { MeshPolicyInput, MeshPolicySource } from "./inbound/policy-source.js";
export type {
  MeshRequestHandler,
  MeshServer,
  MeshServerOptions,
  TransportHeaderTarget,
} from "./inbound/server.js";
export { createMeshServer } from "./inbound/server.js";
export type {
  TransportHeaderListener,
  TransportHeaderListenerOptions,
} from "./inbound/transport-header-listener.js";
export { createTransportHeaderListener } from "./inbound/transport-header-listener.js";
