import { debuglog } from "node:util";
import { type destination, durationToMs } from "@inmesh/proto";
import type { ResponseClass, ResponseCondition } from "./classify.js";
import type { Clock } from "./clock.js";
import { boundedLabels, invalidUpdate, methodFromProto, positiveDurationMs } from "./convert.js";
import { type Endpoint, endpointFromProto } from "./endpoint.js";
import { LIMITS } from "./limits.js";
import { metadataFromProto, type ResourceMetadata } from "./metadata.js";
import { compileRustRegex, type RustRegex, search, withRegexBudget } from "./regex.js";
import {
  createRetryBudget,
  type RetryBudget,
  type RetryBudgetConfig,
  validateRetryBudget,
} from "./retry-budget.js";

const debug = debuglog("mesh");

/** ServiceProfile request condition, compiled from `RequestMatch`. */
export type RequestCondition =
  | { readonly kind: "all"; readonly conditions: readonly RequestCondition[] }
  | { readonly kind: "any"; readonly conditions: readonly RequestCondition[] }
  | { readonly kind: "not"; readonly condition: RequestCondition }
  /** `regex` is the controller's pattern anchored as linkerd does: `^pattern$`. */
  | { readonly kind: "path"; readonly pattern: string; readonly regex: RustRegex }
  | { readonly kind: "method"; readonly method: string };

export interface ProfileRoute {
  readonly condition: RequestCondition;
  readonly responseClasses: readonly ResponseClass[];
  /** `{route: <name>}` from the controller. */
  readonly metricLabels: Readonly<Record<string, string>>;
  readonly isRetryable: boolean;
  /** Bounds the whole request including retries (504 on expiry); absent means none. */
  readonly timeoutMs?: number;
}

export interface ProfileDstOverride {
  readonly authority: string;
  /** Decimillis: 10000 = 100 %. Zero weights are dropped. */
  readonly weight: number;
  readonly backendRef?: ResourceMetadata;
}

/** A compiled `DestinationProfile`. */
export interface ServiceProfile {
  readonly kind: "profile";
  readonly fullyQualifiedName: string;
  readonly opaqueProtocol: boolean;
  readonly routes: readonly ProfileRoute[];
  /** Undefined when the controller sent none or an invalid one: then no route is retried. */
  readonly retryBudgetConfig: RetryBudgetConfig | undefined;
  /** The live budget shared by every route of this profile (kept across updates with the same config). */
  readonly retryBudget: RetryBudget | undefined;
  readonly dstOverrides: readonly ProfileDstOverride[];
  /** Set for a profile looked up by IP: the endpoint to forward to directly. */
  readonly endpoint?: Endpoint;
  readonly parentRef?: ResourceMetadata;
  readonly profileRef?: ResourceMetadata;
}

/** The controller has no profile for this target, or refused the lookup: use policy routes or defaults. */
export interface NoServiceProfile {
  readonly kind: "none";
  readonly reason: "not-found" | "invalid-argument" | "unimplemented";
}

export interface CompileProfileOptions {
  clock?: Clock;
  /** The budget of the previous profile of the same target, reused when the config is unchanged. */
  previousBudget?: RetryBudget | undefined;
}

class InvalidCondition extends Error {}

const NAME_ADDR = /^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?:\d{1,5}$/;

interface ConditionBudget {
  nodes: number;
}

/**
 * linkerd builds `^pattern$` by concatenation (so `a|b` becomes `^a|b$`) and tests it unanchored; the
 * same text is translated and compiled here, for RE2's linear-time search.
 */
export function compileProfilePathRegex(pattern: string): RustRegex {
  if (pattern.length > LIMITS.maxRegexLength) throw new InvalidCondition("regex too long");
  const compiled = compileRustRegex(`^${pattern}$`);
  if (typeof compiled === "string") throw new InvalidCondition(`path regex: ${compiled}`);
  return compiled;
}

