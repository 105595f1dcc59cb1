import type { BackoffConfig } from "./backoff.js";
import { classifyProfileResponse, type ResponseSummary } from "./classify.js";
import { defaultRandom, type RandomSource } from "./clock.js";
import {
  CATCH_ALL_GRPC_SCORE,
  CATCH_ALL_HTTP_SCORE,
  compareRouteScores,
  compareScores,
  type HttpRequestMatch,
  type MatchScore,
  normalizeRequestHost,
  type OutboundRequest,
  parseQuery,
  type QueryPairs,
  scoreGrpcMatch,
  scoreHost,
  scoreHttpMatch,
  splitGrpcPath,
} from "./http-match.js";
import { metadataFromProto, type ResourceMetadata } from "./metadata.js";
import {
  type BackendDistribution,
  DEFAULT_EWMA,
  DEFAULT_MAX_REQUEST_BYTES,
  DEFAULT_QUEUE,
  type FailureAccrualPolicy,
  type GrpcFilter,
  type GrpcRetryPolicy,
  type GrpcRoute,
  type HttpFilter,
  type HttpRetryPolicy,
  type HttpRoute,
  type NoOutboundPolicy,
  type OpaqueFilter,
  type OutboundPolicy,
  type RouteBackend,
  type WeightedRouteBackend,
} from "./outbound-policy.js";
import {
  matchRequestCondition,
  type NoServiceProfile,
  type ProfileDstOverride,
  type ProfileRoute,
  profileHasRoutes,
  type ServiceProfile,
} from "./profile.js";
import type { RetryBudget } from "./retry-budget.js";
import type { RequestTimeouts } from "./timeouts.js";

/** Errors a route retry may replay (contract §7.2); connection errors are not retried (yet), as in Linkerd. */
export type RetryableErrorKind =
  | "fail-fast"
  | "response-headers-timeout"
  | "refused-stream"
  | "load-shed"
  | "connect";

interface RetryPolicyBase {
  /** Extra attempts allowed after the first; `Infinity` for budget retries (the budget is the limit). */
  readonly maxRetries: number;
  /** Bodies up to this size are buffered for replay; larger or unfinished ones are sent once. */
  readonly maxRequestBytes: number;
  /** Whether this response should be retried (and counts as a failure for the retry decision). */
  isRetryableResponse(response: ResponseSummary): boolean;
  /** Shorthand for an HTTP response without gRPC status. */
  isRetryableStatus(status: number): boolean;
  /** Shorthand for a gRPC response (HTTP 200 with this `grpc-status`). */
  isRetryableGrpc(code: number): boolean;
  isRetryableError(kind: RetryableErrorKind): boolean;
}

/** What the retry interceptor needs, whatever the route came from. */
export type RetryPolicy =
  | (RetryPolicyBase & { readonly kind: "none" })
  /** ServiceProfile: every original request deposits, every retry must withdraw; no backoff, no max. */
  | (RetryPolicyBase & { readonly kind: "budget"; readonly budget: RetryBudget })
  /** HTTPRoute/GRPCRoute: up to `maxRetries`, `backoff` between attempts, `perTryTimeoutMs` per attempt. */
  | (RetryPolicyBase & {
      readonly kind: "route";
      readonly backoff: BackoffConfig;
      readonly perTryTimeoutMs?: number;
    });

export type RequestPolicySource = "profile" | "http-route" | "grpc-route" | "opaque" | "default";

/** The effective policy of one outbound request: what the HTTP/gRPC interceptors apply. */
export interface RequestPolicy {
  readonly source: RequestPolicySource;
  /** The route's metadata (`isDefault` for the implicit default route). */
  readonly route: ResourceMetadata;
  /** Route labels: ServiceProfile `metrics_labels`, or `route_*` from the route metadata. */
  readonly metricLabels: Readonly<Record<string, string>>;
  readonly timeouts: RequestTimeouts;
  readonly retry: RetryPolicy;
  /** Backends of the rule; undefined means "the original target" (profiles, defaults). */
  readonly backends: BackendDistribution<HttpFilter | GrpcFilter | OpaqueFilter> | undefined;
  readonly filters: readonly (HttpFilter | GrpcFilter | OpaqueFilter)[];
  /** Honour and strip `l5d-retry-*` and `l5d-*-timeout` request headers (see `applyL5dRequestHeaders`). */
  readonly allowL5dRequestHeaders: boolean;
  /** Endpoint circuit breaking of the protocol the route belongs to. */
  readonly failureAccrual: FailureAccrualPolicy;
  /** HTTPRoute rules: the rule's matches, for a redirect that replaces the matched path prefix. */
  readonly httpMatches?: readonly HttpRequestMatch[];
}

