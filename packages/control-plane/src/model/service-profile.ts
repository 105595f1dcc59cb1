/**
 * ServiceProfile (linkerd.io/v1alpha2) → destination.DestinationProfile parts, as the destination
 * controller's `profile_translator.go` builds them: request/response conditions (several fields in one
 * condition become an `all`, in the order all, any, method, not, pathRegex / all, any, status, not),
 * `metrics_labels {route}`, `is_retryable`, `timeout` (Go duration, no default), the retry budget.
 */
import { type destination, durationFromMs } from "@inmesh/proto";
import { parseGoDurationMs } from "./durations.js";
import type { JsonObject, Reader } from "./reader.js";
import { joinField } from "./reader.js";
import { type Meta, parseMeta, registeredMethod, rustRegexError } from "./resources.js";

export interface ServiceProfileRes {
  readonly meta: Meta;
  readonly routes: readonly destination.Route[];
  readonly retryBudget: destination.RetryBudget;
  readonly dstOverrides: ReadonlyArray<{ authority: string; weight: number }>;
}

export function defaultRetryBudget(): destination.RetryBudget {
  // retry_ratio is a protobuf float: hold the value the wire will carry.
  return { retryRatio: Math.fround(0.2), minRetriesPerSecond: 10, ttl: durationFromMs(10_000) };
}

const MAX_CONDITION_DEPTH = 16;

function requestMatch(
  r: Reader,
  obj: JsonObject,
  field: string,
  depth: number,
): destination.RequestMatch | undefined {
  if (depth > MAX_CONDITION_DEPTH) return r.fail(field, "conditions are nested too deeply");
  const matches: destination.RequestMatch[] = [];
  for (const key of ["all", "any"] as const) {
    const list = r.objects(obj, key, joinField(field, key));
    if (r.raw(obj, key) === undefined) continue;
    const seq = list.map(([m, f]) => requestMatch(r, m, f, depth + 1)).filter((m) => m !== undefined);
    matches.push({ match: { $case: key, value: { matches: seq } } });
  }
  const method = r.string(obj, "method", joinField(field, "method"));
  if (method !== undefined && method !== "") {
    // util.ParseMethod: the nine registered methods by exact name, anything else unregistered.
    matches.push({
      match: {
        $case: "method",
        value: registeredMethod(method) ?? { type: { $case: "unregistered", value: method } },
      },
    });
  }
  const not = r.object(obj, "not", joinField(field, "not"));
  if (not) {
    const inner = requestMatch(r, not, joinField(field, "not"), depth + 1);
    if (inner) matches.push({ match: { $case: "not", value: inner } });
  }
  const pathRegex = r.string(obj, "pathRegex", joinField(field, "pathRegex"));
  if (pathRegex !== undefined && pathRegex !== "") {
    // The proxy anchors the regex itself (`^…$`, by concatenation); the wire carries it as written.
    const error = rustRegexError(`^${pathRegex}$`);
    if (error === undefined) matches.push({ match: { $case: "path", value: { regex: pathRegex } } });
    else
      r.fail(
        joinField(field, "pathRegex"),
        `invalid regular expression ${JSON.stringify(pathRegex)}: ${error}`,
      );
  }
  if (matches.length === 0) return r.fail(field, "a request match must have a field set");
  if (matches.length === 1) return matches[0];
  return { match: { $case: "all", value: { matches } } };
}

function responseMatch(
  r: Reader,
  obj: JsonObject,
  field: string,
  depth: number,
): destination.ResponseMatch | undefined {
  if (depth > MAX_CONDITION_DEPTH) return r.fail(field, "conditions are nested too deeply");
  const matches: destination.ResponseMatch[] = [];
  for (const key of ["all", "any"] as const) {
    const list = r.objects(obj, key, joinField(field, key));
    if (r.raw(obj, key) === undefined) continue;
    const seq = list.map(([m, f]) => responseMatch(r, m, f, depth + 1)).filter((m) => m !== undefined);
    matches.push({ match: { $case: key, value: { matches: seq } } });
  }
  const status = r.object(obj, "status", joinField(field, "status"));
  if (status) {
    const statusField = joinField(field, "status");
    const min = r.integer(status, "min", joinField(statusField, "min"), 100, 599) ?? 0;
    const max = r.integer(status, "max", joinField(statusField, "max"), 100, 599) ?? 0;
    if (min === 0 && max === 0) r.fail(statusField, "needs min or max");
    else if (min !== 0 && max !== 0 && min > max)
      r.fail(statusField, `min ${min} is greater than max ${max}`);
    else matches.push({ match: { $case: "status", value: { min, max } } });
  }
  const not = r.object(obj, "not", joinField(field, "not"));
  if (not) {
    const inner = responseMatch(r, not, joinField(field, "not"), depth + 1);
    if (inner) matches.push({ match: { $case: "not", value: inner } });
  }
  if (matches.length === 0) return r.fail(field, "a response match must have a field set");
  if (matches.length === 1) return matches[0];
  return { match: { $case: "all", value: { matches } } };
}

