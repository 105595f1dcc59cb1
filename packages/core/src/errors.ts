/**
 * One error family for the whole SDK. Codes are stable strings and never reused, so callers can
 * branch on `code` across versions and across duplicate installs of the package.
 */
export const MeshErrorCode = {
  INVALID_ARG: "MESH_ERR_INVALID_ARG",
  INVALID_CONFIG: "MESH_ERR_INVALID_CONFIG",
  CANCELED: "MESH_ERR_CANCELED",
  DEADLINE: "MESH_ERR_DEADLINE",
  CLOSED: "MESH_ERR_CLOSED",
  INTERNAL: "MESH_ERR_INTERNAL",
  PROTO_DECODE: "MESH_ERR_PROTO_DECODE",
  PROTO_TOO_LARGE: "MESH_ERR_PROTO_TOO_LARGE",
  TRANSPORT_HEADER_INVALID: "MESH_ERR_TRANSPORT_HEADER_INVALID",
  TRANSPORT_HEADER_TRUNCATED: "MESH_ERR_TRANSPORT_HEADER_TRUNCATED",
  TRANSPORT_HEADER_TOO_LARGE: "MESH_ERR_TRANSPORT_HEADER_TOO_LARGE",
  IDENTITY_NOT_READY: "MESH_ERR_IDENTITY_NOT_READY",
  IDENTITY_EXPIRED: "MESH_ERR_IDENTITY_EXPIRED",
  IDENTITY_CERTIFY_FAILED: "MESH_ERR_IDENTITY_CERTIFY_FAILED",
  IDENTITY_INVALID_CERTIFICATE: "MESH_ERR_IDENTITY_INVALID_CERTIFICATE",
  IDENTITY_PEER_UNVERIFIED: "MESH_ERR_IDENTITY_PEER_UNVERIFIED",
  IDENTITY_PEER_MISMATCH: "MESH_ERR_IDENTITY_PEER_MISMATCH",
  IDENTITY_CSR_REJECTED: "MESH_ERR_IDENTITY_CSR_REJECTED",
  TRUST_ANCHORS_INVALID: "MESH_ERR_TRUST_ANCHORS_INVALID",
  POLICY_DENIED: "MESH_ERR_POLICY_DENIED",
  POLICY_NOT_LOADED: "MESH_ERR_POLICY_NOT_LOADED",
  POLICY_INVALID: "MESH_ERR_POLICY_INVALID",
  CP_UNAVAILABLE: "MESH_ERR_CP_UNAVAILABLE",
  CP_REJECTED: "MESH_ERR_CP_REJECTED",
  DESTINATION_NOT_FOUND: "MESH_ERR_DESTINATION_NOT_FOUND",
  DESTINATION_NO_ENDPOINTS: "MESH_ERR_DESTINATION_NO_ENDPOINTS",
  DESTINATION_UNREACHABLE: "MESH_ERR_DESTINATION_UNREACHABLE",
  DESTINATION_INVALID_UPDATE: "MESH_ERR_DESTINATION_INVALID_UPDATE",
  DESTINATION_WATCH_LIMIT: "MESH_ERR_DESTINATION_WATCH_LIMIT",
  /** The outbound policy refuses this destination (an EgressNetwork with `trafficPolicy: Deny`). */
  EGRESS_DENIED: "MESH_ERR_EGRESS_DENIED",
  BODY_TOO_LARGE: "MESH_ERR_BODY_TOO_LARGE",
  MANIFEST_INVALID: "MESH_ERR_MANIFEST_INVALID",
} as const;

export type MeshErrorCode = (typeof MeshErrorCode)[keyof typeof MeshErrorCode];

export interface MeshErrorOptions {
  cause?: unknown;
  details?: Readonly<Record<string, unknown>>;
}

const meshErrorBrand = Symbol.for("@inmesh/core.MeshError");

/** Base class of every error the SDK throws or rejects with. */
export class MeshError extends Error {
  readonly code: MeshErrorCode;
  readonly details: Readonly<Record<string, unknown>> | undefined;