const NO_ACCRUAL: FailureAccrualPolicy = Object.freeze({ kind: "none" });
const EMPTY_LABELS: Readonly<Record<string, string>> = Object.freeze({});
const DEFAULT_ROUTE = metadataFromProto({ kind: { $case: "default", value: "default" } });

const never = () => false;

export const NO_RETRY: RetryPolicy = Object.freeze({
  kind: "none",
  maxRetries: 0,
  maxRequestBytes: DEFAULT_MAX_REQUEST_BYTES,
  isRetryableResponse: never,
  isRetryableStatus: never,
  isRetryableGrpc: never,
  isRetryableError: never,
});

/** The policy when nothing is known: no timeouts, no retries, the original target. */
export const DEFAULT_REQUEST_POLICY: RequestPolicy = Object.freeze({
  source: "default",
  route: DEFAULT_ROUTE,
  metricLabels: EMPTY_LABELS,
  timeouts: Object.freeze({}),
  retry: NO_RETRY,
  backends: undefined,
  filters: Object.freeze([]),
  allowL5dRequestHeaders: false,
  failureAccrual: NO_ACCRUAL,
});

function withShorthands(
  isRetryableResponse: (response: ResponseSummary) => boolean,
): Pick<RetryPolicyBase, "isRetryableResponse" | "isRetryableStatus" | "isRetryableGrpc"> {
  return {
    isRetryableResponse,
    isRetryableStatus: (status) => isRetryableResponse({ status }),
    isRetryableGrpc: (code) => isRetryableResponse({ status: 200, grpcStatus: code }),
  };
}

// FailFast yes, LoadShed no, response-headers timeout yes, REFUSED_STREAM yes, connection errors no.
const routeRetryableErrors = (kind: RetryableErrorKind) =>
  kind === "fail-fast" || kind === "response-headers-timeout" || kind === "refused-stream";

function routeRetryPolicy(
  retry: HttpRetryPolicy | GrpcRetryPolicy,
  isRetryableResponse: (response: ResponseSummary) => boolean,
): RetryPolicy {
  const policy = {
    kind: "route" as const,
    maxRetries: retry.maxRetries,
    maxRequestBytes: retry.maxRequestBytes,
    backoff: retry.backoff,
    ...withShorthands(isRetryableResponse),
    isRetryableError: routeRetryableErrors,
  };
  return Object.freeze(
    retry.timeoutMs !== undefined ? { ...policy, perTryTimeoutMs: retry.timeoutMs } : policy,
  );
}

/** Retry policy of an HTTPRoute rule: a response is retried when its status is in a configured range. */
export function httpRouteRetryPolicy(retry: HttpRetryPolicy | undefined): RetryPolicy {
  if (!retry || retry.maxRetries === 0) return NO_RETRY;
  const ranges = retry.statusRanges;
  return routeRetryPolicy(retry, ({ status }) =>
    ranges.some(([start, end]) => status >= start && status <= end),
  );
}

/** Retry policy of a GRPCRoute rule: a response is retried when its `grpc-status` is a configured code. */
export function grpcRouteRetryPolicy(retry: GrpcRetryPolicy | undefined): RetryPolicy {
  if (!retry || retry.maxRetries === 0) return NO_RETRY;
  const codes = retry.codes;
  return routeRetryPolicy(retry, ({ grpcStatus }) => grpcStatus !== undefined && codes.has(grpcStatus));
}

/** Retry policy of a ServiceProfile route: failures per its response classes, limited by the budget. */
export function profileRetryPolicy(route: ProfileRoute, budget: RetryBudget | undefined): RetryPolicy {
  if (!route.isRetryable || !budget) return NO_RETRY;
  const classes = route.responseClasses;
  return Object.freeze({
    kind: "budget",
    budget,
    maxRetries: Number.POSITIVE_INFINITY,
    maxRequestBytes: DEFAULT_MAX_REQUEST_BYTES,
    ...withShorthands((response) => classifyProfileResponse(classes, response)),
    // Transport errors are not retried by ServiceProfile retries.
    isRetryableError: never,
  });
}

function routeLabels(route: ResourceMetadata): Readonly<Record<string, string>> {
  return Object.freeze({
    route_group: route.group,
    route_kind: route.isDefault ? "default" : route.kind,
    route_name: route.name,
    route_namespace: route.namespace,
  });
}

function requestPath(path: string): string {
  const q = path.indexOf("?");
  return q < 0 ? path : path.slice(0, q);
}