/** Kubernetes Quantity as milli-units (`1` → 1000, `500m` → 500, `0.5` → 500). */
function quantityMillis(value: unknown): number | undefined {
  if (typeof value === "number")
    return Number.isFinite(value) && value >= 0 ? Math.round(value * 1000) : undefined;
  if (typeof value !== "string") return undefined;
  const match = /^(\d+(?:\.\d+)?)(m)?$/.exec(value.trim());
  if (!match) return undefined;
  const number = Number(match[1]);
  return Math.round(match[2] === "m" ? number : number * 1000);
}

export function parseServiceProfile(r: Reader, doc: JsonObject): ServiceProfileRes | undefined {
  const meta = parseMeta(r, doc, true);
  const spec = r.object(doc, "spec", "spec", true) ?? {};
  const routes: destination.Route[] = [];
  for (const [route, routeField] of r.objects(spec, "routes", "spec.routes")) {
    const name = r.string(route, "name", joinField(routeField, "name"), true);
    const conditionObj = r.object(route, "condition", joinField(routeField, "condition"), true);
    const condition = conditionObj
      ? requestMatch(r, conditionObj, joinField(routeField, "condition"), 0)
      : undefined;
    const responseClasses: destination.ResponseClass[] = [];
    for (const [rc, rcField] of r.objects(
      route,
      "responseClasses",
      joinField(routeField, "responseClasses"),
    )) {
      const rcCondition = r.object(rc, "condition", joinField(rcField, "condition"), true);
      const match = rcCondition
        ? responseMatch(r, rcCondition, joinField(rcField, "condition"), 0)
        : undefined;
      const isFailure = r.boolean(rc, "isFailure", joinField(rcField, "isFailure")) ?? false;
      if (match) responseClasses.push({ condition: match, isFailure });
    }
    const isRetryable = r.boolean(route, "isRetryable", joinField(routeField, "isRetryable")) ?? false;
    const timeoutText = r.string(route, "timeout", joinField(routeField, "timeout"));
    let timeoutMs: number | undefined;
    if (timeoutText !== undefined && timeoutText !== "") {
      // The controller logs and drops an unparsable timeout; a dev tool refuses it instead.
      timeoutMs = parseGoDurationMs(timeoutText);
      if (timeoutMs === undefined)
        r.fail(
          joinField(routeField, "timeout"),
          `${JSON.stringify(timeoutText)} is not a Go duration like 300ms or 1m30s`,
        );
    }
    if (name === undefined || condition === undefined) continue;
    routes.push({
      condition,
      responseClasses,
      metricsLabels: { route: name },
      isRetryable,
      timeout: timeoutMs === undefined || timeoutMs === 0 ? undefined : durationFromMs(timeoutMs),
    });
  }
  const retryBudget = defaultRetryBudget();
  const budget = r.object(spec, "retryBudget", "spec.retryBudget");
  if (budget) {
    const ratio = r.number(budget, "retryRatio", "spec.retryBudget.retryRatio");
    const minRetries = r.integer(
      budget,
      "minRetriesPerSecond",
      "spec.retryBudget.minRetriesPerSecond",
      0,
      4_294_967_295,
    );
    const ttlText = r.string(budget, "ttl", "spec.retryBudget.ttl", true);
    if (ratio !== undefined && ratio < 0) r.fail("spec.retryBudget.retryRatio", "must not be negative");
    // The CRD requires all three fields; Go zero values stand in for missing ones, as in the controller.
    retryBudget.retryRatio = Math.fround(ratio ?? 0);
    retryBudget.minRetriesPerSecond = minRetries ?? 0;
    if (ttlText !== undefined) {
      const ttlMs = parseGoDurationMs(ttlText);
      if (ttlMs === undefined)
        r.fail("spec.retryBudget.ttl", `${JSON.stringify(ttlText)} is not a Go duration like 10s`);
      retryBudget.ttl = ttlMs === undefined || ttlMs === 0 ? undefined : durationFromMs(ttlMs);
      if (ttlMs !== undefined && (ttlMs < 1_000 || ttlMs > 60_000)) {
        // Sent as written, but linkerd2-proxy refuses such a budget, so routes get no retries.
        r.warn(
          "spec.retryBudget.ttl",
          "outside 1s-60s: the proxy rejects this retry budget and retries nothing",
        );
      }
    }
    if (ratio !== undefined && ratio > 1000) {
      r.warn(
        "spec.retryBudget.retryRatio",
        "above 1000: the proxy rejects this retry budget and retries nothing",
      );
    }
  }
  const dstOverrides: Array<{ authority: string; weight: number }> = [];
  for (const [dst, dstField] of r.objects(spec, "dstOverrides", "spec.dstOverrides")) {
    const authority = r.string(dst, "authority", joinField(dstField, "authority"), true);
    const millis = quantityMillis(r.raw(dst, "weight"));
    if (millis === undefined)
      r.fail(joinField(dstField, "weight"), "must be a quantity such as 1, 0.5 or 500m");
    // Weights are sent in decimillis: 10000 = 100 %.
    if (authority !== undefined && millis !== undefined)
      dstOverrides.push({ authority, weight: millis * 10 });
  }
  if (!meta) return undefined;
  return { meta, routes, retryBudget, dstOverrides };
}
