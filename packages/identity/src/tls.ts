import { channel } from "node:diagnostics_channel";
import type { Socket } from "node:net";
import type { PeerCertificate, TLSSocket } from "node:tls";
import { IdentityError, isLoopbackHost, MeshErrorCode, type PeerIdentity } from "@inmesh/core";
import { DerError, expectTlv, readTlv, TAG, type Tlv } from "./der.js";
import { type CertificatePurpose, checkLeafCertificate, type PeerCertificateFailure } from "./verify.js";

/** What we learned about the other end of one connection. Computed once, cached per socket. */
export interface PeerVerification {
  readonly identity: PeerIdentity;
  /** Why a presented certificate was refused (only when identity is `{kind:"none", reason:"unverified"}`). */
  readonly failure?: PeerCertificateFailure;
}

const peerRejectedChannel = channel("mesh:identity:peer-rejected");

/**
 * A `checkServerIdentity` for node:tls / grpc-js: the server's leaf (whose chain OpenSSL has already
 * verified against the context's `ca`) must be a Linkerd leaf whose single DNS SAN is `expected`.
 * No hostname matching and no reading of `subjectaltname` strings: the DER is parsed. Never throws.
 */
export function createServerIdentityCheck(
  expected: string,
): (host: string, cert: PeerCertificate) => Error | undefined {
  return (_host, cert) => {
    const raw = cert?.raw;
    if (!raw || raw.byteLength === 0) {
      return new IdentityError(
        MeshErrorCode.IDENTITY_PEER_UNVERIFIED,
        "the server presented no certificate",
        {
          details: { expected },
        },
      );
    }
    const verdict = checkLeafCertificate(raw, { expectedIdentity: expected, purpose: "server" });
    if (verdict.ok) return undefined;
    const { reason, message } = verdict.failure;
    return new IdentityError(
      reason === "identity-mismatch"
        ? MeshErrorCode.IDENTITY_PEER_MISMATCH
        : MeshErrorCode.IDENTITY_PEER_UNVERIFIED,
      `server certificate refused (${reason}): ${message}`,
      { details: { reason, expected } },
    );
  };
}

const verifications = new WeakMap<object, PeerVerification>();

function isTlsSocket(socket: Socket | TLSSocket): socket is TLSSocket {
  return (socket as TLSSocket).encrypted === true;
}

export interface PeerVerificationOptions {
  /** The role the peer plays: "client" for connections we accepted (default), "server" for ones we dialed. */
  purpose?: Exclude<CertificatePurpose, "both">;
}

/**
 * The verified identity of a connection's peer, computed once per socket and cached in a WeakMap
 * (design rule 2). `{kind:"mesh"}` only when OpenSSL verified the chain against the context's trust
 * anchors (`socket.authorized`, so the socket must come from a server or client configured by an
 * IdentityProvider, whose `ca` is the mesh anchors only) and the leaf passes the Linkerd leaf rules.
 */
export function peerVerification(
  socket: Socket | TLSSocket,
  options: PeerVerificationOptions = {},
): PeerVerification {
  const cached = verifications.get(socket);
  if (cached) return cached;
  if (!isTlsSocket(socket)) {
    const reason =
      socket.remoteAddress !== undefined && isLoopbackHost(socket.remoteAddress)
        ? "loopback"
        : "no_tls_from_remote";
    return { identity: { kind: "none", reason } };
  }
  // The peer's Finished comes after its Certificate: before it, nothing is known yet and nothing is cached.
  if (socket.getPeerFinished() === undefined) {
    return { identity: { kind: "none", reason: "unverified" } };
  }
  let result: PeerVerification;
  const leafDer = peerLeafDer(socket);
  if (leafDer === undefined || leafDer.byteLength === 0) {
    result = { identity: { kind: "tls-anonymous", tls: "established" } };
  } else if (!socket.authorized) {
    const code = String(socket.authorizationError ?? "UNKNOWN");
    result = {
      identity: { kind: "none", reason: "unverified" },
      failure: { reason: "tls-unauthorized", message: `OpenSSL refused the peer chain: ${code}` },
    };
  } else {
    const verdict = checkLeafCertificate(leafDer, { purpose: options.purpose ?? "client" });
    result = verdict.ok
      ? { identity: { kind: "mesh", name: verdict.identity, tls: "established" } }
      : { identity: { kind: "none", reason: "unverified" }, failure: verdict.failure };
  }
  if (result.failure && peerRejectedChannel.hasSubscribers) {
    peerRejectedChannel.publish({ reason: result.failure.reason, message: result.failure.message });
  }
  verifications.set(socket, result);
  return result;
}

