export type { Backoff, BackoffOptions } from "./backoff.js";
export { createBackoff } from "./backoff.js";
export type { MeshCall } from "./call.js";
export { normalizeClientAddress } from "./call.js";
export type {
  DecisionSummary,
  InboundCallMessage,
  MeshChannelHandlers,
  MeshChannelMessages,
  MeshChannelName,
  MeshChannelSubscription,
  OutboundAttemptMessage,
  OutboundCallMessage,
  ResourceLabels,
  TcpAuthzMessage,
  TcpConnectionMessage,
} from "./diagnostics.js";
export { createMeshChannelSubscription, MeshChannel, meshChannel } from "./diagnostics.js";
export type { ControlPlaneAddress, Env, HostPort } from "./env.js";
export {
  assertDnsName,
  isDnsName,
  parseBooleanEnv,
  parseCidrList,
  parseControlPlaneAddress,
  parseDurationMs,
  parseHostPort,
  parsePortList,
  readEnv,
  requireEnv,
} from "./env.js";
export type { MeshErrorOptions } from "./errors.js";
export {
  ConfigError,
  ControlPlaneError,
  checkDuration,
  DestinationError,
  hasMeshErrorCode,
  IdentityError,
  isMeshError,
  MeshError,
  MeshErrorCode,
  PolicyDeniedError,
} from "./errors.js";
export type { Closable } from "./lifecycle.js";
export { closeOnce, delay, keepProcessAlive, unrefTimeout } from "./lifecycle.js";
export type { Cidr } from "./net.js";
export {
  cidrContains,
  formatCidr,
  formatIpAddress,
  ipv4Word,
  isLoopbackHost,
  parseCidr,
  parseIpAddress,
} from "./net.js";
export type { NoPeerIdentityReason, PeerIdentity } from "./peer.js";
export { NO_PEER, PORT_SKIPPED_PEER, peerIdentityName, serviceAccountIdentity } from "./peer.js";
export { secureRandom } from "./random.js";
export type { RustRegexTranslation } from "./rust-regex.js";
export { translateRustRegex } from "./rust-regex.js";
export { holdTickShape, tickShapeHeld } from "./tick-shape.js";
