import { fullMatch, type RustRegex } from "./regex.js";

/**
 * Gateway API request matching and scoring, as linkerd `http-route` does it (policy-semantics §8.4):
 * candidates are scored (host, path length, header count, query count, method) and the highest wins;
 * ties keep the earlier route and rule.
 */

/** The outbound request as the route selector sees it. */
export interface OutboundRequest {
  /** Upper-case method, as sent. */
  readonly method: string;
  /** The authority addressed: `host`, `host:port` or `[v6]:port`. */
  readonly host: string;
  /** Path without the query string (a `?…` suffix is ignored). */
  readonly path: string;
  /** Raw query string without the leading `?`; empty or undefined when absent. */
  readonly query?: string | undefined;
  /** Header lookup; called with lower-case names. Multiple values may be returned as an array. */
  getHeader(name: string): string | readonly string[] | undefined;
}

export type HostMatcher =
  | { readonly kind: "exact"; readonly host: string }
  /** `*.example.com` is `reverseLabels: ["com", "example"]`. */
  | { readonly kind: "suffix"; readonly reverseLabels: readonly string[] };

export type PathMatcher =
  | { readonly kind: "exact" | "prefix"; readonly value: string }
  | { readonly kind: "regex"; readonly value: string; readonly regex: RustRegex };

export type ValueMatcher =
  | { readonly name: string; readonly kind: "exact"; readonly value: string }
  | { readonly name: string; readonly kind: "regex"; readonly value: string; readonly regex: RustRegex };

export interface HttpRequestMatch {
  readonly path?: PathMatcher;
  /** Header names are lower-case; exact values compare as latin1 strings. */
  readonly headers: readonly ValueMatcher[];
  readonly queryParams: readonly ValueMatcher[];
  readonly method?: string;
}

export interface GrpcRequestMatch {
  /** Empty matches any service. */
  readonly service: string;
  /** Empty matches any method. */
  readonly method: string;
  readonly headers: readonly ValueMatcher[];
}

/** Lexicographically compared score; longer is never compared with shorter. */
export type MatchScore = readonly number[];

export function compareScores(a: MatchScore, b: MatchScore): number {
  const length = Math.min(a.length, b.length);
  for (let i = 0; i < length; i += 1) {
    const d = (a[i] as number) - (b[i] as number);
    if (d !== 0) return d;
  }
  return a.length - b.length;
}

/** Lower-cases the authority and strips the port, keeping IPv6 brackets out. */
export function normalizeRequestHost(authority: string): string {
  let host = authority.trim().toLowerCase();
  if (host.startsWith("[")) {
    const end = host.indexOf("]");
    return end < 0 ? host : host.slice(1, end);
  }
  const colon = host.lastIndexOf(":");
  if (colon >= 0 && host.indexOf(":") === colon) host = host.slice(0, colon);
  return host;
}

/** The score of a route without hostnames; shared, since scores are only read. */
const ANY_HOST_SCORE: MatchScore = Object.freeze([0, 0, 0]);

/**
 * Lexicographic order of two (host score, rule score) pairs, as `compareScores` orders their
 * concatenations: host scores all have three entries, so no array need be built per rule.
 */
export function compareRouteScores(
  hostA: MatchScore,
  ruleA: MatchScore,
  hostB: MatchScore,
  ruleB: MatchScore,
): number {
  const byHost = compareScores(hostA, hostB);
  return byHost !== 0 ? byHost : compareScores(ruleA, ruleB);
}

/** Host score: [kind (0 none, 1 suffix, 2 exact), length…]; undefined when the route's hosts exclude it. */
export function scoreHost(hosts: readonly HostMatcher[], host: string): MatchScore | undefined {
  if (hosts.length === 0) return ANY_HOST_SCORE;
  let best: MatchScore | undefined;
  const withoutDot = host.endsWith(".") ? host.slice(0, -1) : host;
  let labels: string[] | undefined;
  for (const matcher of hosts) {
    let score: MatchScore | undefined;
    if (matcher.kind === "exact") {
      const candidate = matcher.host.endsWith(".") ? host : withoutDot;
      if (candidate === matcher.host) score = [2, matcher.host.length, 0];
    } else {
      labels ??= withoutDot.split(".").reverse();
      const suffix = matcher.reverseLabels;
      // `*.example.com` needs at least one more label than the suffix.
      if (labels.length > suffix.length && suffix.every((label, i) => labels?.[i] === label)) {
        score = [1, suffix.length, suffix.reduce((sum, label) => sum + label.length, 0)];
      }
    }
    if (score && (!best || compareScores(score, best) > 0)) best = score;
  }
  return best;
}

