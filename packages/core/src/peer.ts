/**
 * The verified identity of the other end of a connection, computed once per TLS connection.
 * `kind: "none"` carries why there is no identity, in Linkerd's metric vocabulary where one exists.
 */
export type PeerIdentity =
  | { readonly kind: "mesh"; readonly name: string; readonly tls: "established" }
  | { readonly kind: "tls-anonymous"; readonly tls: "established" }
  | {
      readonly kind: "none";
      readonly reason: NoPeerIdentityReason;
      /** The ClientHello's server name, for TLS passed through (`reason: "passthru"`). */
      readonly sni?: string;
    };

export type NoPeerIdentityReason =
  /** Plaintext connection from a remote address. */
  | "no_tls_from_remote"
  /** Plaintext connection from loopback (an outbound reason: inbound plaintext is `no_tls_from_remote`). */
  | "loopback"
  /** A port where TLS is not detected at all (an opaque port): Linkerd's `port_skipped`. */
  | "port_skipped"
  /** TLS whose SNI is not our identity: passed through, never terminated by us. */
  | "passthru"
  /** The peer presented a certificate that does not chain to the trust anchors or is malformed. */
  | "unverified";

export const NO_PEER: PeerIdentity = Object.freeze({ kind: "none", reason: "no_tls_from_remote" });
/** Plaintext on an opaque port, where no TLS detection happens. */
export const PORT_SKIPPED_PEER: PeerIdentity = Object.freeze({ kind: "none", reason: "port_skipped" });

export function peerIdentityName(peer: PeerIdentity | null | undefined): string | undefined {
  return peer?.kind === "mesh" ? peer.name : undefined;
}

/** Linkerd identity name: `<sa>.<ns>.serviceaccount.identity.<cpns>.<trust-domain>`. */
export function serviceAccountIdentity(
  serviceAccount: string,
  namespace: string,
  controlPlaneNamespace = "linkerd",
  trustDomain = "cluster.local",
): string {
  return `${serviceAccount}.${namespace}.serviceaccount.identity.${controlPlaneNamespace}.${trustDomain}`;
}
