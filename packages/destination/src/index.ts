// Explicit export list (sorted by module). End users need createDiscovery, selectRoute, createBalancer,
// createRetryBudget and the timeout helpers; the compilers and model types serve integrators and tests.

export type { BackoffConfig, RetryBackoff } from "./backoff.js";
export {
  backoffDelayMs,
  createRetryBackoff,
  DEFAULT_FAILURE_ACCRUAL_BACKOFF,
  DEFAULT_ROUTE_RETRY_BACKOFF,
} from "./backoff.js";
export type {
  Balancer,
  BalancerEndpoint,
  BalancerOptions,
  EndpointLoad,
  Pick,
  PickOutcome,
} from "./balancer.js";
export { createBalancer } from "./balancer.js";
export type { ResponseClass, ResponseCondition, ResponseSummary } from "./classify.js";
export { DEFAULT_GRPC_FAILURE_CODES, isFailureResponse } from "./classify.js";
export type { Clock, RandomSource } from "./clock.js";
export { systemClock } from "./clock.js";
export { DestinationClient, OutboundPoliciesClient } from "./control-plane-clients.js";
export type {
  Discovery,
  DiscoveryOptions,
  OutboundPolicyState,
  ProfileState,
  StreamingClient,
} from "./discovery.js";
export { createContextToken, createDiscovery } from "./discovery.js";
export type {
  Endpoint,
  EndpointHttp2Params,
  EndpointSet,
  EndpointSetDelta,
  EndpointTlsIdentity,
} from "./endpoint.js";
export {
  applyEndpointUpdate,
  createEndpointSet,
  endpointFromProto,
  endpointSetChanges,
} from "./endpoint.js";
export type {
  FailureAccrualConfig,
  FailureAccrualGate,
  FailureAccrualGateOptions,
  GateState,
} from "./failure-accrual.js";
export {
  createFailureAccrualGate,
  DEFAULT_FAILURE_ACCRUAL,
  failureAccrualByBackend,
  failureAccrualConfig,
  sameFailureAccrual,
} from "./failure-accrual.js";
export type {
  HeaderRecord,
  RedirectFilter,
  RedirectOutcome,
  RedirectRequest,
} from "./http-filters.js";
export { applyRedirect, modifyHeaderRecord } from "./http-filters.js";
export type {
  GrpcRequestMatch,
  HostMatcher,
  HttpRequestMatch,
  OutboundRequest,
  PathMatcher,
  ValueMatcher,
} from "./http-match.js";
export type { L5dHeaderResult } from "./l5d-headers.js";
export { applyL5dRequestHeaders, L5D_REQUEST_HEADERS } from "./l5d-headers.js";
export { LIMITS } from "./limits.js";
export type { ResourceMetadata } from "./metadata.js";
export type {
  Backend,
  BackendDistribution,
  BackendTarget,
  FailureAccrualPolicy,
  GrpcFilter,
  GrpcRetryPolicy,
  GrpcRoute,
  GrpcRouteRule,
  HeaderList,
  HeaderModifier,
  HttpFilter,
  HttpRetryPolicy,
  HttpRoute,
  HttpRouteRule,
  HttpRouteSet,
  LoadPolicy,
  NoOutboundPolicy,
  OpaqueFilter,
  OpaqueRoute,
  OpaqueRouteRule,
  OutboundPolicy,
  OutboundProtocol,
  QueuePolicy,
  RouteBackend,
  TlsRoute,
  WeightedRouteBackend,
} from "./outbound-policy.js";
export {
  compileOutboundPolicy,
  DEFAULT_EWMA,
  DEFAULT_MAX_REQUEST_BYTES,
  DEFAULT_QUEUE,
} from "./outbound-policy.js";
export type {
  NoServiceProfile,
  ProfileDstOverride,
  ProfileRoute,
  RequestCondition,
  ServiceProfile,
} from "./profile.js";
export { compileProfile } from "./profile.js";
export type { RetryBudget, RetryBudgetConfig, RetryBudgetOptions } from "./retry-budget.js";
export { createRetryBudget, DEFAULT_RETRY_BUDGET } from "./retry-budget.js";
export type {
  RequestPolicy,
  RequestPolicySource,
  RetryableErrorKind,
  RetryPolicy,
  RoutingModel,
  SelectBackendOptions,
  SelectRouteOptions,
} from "./route.js";
export { chooseRoutingModel, DEFAULT_REQUEST_POLICY, NO_RETRY, selectBackend, selectRoute } from "./route.js";
export type { AttemptDeadlineOptions, RequestTimeouts } from "./timeouts.js";
export {
  computeAttemptDeadline,
  computeRequestDeadline,
  decodeGrpcTimeout,
  encodeGrpcTimeout,
  remainingMs,
} from "./timeouts.js";
export type { ReadyOptions, Watch, WatchKind, WatchState } from "./watch.js";
