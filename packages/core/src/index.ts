export {
  MeshError,
  MeshErrorCode,
  IdentityError,
  ControlPlaneError,
  DestinationError,
  PolicyDeniedError,
  ConfigError,
  isMeshError,
  hasMeshErrorCode,
} from "./errors.js";
export type { MeshErrorOptions } from "./errors.js";
export { NO_PEER, peerIdentityName, serviceAccountIdentity } from "./peer.js";
export type { PeerIdentity, NoPeerIdentityReason } from "./peer.js";
export { normalizeClientAddress } from "./call.js";
export type { MeshCall } from "./call.js";
export { createBackoff } from "./backoff.js";
export type { Backoff, BackoffOptions } from "./backoff.js";
export { closeOnce, unrefTimeout, delay } from "./lifecycle.js";
export type { Closable } from "./lifecycle.js";
export { secureRandom } from "./random.js";
export { parseCidr, parseIpAddress, cidrContains, formatCidr, formatIpAddress, isLoopbackHost } from "./net.js";
export type { Cidr } from "./net.js";
export {
  readEnv,
  requireEnv,
  parseDurationMs,
  parsePortList,
  parseCidrList,
  parseBooleanEnv,
  parseHostPort,
  parseControlPlaneAddress,
  isDnsName,
  assertDnsName,
} from "./env.js";
export type { Env, HostPort, ControlPlaneAddress } from "./env.js";
