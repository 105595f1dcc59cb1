/** Stream timeouts of a route (contract §7.2); absent means no limit. */
export interface RequestTimeouts {
  /** Total deadline of the request, retries included. */
  readonly requestMs?: number;
  /** From the end of the request body to the end of the response. */
  readonly responseMs?: number;
  /** Longest time without any activity on the stream. */
  readonly idleMs?: number;
}

export interface AttemptDeadlineOptions {
  /** Current time on the same clock as the deadline. @default performance.now() */
  nowMs?: number;
  /** The per-try timeout is cleared on the last attempt, as linkerd2-proxy does. @default false */
  lastAttempt?: boolean;
}

/**
 * Deadline of one attempt: the earlier of the overall deadline and now + the per-try timeout. Returns
 * undefined when neither applies. Both deadlines are absolute times on one monotonic clock.
 */
export function computeAttemptDeadline(
  overallDeadlineMs: number | undefined,
  perTryTimeoutMs: number | undefined,
  options: AttemptDeadlineOptions = {},
): number | undefined {
  const now = options.nowMs ?? performance.now();
  const perTry =
    perTryTimeoutMs !== undefined && perTryTimeoutMs > 0 && options.lastAttempt !== true
      ? now + perTryTimeoutMs
      : undefined;
  if (overallDeadlineMs === undefined) return perTry;
  if (perTry === undefined) return overallDeadlineMs;
  return Math.min(overallDeadlineMs, perTry);
}

/**
 * Absolute deadline of a whole request: the route's request timeout from `nowMs`, tightened by the
 * caller's own deadline (for example one decoded from an inbound `grpc-timeout`).
 */
export function computeRequestDeadline(
  timeouts: RequestTimeouts,
  nowMs: number,
  callerDeadlineMs?: number,
): number | undefined {
  const route = timeouts.requestMs !== undefined ? nowMs + timeouts.requestMs : undefined;
  if (route === undefined) return callerDeadlineMs;
  if (callerDeadlineMs === undefined) return route;
  return Math.min(route, callerDeadlineMs);
}

/** Milliseconds left before `deadlineMs` (never negative), or undefined without a deadline. */
export function remainingMs(deadlineMs: number | undefined, nowMs: number): number | undefined {
  return deadlineMs === undefined ? undefined : Math.max(0, deadlineMs - nowMs);
}

// gRPC over HTTP/2: TimeoutValue is at most 8 ASCII digits, TimeoutUnit one of H M S m u n.
const GRPC_UNITS: ReadonlyArray<readonly [string, number]> = [
  ["n", 1e-6],
  ["u", 1e-3],
  ["m", 1],
  ["S", 1000],
  ["M", 60_000],
  ["H", 3_600_000],
];
const GRPC_TIMEOUT_MAX_VALUE = 99_999_999;
const GRPC_TIMEOUT_PATTERN = /^(\d{1,8})([HMSmun])$/;

/**
 * Encodes a remaining time as a `grpc-timeout` header value, choosing the finest unit whose value fits
 * in 8 digits. Sub-millisecond remainders are rounded up so a deadline is never shortened to zero.
 */
export function encodeGrpcTimeout(timeoutMs: number): string {
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) return "0n";
  for (const [unit, unitMs] of GRPC_UNITS) {
    const value = Math.ceil(timeoutMs / unitMs);
    if (value <= GRPC_TIMEOUT_MAX_VALUE) return `${value}${unit}`;
  }
  return `${GRPC_TIMEOUT_MAX_VALUE}H`;
}

/** Decodes a `grpc-timeout` header value into milliseconds; undefined when malformed. */
export function decodeGrpcTimeout(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const match = GRPC_TIMEOUT_PATTERN.exec(value.trim());
  if (!match) return undefined;
  const unit = GRPC_UNITS.find(([name]) => name === match[2]);
  if (!unit) return undefined;
  return Number(match[1]) * unit[1];
}