function trimTrailingSlashes(value: string): string {
  let end = value.length;
  while (end > 0 && value.charCodeAt(end - 1) === 0x2f) end -= 1;
  return value.slice(0, end);
}

/** Path score = matched length; undefined when the path does not match. */
export function scorePath(matcher: PathMatcher | undefined, path: string): number | undefined {
  if (!matcher) return 1; // no path match behaves like Prefix "/"
  switch (matcher.kind) {
    case "exact":
      return path === matcher.value ? matcher.value.length : undefined;
    case "prefix": {
      const prefix = trimTrailingSlashes(matcher.value);
      if (prefix === "") return 1;
      if (!path.startsWith(prefix)) return undefined;
      // Whole segments only: `/foo` matches `/foo`, `/foo/`, `/foo/bar`, not `/foobar`.
      if (path.length > prefix.length && path.charCodeAt(prefix.length) !== 0x2f) return undefined;
      return prefix.length;
    }
    case "regex":
      return fullMatch(matcher.regex, path) ? path.length : undefined;
  }
}

const VISIBLE_ASCII = /^[\t\x20-\x7e]*$/;

function headerValues(request: OutboundRequest, name: string): readonly string[] {
  const value = request.getHeader(name);
  if (value === undefined) return [];
  return typeof value === "string" ? [value] : value;
}

function matchHeader(matcher: ValueMatcher, request: OutboundRequest): boolean {
  for (const value of headerValues(request, matcher.name)) {
    if (matcher.kind === "exact") {
      if (value === matcher.value) return true;
    } else if (VISIBLE_ASCII.test(value) && fullMatch(matcher.regex, value)) {
      return true;
    }
  }
  return false;
}

export function matchHeaders(matchers: readonly ValueMatcher[], request: OutboundRequest): boolean {
  for (const matcher of matchers) if (!matchHeader(matcher, request)) return false;
  return true;
}

/** Form-decoded query pairs, parsed once per request and only when a route needs them. */
export type QueryPairs = readonly (readonly [string, string])[];

export function parseQuery(query: string | undefined): QueryPairs {
  if (!query) return [];
  const text = query.startsWith("?") ? query.slice(1) : query;
  const pairs: (readonly [string, string])[] = [];
  for (const [name, value] of new URLSearchParams(text)) pairs.push([name, value]);
  return pairs;
}

function matchQueryParam(matcher: ValueMatcher, pairs: QueryPairs): boolean {
  for (const [name, value] of pairs) {
    if (name !== matcher.name) continue;
    if (matcher.kind === "exact" ? value === matcher.value : fullMatch(matcher.regex, value)) return true;
  }
  return false;
}

/** Rule-level score: [path length, header matches, query matches, method matched]. */
export function scoreHttpMatch(
  match: HttpRequestMatch,
  request: OutboundRequest,
  path: string,
  query: () => QueryPairs,
): MatchScore | undefined {
  if (match.method !== undefined && match.method !== request.method) return undefined;
  const pathScore = scorePath(match.path, path);
  if (pathScore === undefined) return undefined;
  if (!matchHeaders(match.headers, request)) return undefined;
  if (match.queryParams.length > 0) {
    const pairs = query();
    for (const matcher of match.queryParams) if (!matchQueryParam(matcher, pairs)) return undefined;
  }
  return [pathScore, match.headers.length, match.queryParams.length, match.method !== undefined ? 1 : 0];
}

/** The score of a rule with no matches: like `PathPrefix /`. */
export const CATCH_ALL_HTTP_SCORE: MatchScore = [1, 0, 0, 0];

/** Splits `/service/method`; undefined unless both segments are present. */
export function splitGrpcPath(path: string): readonly [string, string] | undefined {
  if (!path.startsWith("/")) return undefined;
  const slash = path.indexOf("/", 1);
  if (slash < 0) return undefined;
  const service = path.slice(1, slash);
  const method = path.slice(slash + 1);
  if (service === "" || method === "") return undefined;
  return [service, method];
}

/** gRPC rule score: [service length, method length, header matches]. Only POST requests match. */
export function scoreGrpcMatch(
  match: GrpcRequestMatch,
  request: OutboundRequest,
  rpc: readonly [string, string],
): MatchScore | undefined {
  if (match.service !== "" && match.service !== rpc[0]) return undefined;
  if (match.method !== "" && match.method !== rpc[1]) return undefined;
  if (!matchHeaders(match.headers, request)) return undefined;
  return [match.service.length, match.method.length, match.headers.length];
}

export const CATCH_ALL_GRPC_SCORE: MatchScore = [0, 0, 0];
