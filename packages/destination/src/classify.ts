/** What the retry and failure-accrual logic needs to know about a response. */
export interface ResponseSummary {
  /** HTTP status (200 for gRPC responses). */
  readonly status: number;
  /** `grpc-status` from the response headers (trailers-only) or from peeked trailers, when known. */
  readonly grpcStatus?: number | undefined;
}

/**
 * gRPC codes linkerd2-proxy classifies as failures by default: Unknown, DeadlineExceeded,
 * PermissionDenied, Internal, Unavailable, DataLoss ([proxy] `client-policy/src/grpc.rs` `Codes::default`).
 */
export const DEFAULT_GRPC_FAILURE_CODES: ReadonlySet<number> = new Set([2, 4, 7, 13, 14, 15]);

/**
 * Linkerd's default response classification (contract §7.1, §8.4): a gRPC status in
 * {@link DEFAULT_GRPC_FAILURE_CODES} when there is one, otherwise HTTP 5xx.
 */
export function isFailureResponse(response: ResponseSummary): boolean {
  if (response.grpcStatus !== undefined) return DEFAULT_GRPC_FAILURE_CODES.has(response.grpcStatus);
  return response.status >= 500 && response.status <= 599;
}

/** ServiceProfile response condition, compiled from `ResponseMatch`. */
export type ResponseCondition =
  | { readonly kind: "all"; readonly conditions: readonly ResponseCondition[] }
  | { readonly kind: "any"; readonly conditions: readonly ResponseCondition[] }
  | { readonly kind: "not"; readonly condition: ResponseCondition }
  | { readonly kind: "status"; readonly min: number; readonly max: number };

export interface ResponseClass {
  readonly condition: ResponseCondition;
  readonly isFailure: boolean;
}

export function matchResponseCondition(condition: ResponseCondition, status: number): boolean {
  switch (condition.kind) {
    case "all":
      return condition.conditions.every((c) => matchResponseCondition(c, status));
    case "any":
      return condition.conditions.some((c) => matchResponseCondition(c, status));
    case "not":
      return !matchResponseCondition(condition.condition, status);
    case "status":
      return status >= condition.min && status <= condition.max;
  }
}

/**
 * ServiceProfile classification: the first response class whose condition matches decides; with no
 * match, the default classification applies.
 */
export function classifyProfileResponse(
  classes: readonly ResponseClass[],
  response: ResponseSummary,
): boolean {
  for (const responseClass of classes) {
    if (matchResponseCondition(responseClass.condition, response.status)) return responseClass.isFailure;
  }
  return isFailureResponse(response);
}