type ProfileBackends = BackendDistribution<HttpFilter> | undefined;

/** `name.namespace.svc…:port` as the Service resource linkerd2-proxy names in its backend metadata. */
function overrideMetadata(override: ProfileDstOverride): ResourceMetadata {
  if (override.backendRef) return override.backendRef;
  const match = /^([^.:]+)\.([^.:]+)\.svc(?:\.[^:]*)?:(\d{1,5})$/.exec(override.authority);
  if (!match) return metadataFromProto({ kind: { $case: "default", value: override.authority } });
  return metadataFromProto({
    kind: {
      $case: "resource",
      value: {
        group: "core",
        kind: "Service",
        name: match[1] as string,
        namespace: match[2] as string,
        section: "",
        port: Number(match[3]),
      },
    },
  });
}

const profileDistributions = new WeakMap<ServiceProfile, ProfileBackends>();

/**
 * A ServiceProfile's `dstOverrides` as a weighted split (contract §7.1): each authority is balanced over
 * its own discovery, with the weight in decimillis. Undefined without overrides: the target itself.
 */
export function profileBackends(profile: ServiceProfile): ProfileBackends {
  if (profile.dstOverrides.length === 0) return undefined;
  if (profileDistributions.has(profile)) return profileDistributions.get(profile);
  const backends: WeightedRouteBackend<HttpFilter>[] = profile.dstOverrides.map((override) =>
    Object.freeze({
      weight: override.weight,
      filters: Object.freeze([]) as readonly HttpFilter[],
      backend: Object.freeze({
        metadata: overrideMetadata(override),
        queue: DEFAULT_QUEUE,
        target: Object.freeze({
          kind: "balancer" as const,
          path: override.authority.toLowerCase(),
          load: Object.freeze({ kind: "peak-ewma" as const, ...DEFAULT_EWMA }),
        }),
      }),
    }),
  );
  const distribution: ProfileBackends = Object.freeze({
    kind: "random-available",
    backends: Object.freeze(backends),
  });
  profileDistributions.set(profile, distribution);
  return distribution;
}

const profilePolicies = new WeakMap<ProfileRoute, WeakMap<RetryBudget | object, RequestPolicy>>();
const NO_BUDGET = {};

function profileRoutePolicy(
  route: ProfileRoute,
  budget: RetryBudget | undefined,
  backends: ProfileBackends,
): RequestPolicy {
  // Policies are cached per compiled route (one profile's) so the hot path allocates nothing.
  let byBudget = profilePolicies.get(route);
  if (!byBudget) {
    byBudget = new WeakMap();
    profilePolicies.set(route, byBudget);
  }
  const key = budget ?? NO_BUDGET;
  let policy = byBudget.get(key);
  if (!policy) {
    policy = Object.freeze({
      source: "profile",
      route: metadataFromProto({ kind: { $case: "default", value: route.metricLabels.route ?? "" } }),
      metricLabels: route.metricLabels,
      timeouts: Object.freeze(route.timeoutMs !== undefined ? { requestMs: route.timeoutMs } : {}),
      retry: profileRetryPolicy(route, budget),
      backends,
      filters: Object.freeze([]),
      allowL5dRequestHeaders: false,
      failureAccrual: NO_ACCRUAL,
    });
    byBudget.set(key, policy);
  }
  return policy;
}

const profileDefaultPolicies = new WeakMap<ServiceProfile, RequestPolicy>();

/** The implicit catch-all route of a profile: defaults, but the profile's traffic split. */
function profileDefaultPolicy(profile: ServiceProfile): RequestPolicy {
  const backends = profileBackends(profile);
  if (!backends) return DEFAULT_REQUEST_POLICY;
  let policy = profileDefaultPolicies.get(profile);
  if (!policy) {
    policy = Object.freeze({ ...DEFAULT_REQUEST_POLICY, source: "profile" as const, backends });
    profileDefaultPolicies.set(profile, policy);
  }
  return policy;
}

/**
 * ServiceProfile routes: the first route whose condition matches, else the implicit default route;
 * either way the profile's `dstOverrides` split the traffic.
 */
export function selectProfileRoute(profile: ServiceProfile, request: OutboundRequest): RequestPolicy {
  const target = { method: request.method, path: requestPath(request.path) };
  for (const route of profile.routes) {
    if (matchRequestCondition(route.condition, target))
      return profileRoutePolicy(route, profile.retryBudget, profileBackends(profile));
  }
  return profileDefaultPolicy(profile);
}

const rulePolicies = new WeakMap<object, RequestPolicy>();