function compileRequestCondition(
  match: destination.RequestMatch | undefined,
  depth: number,
  budget: ConditionBudget,
): RequestCondition {
  budget.nodes += 1;
  if (depth > LIMITS.maxConditionDepth || budget.nodes > LIMITS.maxConditionNodes)
    throw new InvalidCondition("condition too deep or too large");
  const kind = match?.match;
  if (!kind) throw new InvalidCondition("empty request condition");
  switch (kind.$case) {
    case "all":
    case "any":
      return Object.freeze({
        kind: kind.$case,
        conditions: Object.freeze(
          kind.value.matches.map((m) => compileRequestCondition(m, depth + 1, budget)),
        ),
      });
    case "not":
      return Object.freeze({
        kind: "not",
        condition: compileRequestCondition(kind.value, depth + 1, budget),
      });
    case "path":
      return Object.freeze({
        kind: "path",
        pattern: kind.value.regex,
        regex: compileProfilePathRegex(kind.value.regex),
      });
    case "method": {
      const method = methodFromProto(kind.value);
      if (method === undefined) throw new InvalidCondition("invalid method");
      return Object.freeze({ kind: "method", method });
    }
  }
}

function compileResponseCondition(
  match: destination.ResponseMatch | undefined,
  depth: number,
  budget: ConditionBudget,
): ResponseCondition {
  budget.nodes += 1;
  if (depth > LIMITS.maxConditionDepth || budget.nodes > LIMITS.maxConditionNodes)
    throw new InvalidCondition("condition too deep or too large");
  const kind = match?.match;
  if (!kind) throw new InvalidCondition("empty response condition");
  switch (kind.$case) {
    case "all":
    case "any":
      return Object.freeze({
        kind: kind.$case,
        conditions: Object.freeze(
          kind.value.matches.map((m) => compileResponseCondition(m, depth + 1, budget)),
        ),
      });
    case "not":
      return Object.freeze({
        kind: "not",
        condition: compileResponseCondition(kind.value, depth + 1, budget),
      });
    case "status": {
      const { min, max } = kind.value;
      if (min < 100 || max > 599 || min > max)
        throw new InvalidCondition(`invalid status range ${min}-${max}`);
      return Object.freeze({ kind: "status", min, max });
    }
  }
}

export function matchRequestCondition(
  condition: RequestCondition,
  request: { readonly method: string; readonly path: string },
): boolean {
  switch (condition.kind) {
    case "all":
      return condition.conditions.every((c) => matchRequestCondition(c, request));
    case "any":
      return condition.conditions.some((c) => matchRequestCondition(c, request));
    case "not":
      return !matchRequestCondition(condition.condition, request);
    case "path":
      return search(condition.regex, request.path);
    case "method":
      return condition.method === request.method;
  }
}

function compileRoute(route: destination.Route): ProfileRoute {
  const budget: ConditionBudget = { nodes: 0 };
  const condition = compileRequestCondition(route.condition, 0, budget);
  if (route.responseClasses.length > LIMITS.maxResponseClasses)
    throw new InvalidCondition("too many response classes");
  const responseClasses = route.responseClasses.map((rc) =>
    Object.freeze({ condition: compileResponseCondition(rc.condition, 0, budget), isFailure: rc.isFailure }),
  );
  const compiled: { -readonly [K in keyof ProfileRoute]: ProfileRoute[K] } = {
    condition,
    responseClasses: Object.freeze(responseClasses),
    metricLabels: boundedLabels([route.metricsLabels]),
    isRetryable: route.isRetryable,
  };
  const timeoutMs = positiveDurationMs(route.timeout);
  if (timeoutMs !== undefined) compiled.timeoutMs = timeoutMs;
  return Object.freeze(compiled);
}

function sameBudget(a: RetryBudgetConfig, b: RetryBudgetConfig): boolean {
  return (
    a.retryRatio === b.retryRatio && a.minRetriesPerSecond === b.minRetriesPerSecond && a.ttlMs === b.ttlMs
  );
}