/**
 * The DER of the peer's leaf certificate, undefined (or empty) when it presented none. Taken from the
 * session `getSession()` encodes, where OpenSSL's SSL_SESSION carries the peer's certificate as it
 * arrived: ~0.03 ms per connection on Node 20, where getPeerCertificate() builds a dozen strings and
 * three fingerprints around the same bytes (~0.15 ms) and getPeerX509Certificate() copies the peer's
 * intermediates too (~0.38 ms): S6. An encoding this reader does not know falls back to
 * getPeerCertificate().
 */
function peerLeafDer(socket: TLSSocket): Buffer | undefined {
  const session = socket.getSession();
  const fromSession = session === undefined ? undefined : peerCertificateOfSession(session);
  if (fromSession !== undefined) return fromSession ?? undefined;
  return socket.getPeerCertificate()?.raw;
}

/** SSL_SESSION_ASN1_VERSION: the first field of every session OpenSSL 1.0.1 to 3.x encodes. */
const SESSION_ENCODING_VERSION = 1;
/** ssl_version, cipher, session_id, master_key: the fields between the version and the tagged ones. */
const UNTAGGED_SESSION_FIELDS = [TAG.INTEGER, TAG.OCTET_STRING, TAG.OCTET_STRING, TAG.OCTET_STRING];
/** `peer [3] EXPLICIT Certificate OPTIONAL` (context-specific, constructed, 3). */
const SESSION_PEER_TAG = 0xa3;

/**
 * The peer certificate inside an OpenSSL-encoded SSL_SESSION (ssl/ssl_asn1.c: version, protocol,
 * cipher, session id, master key, [0] key arg, [1] time, [2] timeout, [3] peer, [4]…): its DER, `null`
 * when the session says the peer presented none, undefined when the bytes are not that encoding.
 */
export function peerCertificateOfSession(session: Uint8Array): Buffer | null | undefined {
  try {
    const outer = expectTlv(session, 0, session.byteLength, TAG.SEQUENCE, "session");
    if (outer.end !== session.byteLength) return undefined;
    const version = expectTlv(session, outer.valueStart, outer.end, TAG.INTEGER, "session version");
    if (version.end - version.valueStart !== 1 || session[version.valueStart] !== SESSION_ENCODING_VERSION)
      return undefined;
    // The protocol, cipher, session id and master key come next, then the tagged fields in ascending
    // order: the whole sequence must match that before the answer counts, an absent peer included.
    let offset = version.end;
    for (const tag of UNTAGGED_SESSION_FIELDS) {
      offset = expectTlv(session, offset, outer.end, tag, "session field").end;
    }
    let peer: Tlv | undefined;
    let lastNumber = -1;
    while (offset < outer.end) {
      const field = readTlv(session, offset, outer.end);
      offset = field.end;
      const number = field.tag & 0x1f;
      if ((field.tag & 0xc0) !== 0x80 || number <= lastNumber) return undefined;
      lastNumber = number;
      if (number !== 3) continue;
      if (field.tag !== SESSION_PEER_TAG) return undefined;
      peer = expectTlv(session, field.valueStart, field.end, TAG.SEQUENCE, "peer certificate");
      if (peer.end !== field.end) return undefined;
    }
    if (peer === undefined) return null;
    return Buffer.from(session.buffer, session.byteOffset + peer.start, peer.end - peer.start);
  } catch (error) {
    if (error instanceof DerError) return undefined;
    throw error;
  }
}

/** `peerVerification(socket).identity`. */
export function peerIdentity(socket: Socket | TLSSocket, options?: PeerVerificationOptions): PeerIdentity {
  return peerVerification(socket, options).identity;
}
