export type { TrustAnchors } from "./anchors.js";
export { MAX_TRUST_ANCHORS, parseTrustAnchors } from "./anchors.js";
export type { CertifyAttempt, CertifyTransportOptions, IssuedIdentity } from "./certify.js";
export { certifyIdentity } from "./certify.js";
export type { IdentityConfig, IdentityConfigOptions } from "./config.js";
export {
  DEFAULT_MAX_REFRESH_MS,
  DEFAULT_MIN_REFRESH_MS,
  IDENTITY_ENV,
  resolveIdentityConfig,
} from "./config.js";
export type { MeshSecureContextOptions } from "./context.js";
export { createMeshSecureContext, MESH_SERVER_SECURE_OPTIONS, MESH_TLS_SETTINGS } from "./context.js";
export type { IdentityKey } from "./keys.js";
export { createIdentityKey } from "./keys.js";
export { derToPem, pemToDers } from "./pem.js";
export type {
  IdentityEvents,
  IdentityExpiredEvent,
  IdentityFailedEvent,
  IdentityIssuedEvent,
  IdentityMaterial,
  IdentityProvider,
  IdentityProviderOptions,
  IdentityState,
  IdentityStatus,
  TlsServerOptionsInput,
  TrustAnchorsUpdatedEvent,
} from "./provider.js";
export { createIdentityProvider, refreshDelayMs } from "./provider.js";
export type { PeerVerification, PeerVerificationOptions } from "./tls.js";
export { createServerIdentityCheck, peerIdentity, peerVerification } from "./tls.js";
export type {
  CertificatePurpose,
  ChainVerifyOptions,
  LeafCheckOptions,
  PeerCertificateFailure,
  PeerCertificateFailureReason,
  PeerCertificateVerdict,
} from "./verify.js";
export { checkLeafCertificate, DEFAULT_MAX_CERTIFICATE_BYTES, verifyPeerCertificateChain } from "./verify.js";
