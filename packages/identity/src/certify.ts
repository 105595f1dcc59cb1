import { X509Certificate } from "node:crypto";
import type { SecureContext } from "node:tls";
import { type ChannelOptions, credentials, Metadata, type ServiceError, status } from "@grpc/grpc-js";
import { type ControlPlaneAddress, IdentityError, MeshErrorCode } from "@inmesh/core";
import { identity as identityProto, timestampToMs } from "@inmesh/proto/serving";
import type { TrustAnchors } from "./anchors.js";
import { createMeshSecureContext } from "./context.js";
import type { IdentityKey } from "./keys.js";
import { createServerIdentityCheck } from "./tls.js";
import { DEFAULT_MAX_CERTIFICATE_BYTES, verifyPeerCertificateChain } from "./verify.js";

/** A CertifyResponse is a leaf and an issuer or two, a few KiB; anything near this is refused by grpc-js. */
const MAX_CERTIFY_RESPONSE_BYTES = 256 * 1024;
const MAX_INTERMEDIATES = 8;

export interface CertifyTransportOptions {
  readonly address: ControlPlaneAddress;
  /** Use TLS even when the address is loopback (contract §2.1 says plaintext there). */
  readonly tlsOnLoopback: boolean;
  readonly timeoutMs: number;
}

export interface CertifyAttempt {
  readonly key: IdentityKey;
  readonly token: Uint8Array;
  readonly trustAnchors: TrustAnchors;
  readonly clockSkewToleranceMs: number;
  readonly signal?: AbortSignal;
}

/** A CertifyResponse that passed every check. */
export interface IssuedIdentity {
  readonly leafDer: Buffer;
  readonly intermediatesDer: readonly Buffer[];
  /** min(valid_until, leaf notAfter), wall clock. */
  readonly notAfterMs: number;
  readonly notBeforeMs: number;
  /** Hex, upper-case, as node:crypto reports it. */
  readonly serial: string;
}

// One SecureContext per trust-anchor generation for the identity service connection.
const certifyContexts = new WeakMap<TrustAnchors, SecureContext>();

function certifyContext(anchors: TrustAnchors): SecureContext {
  let context = certifyContexts.get(anchors);
  if (!context) {
    // No key/cert: Certify is TLS without a client certificate (contract §3.2).
    context = createMeshSecureContext({ trustAnchorsPem: anchors.pem, role: "client" });
    certifyContexts.set(anchors, context);
  }
  return context;
}

function target(address: ControlPlaneAddress): string {
  return address.host.includes(":")
    ? `ipv6:[${address.host}]:${address.port}`
    : `${address.host}:${address.port}`;
}

function failed(message: string, details: Record<string, unknown>, cause?: unknown): IdentityError {
  return new IdentityError(MeshErrorCode.IDENTITY_CERTIFY_FAILED, message, {
    ...(cause === undefined ? {} : { cause }),
    details,
  });
}

function invalidCertificate(message: string, details: Record<string, unknown>): IdentityError {
  return new IdentityError(
    MeshErrorCode.IDENTITY_INVALID_CERTIFICATE,
    `Certify returned an unusable certificate: ${message}`,
    {
      details,
    },
  );
}

