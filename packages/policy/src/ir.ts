import type { IrRateLimit } from "./rate-limit.js";
import type { RustRegex } from "./regex.js";
import type { ResourceMeta, RouteFilter, ServerProtocol } from "./types.js";

/**
 * The validated, evaluation-ready form of a server policy. Everything the hot path touches is
 * precomputed here: masked address words, identity sets, byte lengths used in route scores.
 */

/** An IP network as masked 32-bit words; IPv4 uses word 0 only. */
export interface IrNetwork {
  readonly family: 4 | 6;
  readonly w0: number;
  readonly w1: number;
  readonly w2: number;
  readonly w3: number;
  readonly m0: number;
  readonly m1: number;
  readonly m2: number;
  readonly m3: number;
  readonly except: readonly IrNetwork[];
}

export const AUTHN_UNAUTHENTICATED = 0;
export const AUTHN_TLS_UNAUTHENTICATED = 1;
export const AUTHN_TLS_AUTHENTICATED = 2;
export type AuthnKind = 0 | 1 | 2;

export interface IrAuthz {
  readonly meta: ResourceMeta;
  readonly networks: readonly IrNetwork[];
  readonly authn: AuthnKind;
  /** Exact identities (DNS-like or URI). */
  readonly identities: ReadonlySet<string> | undefined;
  /** `"." + parts.join(".")` for every non-empty suffix. */
  readonly suffixes: ReadonlySet<string> | undefined;
  /**
   * The distinct numbers of dots in `suffixes`. A suffix with d dots can only equal the client-identity
   * suffix that starts at its d-th dot from the end, so each count costs one set lookup.
   */
  readonly suffixDots: readonly number[];
  /** An empty suffix (`*`) is present: every DNS-like identity matches. */
  readonly anyDnsIdentity: boolean;
  readonly audit: boolean;
}

export interface IrHost {
  readonly exact: boolean;
  /** Exact pattern (exact) — compared ASCII-case-insensitively. */
  readonly value: string;
  readonly patternEndsWithDot: boolean;
  /** Suffix labels, most significant first (`*.example.com` → ["com", "example"]). */
  readonly labels: readonly string[];
  /** Precomputed score: kind (1 suffix, 2 exact) × 2^28 + matched length in bytes. */
  readonly score: number;
}

export const PATH_EXACT = 0;
export const PATH_PREFIX = 1;
export const PATH_REGEX = 2;

export interface IrPath {
  readonly kind: 0 | 1 | 2;
  readonly value: string;
  /** Prefix with trailing slashes removed. */
  readonly trimmed: string;
  /** The prefix is exactly "/". */
  readonly root: boolean;
  readonly regex: RustRegex | undefined;
  /** Score when it matches (exact and prefix); regex scores the request path's byte length. */
  readonly score: number;
}

export interface IrHeaderMatch {
  /** Lower-case name. */
  readonly name: string;
  /** Exact value as a Latin-1 string (header bytes as Node exposes them). */
  readonly exact: string | undefined;
  readonly regex: RustRegex | undefined;
}

export interface IrQueryMatch {
  readonly name: string;
  readonly exact: string | undefined;
  readonly regex: RustRegex | undefined;
}

export interface IrHttpMatch {
  readonly method: string | undefined;
  readonly path: IrPath | undefined;
  readonly headers: readonly IrHeaderMatch[];
  readonly query: readonly IrQueryMatch[];
  /** Length the rule scores with when this match wins and redirects rewrite a prefix; undefined if not a prefix. */
  readonly prefixLength: number | undefined;
}

export interface IrGrpcMatch {
  readonly service: string | undefined;
  readonly method: string | undefined;
  readonly serviceScore: number;
  readonly methodScore: number;
  readonly headers: readonly IrHeaderMatch[];
}

export interface IrRule<TMatch> {
  /** Empty: the rule matches every request (implicit match). */
  readonly matches: readonly TMatch[];
  readonly filters: readonly RouteFilter[];
}

export interface IrRoute<TMatch> {
  readonly meta: ResourceMeta;
  readonly hosts: readonly IrHost[];
  /** Route authorizations, then the server's (incl. localhost for controller policies). */
  readonly authorizations: readonly IrAuthz[];
  readonly rules: readonly IrRule<TMatch>[];
}

export interface IrServer {
  readonly status: "loaded" | "default";
  readonly meta: ResourceMeta;
  readonly protocol: ServerProtocol;
  readonly detectTimeoutMs: number | undefined;
  /** Server-level authorizations used for connections (TCP/opaque/TLS, undetected traffic). */
  readonly connectionAuthorizations: readonly IrAuthz[];
  readonly httpRoutes: readonly IrRoute<IrHttpMatch>[];
  readonly grpcRoutes: readonly IrRoute<IrGrpcMatch>[];
  /** `HttpLocalRateLimit` of a detect/http1/http2 server (none of them set: no limit). */
  readonly rateLimit?: IrRateLimit | undefined;
}