function cached(rule: object, build: () => RequestPolicy): RequestPolicy {
  let policy = rulePolicies.get(rule);
  if (!policy) {
    policy = build();
    rulePolicies.set(rule, policy);
  }
  return policy;
}

function selectHttpRoute(
  routes: readonly HttpRoute[],
  request: OutboundRequest,
  failureAccrual: FailureAccrualPolicy,
): RequestPolicy | undefined {
  const host = normalizeRequestHost(request.host);
  const path = requestPath(request.path);
  let pairs: QueryPairs | undefined;
  const query = () => {
    pairs ??= parseQuery(request.query);
    return pairs;
  };
  // The best match so far, in locals: selection runs on every request.
  let bestRoute: HttpRoute | undefined;
  let bestRule: HttpRoute["rules"][number] | undefined;
  let bestHostScore: MatchScore = [];
  let bestRuleScore: MatchScore = [];
  for (const route of routes) {
    const hostScore = scoreHost(route.hosts, host);
    if (!hostScore) continue;
    for (const rule of route.rules) {
      let ruleScore: MatchScore | undefined;
      if (rule.matches.length === 0) ruleScore = CATCH_ALL_HTTP_SCORE;
      for (const match of rule.matches) {
        const score = scoreHttpMatch(match, request, path, query);
        if (score && (!ruleScore || compareScores(score, ruleScore) > 0)) ruleScore = score;
      }
      if (!ruleScore) continue;
      if (
        bestRoute === undefined ||
        compareRouteScores(hostScore, ruleScore, bestHostScore, bestRuleScore) > 0
      ) {
        bestRoute = route;
        bestRule = rule;
        bestHostScore = hostScore;
        bestRuleScore = ruleScore;
      }
    }
  }
  if (bestRoute === undefined || bestRule === undefined) return undefined;
  const known = rulePolicies.get(bestRule);
  if (known) return known;
  const policy: RequestPolicy = Object.freeze({
    source: "http-route",
    route: bestRoute.metadata,
    metricLabels: routeLabels(bestRoute.metadata),
    timeouts: bestRule.timeouts,
    retry: httpRouteRetryPolicy(bestRule.retry),
    backends: bestRule.backends,
    filters: bestRule.filters,
    allowL5dRequestHeaders: bestRule.allowL5dRequestHeaders,
    failureAccrual,
    httpMatches: bestRule.matches,
  });
  rulePolicies.set(bestRule, policy);
  return policy;
}

function selectGrpcRoute(
  routes: readonly GrpcRoute[],
  request: OutboundRequest,
  failureAccrual: FailureAccrualPolicy,
): RequestPolicy | undefined {
  if (request.method !== "POST") return undefined;
  const rpc = splitGrpcPath(requestPath(request.path));
  if (!rpc) return undefined;
  const host = normalizeRequestHost(request.host);
  // The best match so far, in locals: selection runs on every request.
  let bestRoute: GrpcRoute | undefined;
  let bestRule: GrpcRoute["rules"][number] | undefined;
  let bestHostScore: MatchScore = [];
  let bestRuleScore: MatchScore = [];
  for (const route of routes) {
    const hostScore = scoreHost(route.hosts, host);
    if (!hostScore) continue;
    for (const rule of route.rules) {
      let ruleScore: MatchScore | undefined;
      if (rule.matches.length === 0) ruleScore = CATCH_ALL_GRPC_SCORE;
      for (const match of rule.matches) {
        const score = scoreGrpcMatch(match, request, rpc);
        if (score && (!ruleScore || compareScores(score, ruleScore) > 0)) ruleScore = score;
      }
      if (!ruleScore) continue;
      if (
        bestRoute === undefined ||
        compareRouteScores(hostScore, ruleScore, bestHostScore, bestRuleScore) > 0
      ) {
        bestRoute = route;
        bestRule = rule;
        bestHostScore = hostScore;
        bestRuleScore = ruleScore;
      }
    }
  }
  if (bestRoute === undefined || bestRule === undefined) return undefined;
  const known = rulePolicies.get(bestRule);
  if (known) return known;
  const policy: RequestPolicy = Object.freeze({
    source: "grpc-route",
    route: bestRoute.metadata,
    metricLabels: routeLabels(bestRoute.metadata),
    timeouts: bestRule.timeouts,
    retry: grpcRouteRetryPolicy(bestRule.retry),
    backends: bestRule.backends,
    filters: bestRule.filters,
    allowL5dRequestHeaders: bestRule.allowL5dRequestHeaders,
    failureAccrual,
  });
  rulePolicies.set(bestRule, policy);
  return policy;
}

