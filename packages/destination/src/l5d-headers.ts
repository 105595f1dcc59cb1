import { DEFAULT_ROUTE_RETRY_BACKOFF } from "./backoff.js";
import type { ResponseSummary } from "./classify.js";
import { DEFAULT_MAX_REQUEST_BYTES } from "./outbound-policy.js";
import type { RequestPolicy, RetryableErrorKind, RetryPolicy } from "./route.js";
import type { RequestTimeouts } from "./timeouts.js";

/** Request headers a route with `allow_l5d_request_headers` honours; they are stripped before sending. */
export const L5D_REQUEST_HEADERS: readonly string[] = Object.freeze([
  "l5d-retry-http",
  "l5d-retry-grpc",
  "l5d-retry-limit",
  "l5d-retry-timeout",
  "l5d-timeout",
  "l5d-request-timeout",
  "l5d-response-timeout",
]);

const UNIT_MS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Linkerd's `<n>(ms|s|m|h|d)` (a bare `0` too); undefined when malformed. */
export function parseL5dDuration(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const text = value.trim();
  if (text === "0") return 0;
  const match = /^(\d{1,12})(ms|s|m|h|d)$/.exec(text);
  if (!match) return undefined;
  return Number(match[1]) * (UNIT_MS[match[2] as string] as number);
}

/**
 * `5xx`, `gateway-error` (502–504), `NNN` or `NNN-MMM` (100–599), comma-separated. As linkerd2-proxy
 * parses the header, items it does not understand are skipped, not the whole value.
 */
export function parseRetryHttp(
  value: string | undefined,
): readonly (readonly [number, number])[] | undefined {
  if (value === undefined) return undefined;
  const ranges: (readonly [number, number])[] = [];
  for (const raw of value.split(",")) {
    const item = raw.trim().toLowerCase();
    if (item === "5xx") ranges.push([500, 599]);
    else if (item === "gateway-error") ranges.push([502, 504]);
    else {
      const match = /^(\d{3})(?:-(\d{3}))?$/.exec(item);
      if (!match) continue;
      const start = Number(match[1]);
      const end = match[2] === undefined ? start : Number(match[2]);
      if (start >= 100 && start <= end && end <= 599) ranges.push([start, end]);
    }
  }
  return ranges;
}

const GRPC_CONDITIONS: Readonly<Record<string, number>> = {
  cancelled: 1,
  "deadline-exceeded": 4,
  "resource-exhausted": 8,
  internal: 13,
  unavailable: 14,
};

/** `cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`, `unavailable`, comma-separated; unknown items are skipped. */
export function parseRetryGrpc(value: string | undefined): ReadonlySet<number> | undefined {
  if (value === undefined) return undefined;
  const codes = new Set<number>();
  for (const raw of value.split(",")) {
    const code = GRPC_CONDITIONS[raw.trim().toLowerCase()];
    if (code !== undefined) codes.add(code);
  }
  return codes;
}

function first(value: string | readonly string[] | undefined): string | undefined {
  return typeof value === "string" ? value : value?.[0];
}

export interface L5dHeaderResult {
  /** The policy with header overrides applied (the same object when nothing applies). */
  readonly policy: RequestPolicy;
  /** Headers to remove from the request before sending it (empty unless the route allows them). */
  readonly stripHeaders: readonly string[];
}

const retryableErrors = (kind: RetryableErrorKind) =>
  kind === "fail-fast" || kind === "response-headers-timeout" || kind === "refused-stream";

const none = () => false;

/**
 * Applies `l5d-retry-*` and `l5d-*-timeout` request headers when the selected route allows them, as
 * linkerd2-proxy's route extensions do (contract §7.2):
 * - retries: each header replaces the route's own setting (`l5d-retry-http` its status ranges,
 *   `l5d-retry-grpc` its gRPC codes, `l5d-retry-limit` its limit, `l5d-retry-timeout` its per-try
 *   timeout); without a route retry, the headers alone make one with limit 1, 64 KiB and 25–250 ms backoff;
 * - timeouts: `l5d-request-timeout` (else `l5d-timeout`) replaces `timeouts.request`,
 *   `l5d-response-timeout` replaces `timeouts.response`.
 * Malformed values are ignored; all of them are stripped once the route allows them.
 */
export function applyL5dRequestHeaders(
  policy: RequestPolicy,
  getHeader: (name: string) => string | readonly string[] | undefined,
): L5dHeaderResult {
  if (!policy.allowL5dRequestHeaders) return { policy, stripHeaders: [] };
  const http = parseRetryHttp(first(getHeader("l5d-retry-http")));
  const grpc = parseRetryGrpc(first(getHeader("l5d-retry-grpc")));
  const limitText = first(getHeader("l5d-retry-limit"))?.trim();
  const limit = limitText !== undefined && /^\d{1,6}$/.test(limitText) ? Number(limitText) : undefined;
  const perTry = parseL5dDuration(first(getHeader("l5d-retry-timeout")));
  // The longer, more explicit header wins over the shorthand.
  const total =
    parseL5dDuration(first(getHeader("l5d-request-timeout"))) ??
    parseL5dDuration(first(getHeader("l5d-timeout")));
  const response = parseL5dDuration(first(getHeader("l5d-response-timeout")));

  let retry: RetryPolicy = policy.retry;
  if (http || grpc || limit !== undefined || perTry !== undefined) {
    const base = policy.retry.kind === "route" ? policy.retry : undefined;
    // A route's own conditions are HTTP statuses on an HTTPRoute and gRPC codes on a GRPCRoute.
    const baseClassify = base?.isRetryableResponse ?? none;
    const httpPart: (r: ResponseSummary) => boolean = http
      ? (r) => http.some(([start, end]) => r.status >= start && r.status <= end)
      : policy.source === "http-route"
        ? baseClassify
        : none;
    const grpcPart: (r: ResponseSummary) => boolean = grpc
      ? (r) => r.grpcStatus !== undefined && grpc.has(r.grpcStatus)
      : policy.source === "grpc-route"
        ? baseClassify
        : none;
    const isRetryableResponse = (r: ResponseSummary): boolean => grpcPart(r) || httpPart(r);
    const perTryTimeoutMs = perTry ?? base?.perTryTimeoutMs;
    const next = {
      kind: "route" as const,
      maxRetries: limit ?? base?.maxRetries ?? 1,
      maxRequestBytes: base?.maxRequestBytes ?? DEFAULT_MAX_REQUEST_BYTES,
      backoff: base?.backoff ?? DEFAULT_ROUTE_RETRY_BACKOFF,
      isRetryableResponse,
      isRetryableStatus: (status: number) => isRetryableResponse({ status }),
      isRetryableGrpc: (code: number) => isRetryableResponse({ status: 200, grpcStatus: code }),
      isRetryableError: retryableErrors,
    };
    retry = Object.freeze(perTryTimeoutMs !== undefined ? { ...next, perTryTimeoutMs } : next);
  }
  let timeouts: RequestTimeouts = policy.timeouts;
  if (total !== undefined || response !== undefined) {
    timeouts = Object.freeze({
      ...policy.timeouts,
      ...(total !== undefined ? { requestMs: total } : {}),
      ...(response !== undefined ? { responseMs: response } : {}),
    });
  }
  const changed = retry !== policy.retry || timeouts !== policy.timeouts;
  return {
    policy: changed ? Object.freeze({ ...policy, retry, timeouts }) : policy,
    stripHeaders: L5D_REQUEST_HEADERS,
  };
}
