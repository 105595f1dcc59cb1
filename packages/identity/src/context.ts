import { constants as cryptoConstants } from "node:crypto";
import { createSecureContext, type SecureContext } from "node:tls";

/**
 * TLS settings every mesh context shares: TLS 1.3 only (its default suites are Linkerd's
 * AES-GCM/ChaCha20 set), and OpenSSL security level 2, so chain verification itself refuses RSA
 * keys under 2048 bits and SHA-1 signatures in a peer's chain (Node's default level is 1).
 */
export const MESH_TLS_SETTINGS = { minVersion: "TLSv1.3", ciphers: "DEFAULT:@SECLEVEL=2" } as const;

/** No session tickets: a resumed session would skip the client-certificate check of a newer generation. */
export const MESH_SERVER_SECURE_OPTIONS = cryptoConstants.SSL_OP_NO_TICKET;

export interface MeshSecureContextOptions {
  /** PKCS#8 (or SEC1) PEM; omitted for a context that presents no certificate. */
  readonly privateKeyPem?: string;
  /** Leaf followed by intermediates, PEM. */
  readonly certificateChainPem?: string;
  /** The only roots trusted: the mesh anchors, never the public CA store. */
  readonly trustAnchorsPem: string;
  readonly role: "server" | "client";
}

/** One SecureContext; callers build one per certificate/trust-anchor generation and share it. */
export function createMeshSecureContext(options: MeshSecureContextOptions): SecureContext {
  return createSecureContext({
    ...MESH_TLS_SETTINGS,
    ca: options.trustAnchorsPem,
    ...(options.privateKeyPem === undefined ? {} : { key: options.privateKeyPem }),
    ...(options.certificateChainPem === undefined ? {} : { cert: options.certificateChainPem }),
    ...(options.role === "server" ? { secureOptions: MESH_SERVER_SECURE_OPTIONS } : {}),
  });
}
