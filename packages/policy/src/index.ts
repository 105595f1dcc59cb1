// Evaluator: compile a controller policy (or a built-in default) once, then authorize per request.

export { clientFacts } from "./client.js";
export { POLICY_LIMITS } from "./compile.js";
export type { DefaultPolicyName, DefaultServerPolicyOptions } from "./defaults.js";
export { DEFAULT_POLICY_NAMES, defaultServerPolicy, isDefaultPolicyName } from "./defaults.js";
export { invalidServerPolicy, NOT_LOADED_POLICY } from "./evaluator.js";
export type { FilterOutcome, HeaderMutator, RedirectOutcome } from "./filters.js";
// Filters: applied by the caller after an allowed decision.
export {
  applyHeaderModifier,
  applyRouteFilters,
  computeRedirect,
  isGrpcContentType,
  objectHeaderMutator,
  shouldInjectFailure,
} from "./filters.js";
export type { CompileServerPolicyOptions } from "./policy.js";
export { compileServerPolicy } from "./policy.js";
export type {
  AuthorizationTrial,
  AuthzMeta,
  ClientFacts,
  CompiledServerPolicy,
  ConnectionAllowedDecision,
  ConnectionDecision,
  ConnectionDeniedDecision,
  ConnectionDenyReason,
  FailureInjectorFilter,
  HeaderEntry,
  HeaderLookup,
  HeaderValue,
  HttpAllowedDecision,
  HttpDecision,
  HttpDeniedDecision,
  HttpDenyReason,
  HttpRateLimitedDecision,
  HttpRequestFacts,
  InternalErrorFilter,
  LocalRateLimiter,
  PolicyExplanation,
  PolicyStatus,
  RateLimitScope,
  RedirectFilter,
  RequestHeaderModifierFilter,
  ResourceMeta,
  RouteFilter,
  RouteMeta,
  ServerMeta,
  ServerProtocol,
} from "./types.js";
export type {
  PolicyWatchEvent,
  PolicyWatcher,
  PolicyWatcherOptions,
  PortPolicyState,
  WaitForPolicyOptions,
} from "./watcher.js";
// Watch client for the policy controller (InboundServerPolicies.WatchPort).
export { createPolicyWatcher } from "./watcher.js";