  constructor(code: MeshErrorCode, message: string, options: MeshErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "MeshError";
    this.code = code;
    this.details = options.details;
    Object.defineProperty(this, meshErrorBrand, { value: true });
  }

  // instanceof must hold across two copies of @inmesh/core (duplicate installs), so it checks a brand.
  // `this` is the class on the right of instanceof: MeshError itself uses the brand, subclasses the prototype.
  static override [Symbol.hasInstance](value: unknown): boolean {
    // biome-ignore lint/complexity/noThisInStatic: the receiver is the class on the right of instanceof
    if (this === MeshError) return isMeshError(value);
    // biome-ignore lint/complexity/noThisInStatic: subclasses keep the ordinary prototype check
    return Function.prototype[Symbol.hasInstance].call(this, value);
  }

  /** Wraps anything thrown into a MeshError, mapping abort and timeout errors to their codes. */
  static from(reason: unknown, fallback: MeshErrorCode = MeshErrorCode.INTERNAL): MeshError {
    if (isMeshError(reason)) return reason;
    if (reason instanceof Error) {
      if (reason.name === "TimeoutError")
        return new MeshError(MeshErrorCode.DEADLINE, reason.message, { cause: reason });
      if (reason.name === "AbortError")
        return new MeshError(MeshErrorCode.CANCELED, reason.message, { cause: reason });
      return new MeshError(fallback, reason.message, { cause: reason });
    }
    return new MeshError(fallback, String(reason), { cause: reason });
  }
}

export function isMeshError(value: unknown): value is MeshError {
  return (
    typeof value === "object" && value !== null && (value as Record<symbol, unknown>)[meshErrorBrand] === true
  );
}

export function hasMeshErrorCode(value: unknown, code: MeshErrorCode): value is MeshError {
  return isMeshError(value) && value.code === code;
}

/** Raised by identity: certificate issuance, expiry, trust anchors and peer verification. */
export class IdentityError extends MeshError {
  constructor(code: MeshErrorCode, message: string, options?: MeshErrorOptions) {
    super(code, message, options);
    this.name = "IdentityError";
  }
}

/** Raised when the control plane cannot be reached or refuses a request. */
export class ControlPlaneError extends MeshError {
  constructor(code: MeshErrorCode, message: string, options?: MeshErrorOptions) {
    super(code, message, options);
    this.name = "ControlPlaneError";
  }
}

/** Raised by discovery and outbound routing. */
export class DestinationError extends MeshError {
  constructor(code: MeshErrorCode, message: string, options?: MeshErrorOptions) {
    super(code, message, options);
    this.name = "DestinationError";
  }
}

/** Raised when inbound policy refuses a call; carries the decision that refused it. */
export class PolicyDeniedError<TDecision = unknown> extends MeshError {
  readonly decision: TDecision;
  constructor(decision: TDecision, message = "request denied by policy", options?: MeshErrorOptions) {
    super(MeshErrorCode.POLICY_DENIED, message, options);
    this.name = "PolicyDeniedError";
    this.decision = decision;
  }
}

/** Raised for invalid options or environment; `details.variable` names the offending setting. */
export class ConfigError extends MeshError {
  constructor(message: string, options?: MeshErrorOptions) {
    super(MeshErrorCode.INVALID_CONFIG, message, options);
    this.name = "ConfigError";
  }
}

/**
 * A duration option in ms: `value`, or `fallback` when it is unset; anything but a finite positive
 * number (or 0, where `allowZero` says 0 turns the bound off) is an INVALID_ARG naming `where` and `name`.
 */
export function checkDuration(
  value: number | undefined,
  fallback: number,
  name: string,
  where: string,
  allowZero = false,
): number {
  const result = value ?? fallback;
  if (typeof result !== "number" || !Number.isFinite(result) || result < 0 || (!allowZero && result === 0)) {
    throw new MeshError(
      MeshErrorCode.INVALID_ARG,
      `${where}: ${name} must be a ${allowZero ? "non-negative" : "positive"} number, got ${String(value)}`,
    );
  }
  return result;
}