function opaquePolicy(policy: OutboundPolicy): RequestPolicy | undefined {
  const protocol = policy.protocol;
  const routes = protocol.kind === "opaque" || protocol.kind === "tls" ? protocol.routes : [];
  const route = routes[0];
  const rule = route?.rules[0];
  if (!route || !rule) return undefined;
  return cached(rule, () =>
    Object.freeze({
      source: "opaque",
      route: route.metadata,
      metricLabels: routeLabels(route.metadata),
      timeouts: Object.freeze({}),
      retry: NO_RETRY,
      backends: rule.backends,
      filters: rule.filters,
      allowL5dRequestHeaders: false,
      failureAccrual: NO_ACCRUAL,
    }),
  );
}

export interface SelectRouteOptions {
  /** HTTP version the request will use, for `detect` policies that route HTTP/1 and HTTP/2 apart. @default "http1" */
  httpVersion?: "http1" | "http2";
}

/** Anything `selectRoute` can route with. `undefined` and "none" values yield the default policy. */
export type RoutingModel = ServiceProfile | NoServiceProfile | OutboundPolicy | NoOutboundPolicy | undefined;

/**
 * Picks the effective request policy:
 * - a ServiceProfile: the first matching route, else the implicit default route;
 * - an OutboundPolicy: the best route by Gateway API precedence (host, path length, headers, query,
 *   method; gRPC: service, method, headers), ties to the earlier route and rule. Returns `undefined`
 *   when routes exist but none matches: Linkerd answers such requests with 404;
 * - opaque and TLS policies: the first route's first rule, with no retries and no timeouts;
 * - nothing known: {@link DEFAULT_REQUEST_POLICY}.
 *
 * Pure and allocation-free per call once a rule has been selected before.
 */
export function selectRoute(
  model: RoutingModel,
  request: OutboundRequest,
  options: SelectRouteOptions = {},
): RequestPolicy | undefined {
  if (!model || model.kind === "none") return DEFAULT_REQUEST_POLICY;
  if (model.kind === "profile") return selectProfileRoute(model, request);
  const protocol = model.protocol;
  switch (protocol.kind) {
    case "detect": {
      const set = options.httpVersion === "http2" ? protocol.http2 : protocol.http1;
      return selectHttpRoute(set.routes, request, set.failureAccrual);
    }
    case "http1":
    case "http2":
      return selectHttpRoute(protocol.routes, request, protocol.failureAccrual);
    case "grpc":
      return selectGrpcRoute(protocol.routes, request, protocol.failureAccrual);
    case "opaque":
    case "tls":
      return opaquePolicy(model) ?? DEFAULT_REQUEST_POLICY;
  }
}

/**
 * Which model routes a target (contract §7.1): the ServiceProfile when it has routes or overrides,
 * otherwise the OutboundPolicy, otherwise nothing (defaults).
 */
export function chooseRoutingModel(models: {
  profile?: ServiceProfile | NoServiceProfile | undefined;
  policy?: OutboundPolicy | NoOutboundPolicy | undefined;
}): RoutingModel {
  if (profileHasRoutes(models.profile)) return models.profile;
  if (models.policy?.kind === "policy") return models.policy;
  return undefined;
}

export interface SelectBackendOptions<TFilter> {
  random?: RandomSource;
  /** For `first-available`: whether a backend can take traffic now. @default () => true */
  isAvailable?: (backend: RouteBackend<TFilter>) => boolean;
}

/**
 * Chooses one backend of a distribution: `first-available` takes the first available one (or the first),
 * `random-available` draws by weight among available ones with a positive weight.
 */
export function selectBackend<TFilter>(
  distribution: BackendDistribution<TFilter>,
  options: SelectBackendOptions<TFilter> = {},
): RouteBackend<TFilter> | undefined {
  const isAvailable = options.isAvailable ?? (() => true);
  switch (distribution.kind) {
    case "empty":
      return undefined;
    case "first-available":
      return distribution.backends.find(isAvailable) ?? distribution.backends[0];
    case "random-available": {
      let candidates = distribution.backends.filter((b) => b.weight > 0 && isAvailable(b));
      if (candidates.length === 0) candidates = distribution.backends.filter((b) => b.weight > 0);
      const total = candidates.reduce((sum, b) => sum + b.weight, 0);
      if (total <= 0) return distribution.backends[0];
      let point = (options.random ?? defaultRandom)() * total;
      for (const candidate of candidates) {
        point -= candidate.weight;
        if (point < 0) return candidate;
      }
      return candidates[candidates.length - 1];
    }
  }
}
