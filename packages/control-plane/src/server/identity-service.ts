import { debuglog } from "node:util";
import { type ServerUnaryCall, type sendUnaryData, status } from "@grpc/grpc-js";
import { hasMeshErrorCode, MeshErrorCode, serviceAccountIdentity } from "@inmesh/core";
import { type identity, timestampFromMs } from "@inmesh/proto";
import { Pkcs10CertificateRequest } from "@peculiar/x509";
import { type CertificateAuthority, CsrRejectedError } from "../ca.js";
import type { ClusterState } from "../model/index.js";
import { statusError } from "./streams.js";
import type { TokenStore } from "./tokens.js";

const debug = debuglog("mesh");

/** A Linkerd CSR is ~250 bytes; the CA refuses anything over 16 KiB as well. */
const MAX_CSR_BYTES = 16 * 1024;

export interface IdentityServiceDependencies {
  /** undefined while the issuer is not loaded: Certify answers UNAVAILABLE. */
  readonly ca: () => CertificateAuthority | undefined;
  readonly tokens: TokenStore;
  readonly state: () => ClusterState;
  readonly certificateLifetimeMs: number;
}

type GrpcStatusError = ReturnType<typeof statusError>;

function isStatusError(error: unknown): error is GrpcStatusError {
  return typeof error === "object" && error !== null && "code" in error && "details" in error;
}

function parsesAsCsr(der: Uint8Array): boolean {
  if (der.byteLength > MAX_CSR_BYTES) return false;
  try {
    new Pkcs10CertificateRequest(Buffer.from(der));
    return true;
  } catch {
    return false;
  }
}

/**
 * Identity.Certify with the identity controller's checks and status codes (contract §3.3): issuer not
 * ready (or expired) → UNAVAILABLE; empty identity/token/CSR or a CSR that is not DER PKCS#10 → INVALID_ARGUMENT; a
 * token we never issued → FAILED_PRECONDITION (not authenticated); an identity other than the token's
 * workload identity → FAILED_PRECONDITION; CSR content (checkCSR) → FAILED_PRECONDITION. Linkerd runs
 * checkCSR before the token review; here the CA runs it while signing, after the token checks. Both give
 * FAILED_PRECONDITION, so only the message of a request that fails both differs.
 */
export function createIdentityService(deps: IdentityServiceDependencies): identity.IdentityServer {
  const certify = async (request: identity.CertifyRequest): Promise<identity.CertifyResponse> => {
    const ca = deps.ca();
    // An issuer that has expired can sign nothing, which to a client is the same as one not loaded yet.
    if (ca === undefined || ca.issuerNotAfterMs <= Date.now()) {
      throw statusError(status.UNAVAILABLE, "cert issuer not ready yet");
    }
    if (request.identity === "") throw statusError(status.INVALID_ARGUMENT, "missing identity");
    if (request.token.byteLength === 0) throw statusError(status.INVALID_ARGUMENT, "missing token");
    const csr = request.certificateSigningRequest;
    if (csr.byteLength === 0)
      throw statusError(status.INVALID_ARGUMENT, "missing certificate signing request");
    if (!parsesAsCsr(csr))
      throw statusError(status.INVALID_ARGUMENT, "certificate signing request is not DER PKCS#10");

    const token = await deps.tokens.lookup(request.token);
    if (token === undefined)
      throw statusError(status.FAILED_PRECONDITION, "token could not be authenticated");
    const { controlPlaneNamespace, trustDomain } = deps.state().options;
    const tokenIdentity = serviceAccountIdentity(
      token.serviceAccount,
      token.namespace,
      controlPlaneNamespace,
      trustDomain,
    );
    if (request.identity !== tokenIdentity) {
      throw statusError(
        status.FAILED_PRECONDITION,
        `requested identity did not match provided token: requested=${request.identity} token=${tokenIdentity}`,
      );
    }

    let issued: Awaited<ReturnType<CertificateAuthority["issue"]>>;
    try {
      issued = await ca.issue(csr, request.identity, { lifetimeMs: deps.certificateLifetimeMs });
    } catch (error) {
      if (error instanceof CsrRejectedError) {
        const code =
          error.reason === "malformed" || error.reason === "too-large"
            ? status.INVALID_ARGUMENT
            : status.FAILED_PRECONDITION;
        throw statusError(code, error.message);
      }
      if (hasMeshErrorCode(error, MeshErrorCode.CP_UNAVAILABLE))
        throw statusError(status.UNAVAILABLE, error.message);
      throw error;
    }
    debug("control-plane: issued %s to pod %s/%s", request.identity, token.namespace, token.pod);
    return {
      leafCertificate: Buffer.from(issued.leafDer),
      intermediateCertificates: issued.chainDer.map((der) => Buffer.from(der)),
      validUntil: timestampFromMs(issued.validUntilMs),
    };
  };

  return {
    certify(
      call: ServerUnaryCall<identity.CertifyRequest, identity.CertifyResponse>,
      callback: sendUnaryData<identity.CertifyResponse>,
    ) {
      certify(call.request).then(
        (response) => callback(null, response),
        (error: unknown) => {
          if (isStatusError(error)) {
            callback(error);
            return;
          }
          debug("control-plane: Certify failed: %s", (error as Error)?.stack);
          callback(statusError(status.INTERNAL, `certificate issuance failed: ${(error as Error)?.message}`));
        },
      );
    },
  };
}
