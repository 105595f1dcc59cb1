// Two engineers own the two halves of this package; each edits only its own block.
// BEGIN inbound exports
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
// END inbound exports
// BEGIN outbound exports
export { MeshHttpAgent } from "./outbound/agent.js";
export type { MeshInterceptor } from "./outbound/compose.js";
export { composeInterceptors } from "./outbound/compose.js";
export type { MeshConnect, MeshConnectOptions } from "./outbound/connect.js";
export { EndpointConnectError } from "./outbound/connector.js";
export type { MeshDispatcher } from "./outbound/dispatcher.js";
export { createMeshDispatcher } from "./outbound/dispatcher.js";
export type { MeshFetch } from "./outbound/fetch.js";
export { createMeshFetch } from "./outbound/fetch.js";
export { installGlobalDispatcher } from "./outbound/global.js";
export type { NameContext, OutboundName } from "./outbound/names.js";
export { classifyHost } from "./outbound/names.js";
export type { MeshDispatcherOptions } from "./outbound/options.js";
export type { MeshDiscovery } from "./outbound/targets.js";
