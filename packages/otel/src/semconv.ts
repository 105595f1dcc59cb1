/**
 * OpenTelemetry semantic-convention attribute names and values, copied rather than imported from
 * `@opentelemetry/semantic-conventions`, whose unstable entry point may change between minor versions
 * (style guide §9.4 practice 5). HTTP and URL names are stable since semconv 1.23; RPC names are
 * experimental.
 */

// HTTP (stable)
export const ATTR_HTTP_REQUEST_METHOD = "http.request.method";
export const ATTR_HTTP_REQUEST_METHOD_ORIGINAL = "http.request.method_original";
export const ATTR_HTTP_REQUEST_RESEND_COUNT = "http.request.resend_count";
export const ATTR_HTTP_RESPONSE_STATUS_CODE = "http.response.status_code";
export const HTTP_REQUEST_METHOD_OTHER = "_OTHER";
/** Methods semconv lists; any other is reported as `_OTHER` with the original in `method_original`. */
export const KNOWN_HTTP_METHODS: ReadonlySet<string> = new Set([
  "CONNECT",
  "DELETE",
  "GET",
  "HEAD",
  "OPTIONS",
  "PATCH",
  "POST",
  "PUT",
  "QUERY",
  "TRACE",
]);

// URL (stable)
export const ATTR_URL_FULL = "url.full";
export const ATTR_URL_PATH = "url.path";
export const ATTR_URL_SCHEME = "url.scheme";

// Server, client, network (stable)
export const ATTR_SERVER_ADDRESS = "server.address";
export const ATTR_SERVER_PORT = "server.port";
export const ATTR_CLIENT_ADDRESS = "client.address";
export const ATTR_NETWORK_PEER_ADDRESS = "network.peer.address";
export const ATTR_NETWORK_PEER_PORT = "network.peer.port";
export const ATTR_NETWORK_PROTOCOL_NAME = "network.protocol.name";
export const ATTR_NETWORK_PROTOCOL_VERSION = "network.protocol.version";
export const ATTR_USER_AGENT_ORIGINAL = "user_agent.original";

// Errors (stable)
export const ATTR_ERROR_TYPE = "error.type";
export const ERROR_TYPE_OTHER = "_OTHER";

// RPC (experimental)
export const ATTR_RPC_SYSTEM = "rpc.system";
export const ATTR_RPC_SERVICE = "rpc.service";
export const ATTR_RPC_METHOD = "rpc.method";
export const ATTR_RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code";
export const RPC_SYSTEM_GRPC = "grpc";

/** inmesh's own attributes. */
export const ATTR_MESH_PEER_IDENTITY = "mesh.peer.identity";
export const ATTR_MESH_PEER_TLS = "mesh.peer.tls";
export const ATTR_MESH_SERVER_IDENTITY = "mesh.server.identity";
export const ATTR_MESH_POLICY_ALLOWED = "mesh.policy.allowed";
export const ATTR_MESH_POLICY_REASON = "mesh.policy.reason";
export const ATTR_MESH_POLICY_SERVER = "mesh.policy.server";
export const ATTR_MESH_POLICY_ROUTE = "mesh.policy.route";
export const ATTR_MESH_POLICY_AUTHZ = "mesh.policy.authz";
export const ATTR_MESH_ROUTE = "mesh.route";
export const ATTR_MESH_ATTEMPT = "mesh.attempt";
export const ATTR_MESH_ATTEMPTS = "mesh.attempts";