/** One Certify RPC on a fresh client (as the proxy builds one per attempt), closed afterwards. */
function callCertify(
  transport: CertifyTransportOptions,
  request: identityProto.CertifyRequest,
  anchors: TrustAnchors,
  signal: AbortSignal | undefined,
): Promise<identityProto.CertifyResponse> {
  const { address } = transport;
  const plaintext = address.plaintext && !transport.tlsOnLoopback;
  const channelOptions: ChannelOptions = {
    "grpc.max_receive_message_length": MAX_CERTIFY_RESPONSE_BYTES,
    "grpc.enable_retries": 0,
    "grpc.service_config_disable_resolution": 1,
  };
  let channelCredentials: ReturnType<typeof credentials.createInsecure>;
  if (plaintext) {
    channelCredentials = credentials.createInsecure();
  } else {
    const serverName = address.serverName;
    if (serverName === undefined) {
      return Promise.reject(
        failed("TLS to the identity service needs its name (LINKERD2_PROXY_IDENTITY_SVC_NAME)", {
          reason: "no-server-name",
        }),
      );
    }
    // SNI and the expected identity are both SVC_NAME; no hostname matching, only the single DNS SAN.
    channelOptions["grpc.ssl_target_name_override"] = serverName;
    channelCredentials = credentials.createFromSecureContext(certifyContext(anchors), {
      checkServerIdentity: createServerIdentityCheck(serverName),
    });
  }
  const client = new identityProto.IdentityClient(target(address), channelCredentials, channelOptions);
  return new Promise<identityProto.CertifyResponse>((resolve, reject) => {
    const onAbort = () => call.cancel();
    const call = client.certify(
      request,
      new Metadata(),
      { deadline: Date.now() + transport.timeoutMs },
      (error: ServiceError | null, response: identityProto.CertifyResponse) => {
        signal?.removeEventListener("abort", onAbort);
        client.close();
        if (error) {
          reject(
            failed(
              `Certify failed: ${status[error.code] ?? error.code} ${error.details}`,
              { grpcCode: error.code },
              error,
            ),
          );
          return;
        }
        resolve(response);
      },
    );
    if (signal?.aborted) onAbort();
    else signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * Runs one Certify attempt and validates the answer as linkerd2-proxy does (contract §3.5), plus
 * our stricter leaf rules: valid_until present and in the future; the chain verifies to the trust
 * anchors (OpenSSL); the leaf has exactly one DNS SAN equal to our identity; the leaf carries our key.
 */
export async function certifyIdentity(
  transport: CertifyTransportOptions,
  attempt: CertifyAttempt,
): Promise<IssuedIdentity> {
  const { key } = attempt;
  const response = await callCertify(
    transport,
    { identity: key.identity, token: Buffer.from(attempt.token), certificateSigningRequest: key.csrDer },
    attempt.trustAnchors,
    attempt.signal,
  );
  const nowMs = Date.now();
  const validUntilMs = timestampToMs(response.validUntil);
  if (validUntilMs === undefined || !Number.isFinite(validUntilMs)) {
    throw invalidCertificate("valid_until is missing", { reason: "no-valid-until" });
  }
  if (validUntilMs <= nowMs)
    throw invalidCertificate("valid_until is in the past", { reason: "expired", validUntilMs });
  if (response.leafCertificate.byteLength === 0)
    throw invalidCertificate("no leaf certificate", { reason: "malformed" });
  if (response.intermediateCertificates.length > MAX_INTERMEDIATES) {
    throw invalidCertificate("too many intermediate certificates", { reason: "chain-too-long" });
  }
  const verdict = verifyPeerCertificateChain(
    response.leafCertificate,
    response.intermediateCertificates,
    attempt.trustAnchors,
    {
      expectedIdentity: key.identity,
      purpose: "both",
      nowMs,
      clockSkewToleranceMs: attempt.clockSkewToleranceMs,
      maxIntermediates: MAX_INTERMEDIATES,
      maxCertificateBytes: DEFAULT_MAX_CERTIFICATE_BYTES,
    },
  );
  if (!verdict.ok) {
    throw invalidCertificate(`${verdict.failure.reason}: ${verdict.failure.message}`, {
      reason: verdict.failure.reason,
    });
  }
  const leaf = new X509Certificate(response.leafCertificate);
  const leafSpki = leaf.publicKey.export({ format: "der", type: "spki" });
  if (!leafSpki.equals(key.publicKeySpkiDer)) {
    throw invalidCertificate("the leaf does not carry our public key", { reason: "key-mismatch" });
  }
  return {
    leafDer: Buffer.from(response.leafCertificate),
    intermediatesDer: response.intermediateCertificates.map((der) => Buffer.from(der)),
    notAfterMs: Math.min(validUntilMs, verdict.notAfterMs),
    notBeforeMs: verdict.notBeforeMs,
    serial: leaf.serialNumber,
  };
}