/**
 * Compiles a `DestinationProfile` as linkerd `service-profiles/src/proto.rs` does: path regexes anchored,
 * routes that fail to convert dropped (with a debug log), the retry budget validated (ttl 1–60 s, ratio
 * 0–1000; otherwise no retries), zero-weight overrides dropped. Too many routes rejects the whole message.
 */
export function compileProfile(
  message: destination.DestinationProfile,
  options: CompileProfileOptions = {},
): ServiceProfile {
  if (message.routes.length > LIMITS.maxRoutes)
    throw invalidUpdate(`profile has ${message.routes.length} routes; the limit is ${LIMITS.maxRoutes}`);
  if (message.dstOverrides.length > LIMITS.maxDstOverrides)
    throw invalidUpdate(
      `profile has ${message.dstOverrides.length} dst overrides; the limit is ${LIMITS.maxDstOverrides}`,
    );
  const routes: ProfileRoute[] = [];
  const { exceeded } = withRegexBudget(() => {
    for (const route of message.routes) {
      try {
        routes.push(compileRoute(route));
      } catch (error) {
        if (!(error instanceof InvalidCondition)) throw error;
        debug("destination: dropping profile route of %s: %s", message.fullyQualifiedName, error.message);
      }
    }
  });
  // Dropping the routes past the budget would change which route a request gets: refuse the message.
  if (exceeded)
    throw invalidUpdate(`profile has more than ${LIMITS.maxNewRegexesPerMessage} new path regexes`);
  const budgetMessage = message.retryBudget;
  const retryBudgetConfig = budgetMessage
    ? validateRetryBudget({
        retryRatio: budgetMessage.retryRatio,
        minRetriesPerSecond: budgetMessage.minRetriesPerSecond,
        ttlMs: durationToMs(budgetMessage.ttl),
      })
    : undefined;
  if (budgetMessage && !retryBudgetConfig)
    debug("destination: invalid retry budget for %s; retries disabled", message.fullyQualifiedName);
  let retryBudget: RetryBudget | undefined;
  if (retryBudgetConfig) {
    const previous = options.previousBudget;
    retryBudget =
      previous && sameBudget(previous.config, retryBudgetConfig)
        ? previous
        : createRetryBudget({ ...retryBudgetConfig, ...(options.clock ? { clock: options.clock } : {}) });
  }
  const dstOverrides = message.dstOverrides
    // linkerd2-proxy drops zero weights and authorities that are not `host:port` (a `NameAddr`).
    .filter((dst) => dst.weight > 0 && dst.authority.length <= 512 && NAME_ADDR.test(dst.authority))
    .map((dst) => {
      const override: { -readonly [K in keyof ProfileDstOverride]: ProfileDstOverride[K] } = {
        authority: dst.authority,
        weight: dst.weight,
      };
      if (dst.backendRef?.kind) override.backendRef = metadataFromProto(dst.backendRef);
      return Object.freeze(override);
    });
  const profile: { -readonly [K in keyof ServiceProfile]: ServiceProfile[K] } = {
    kind: "profile",
    fullyQualifiedName: message.fullyQualifiedName,
    opaqueProtocol: message.opaqueProtocol,
    routes: Object.freeze(routes),
    retryBudgetConfig,
    retryBudget,
    dstOverrides: Object.freeze(dstOverrides),
  };
  if (message.endpoint) {
    const endpoint = endpointFromProto(message.endpoint);
    if (endpoint) profile.endpoint = endpoint;
  }
  if (message.parentRef?.kind) profile.parentRef = metadataFromProto(message.parentRef);
  if (message.profileRef?.kind) profile.profileRef = metadataFromProto(message.profileRef);
  return Object.freeze(profile);
}

/** Linkerd uses profile routes only when the profile has routes or overrides (contract §7.1). */
export function profileHasRoutes(
  profile: ServiceProfile | NoServiceProfile | undefined,
): profile is ServiceProfile {
  return profile?.kind === "profile" && (profile.routes.length > 0 || profile.dstOverrides.length > 0);
}
