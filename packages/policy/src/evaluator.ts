import { explanation, metaText, trail } from "./explain.js";
import {
  AUTHN_TLS_UNAUTHENTICATED,
  AUTHN_UNAUTHENTICATED,
  type IrAuthz,
  type IrGrpcMatch,
  type IrHeaderMatch,
  type IrHost,
  type IrHttpMatch,
  type IrNetwork,
  type IrPath,
  type IrQueryMatch,
  type IrRoute,
  type IrServer,
  PATH_EXACT,
  PATH_PREFIX,
  PATH_REGEX,
} from "./ir.js";
import { INVALID_META, NOT_LOADED_META } from "./meta.js";
import { createRateLimiter, type RateLimiterOptions } from "./rate-limit.js";
import { fullMatch, type RustRegex } from "./regex.js";
import type {
  ClientFacts,
  CompiledServerPolicy,
  ConnectionAllowedDecision,
  ConnectionDecision,
  ConnectionDeniedDecision,
  HeaderLookup,
  HttpAllowedDecision,
  HttpDecision,
  HttpDeniedDecision,
  HttpRateLimitedDecision,
  HttpRequestFacts,
  LocalRateLimiter,
  PolicyExplanation,
  PolicyStatus,
  RouteFilter,
  RouteMeta,
  ServerMeta,
  ServerProtocol,
} from "./types.js";
import { asciiEqualsIgnoreCaseAt, formDecode, indexedList, isVisibleAscii, utf8Length } from "./util.js";

/** Above this many (rule, authorization) pairs, allowed decisions are built on first use instead of eagerly. */
const EAGER_DECISION_BUDGET = 65_536;

const NO_FILTERS: readonly RouteFilter[] = Object.freeze([]);
const ROOT_PATH = "/";

interface RuleTable<TMatch> {
  readonly matches: readonly TMatch[];
  /** Filters per variant: one per match when redirects need the matched prefix, else one. */
  readonly filters: readonly (readonly RouteFilter[])[];
  readonly perMatchVariants: boolean;
  /** Allowed decisions, indexed by variant × authorizations + authorization index. */
  readonly decisions: (HttpAllowedDecision | undefined)[];
}

interface RouteTable<TMatch> {
  readonly meta: RouteMeta;
  readonly hosts: readonly IrHost[];
  readonly authorizations: readonly IrAuthz[];
  readonly rules: readonly RuleTable<TMatch>[];
  readonly unauthorized: HttpDeniedDecision;
  readonly routeKind: "http" | "grpc";
}

function httpDenied(
  server: ServerMeta,
  reason: HttpDeniedDecision["reason"],
  route: RouteMeta | undefined,
  routeKind: "http" | "grpc" | undefined,
  message: string,
): HttpDeniedDecision {
  return Object.freeze({
    allowed: false,
    reason,
    server,
    route,
    authz: undefined,
    routeKind,
    filters: NO_FILTERS,
    audit: false,
    httpStatus: reason === "route-not-found" ? 404 : 403,
    grpcStatus: reason === "route-not-found" ? 5 : 7,
    message,
  });
}

function connectionDenied(
  server: ServerMeta,
  reason: ConnectionDeniedDecision["reason"],
  message: string,
): ConnectionDeniedDecision {
  return Object.freeze({
    allowed: false,
    reason,
    server,
    route: undefined,
    authz: undefined,
    audit: false,
    message,
  });
}

function connectionAllowed(server: ServerMeta, authz: IrAuthz): ConnectionAllowedDecision {
  return Object.freeze({
    allowed: true,
    reason: undefined,
    server,
    route: undefined,
    authz: authz.meta,
    audit: authz.audit,
    message: undefined,
  });
}

function ruleTable<TMatch extends object>(
  matches: readonly TMatch[],
  filters: readonly RouteFilter[],
): RuleTable<TMatch> {
  const hasRedirect = filters.some((f) => f.kind === "redirect");
  if (!hasRedirect) {
    return {
      matches,
      filters: [filters.length === 0 ? NO_FILTERS : filters],
      perMatchVariants: false,
      decisions: [],
    };
  }
  // A prefix-rewriting redirect needs the prefix the request matched; that depends on which match won.
  const variants =
    matches.length === 0 ? [1] : matches.map((m) => (m as { readonly prefixLength?: number }).prefixLength);
  return {
    matches,
    filters: variants.map((prefixLength) =>
      Object.freeze(
        filters.map((f) =>
          f.kind === "redirect" ? Object.freeze({ ...f, matchedPrefixLength: prefixLength }) : f,
        ),
      ),
    ),
    perMatchVariants: matches.length > 0,
    decisions: [],
  };
}

function routeTable<TMatch extends object>(
  route: IrRoute<TMatch>,
  server: ServerMeta,
  routeKind: "http" | "grpc",
): RouteTable<TMatch> {
  return {
    meta: route.meta,
    hosts: route.hosts,
    authorizations: route.authorizations,
    rules: route.rules.map((rule) => ruleTable(rule.matches, rule.filters)),
    unauthorized: httpDenied(server, "unauthorized", route.meta, routeKind, "unauthorized request on route"),
    routeKind,
  };
}

function allowedDecision(
  server: ServerMeta,
  route: RouteTable<unknown>,
  filters: readonly RouteFilter[],
  authz: IrAuthz,
): HttpAllowedDecision {
  return Object.freeze({
    allowed: true,
    reason: undefined,
    server,
    route: route.meta,
    authz: authz.meta,
    routeKind: route.routeKind,
    filters,
    audit: authz.audit,
    httpStatus: undefined,
    grpcStatus: undefined,
    message: undefined,
  });
}

function decisionFor(
  server: ServerMeta,
  route: RouteTable<unknown>,
  rule: RuleTable<unknown>,
  variant: number,
  authzIndex: number,
): HttpAllowedDecision {
  const index = variant * route.authorizations.length + authzIndex;
  let decision = rule.decisions[index];
  if (decision === undefined) {
    decision = allowedDecision(
      server,
      route,
      rule.filters[variant] ?? NO_FILTERS,
      route.authorizations[authzIndex] as IrAuthz,
    );
    rule.decisions[index] = decision;
  }
  return decision;
}

function precompute(server: ServerMeta, routes: readonly RouteTable<unknown>[]): void {
  let total = 0;
  for (const route of routes) {
    for (const rule of route.rules) total += rule.filters.length * route.authorizations.length;
  }
  if (total > EAGER_DECISION_BUDGET) return;
  for (const route of routes) {
    for (const rule of route.rules) {
      for (let variant = 0; variant < rule.filters.length; variant += 1) {
        for (let i = 0; i < route.authorizations.length; i += 1) decisionFor(server, route, rule, variant, i);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Hot path. Everything below runs per request: no allocation (except decoding a percent-encoded or
// regex-matched query parameter), indexed loops only.

function networkContains(n: IrNetwork, family: 4 | 6, w: readonly number[]): boolean {
  if (n.family !== family) return false;
  if (((w[0] as number) & n.m0) >>> 0 !== n.w0) return false;
  if (family === 4) return true;
  return (
    ((w[1] as number) & n.m1) >>> 0 === n.w1 &&
    ((w[2] as number) & n.m2) >>> 0 === n.w2 &&
    ((w[3] as number) & n.m3) >>> 0 === n.w3
  );
}

function networksContain(networks: readonly IrNetwork[], client: ClientFacts): boolean {
  const family = client.family;
  if (family === undefined) return false;
  const words = client.ipWords;
  for (let i = 0; i < networks.length; i += 1) {
    const n = networks[i] as IrNetwork;
    if (!networkContains(n, family, words)) continue;
    let excluded = false;
    const except = n.except;
    for (let j = 0; j < except.length; j += 1) {
      if (networkContains(except[j] as IrNetwork, family, words)) {
        excluded = true;
        break;
      }
    }
    if (!excluded) return true;
  }
  return false;
}

export function authzMatches(authz: IrAuthz, client: ClientFacts): boolean {
  if (!networksContain(authz.networks, client)) return false;
  if (authz.authn === AUTHN_UNAUTHENTICATED) return true;
  if (!client.tlsEstablished) return false;
  if (authz.authn === AUTHN_TLS_UNAUTHENTICATED) return true;
  const identity = client.identity;
  if (identity === undefined) return false;
  if (authz.identities?.has(identity)) return true;
  // URI (SPIFFE) identities match exact names only; suffixes, even `*`, are for DNS-like names.
  if (client.identityKind !== "dns") return false;
  if (authz.anyDnsIdentity) return true;
  const suffixes = authz.suffixes;
  if (suffixes === undefined) return false;
  // identitySuffixes[k] starts at the k-th dot, so it has (dots − k) dots: one candidate per count.
  const candidates = client.identitySuffixes;
  const dots = authz.suffixDots;
  for (let i = 0; i < dots.length; i += 1) {
    const k = candidates.length - (dots[i] as number);
    if (k >= 0 && k < candidates.length && suffixes.has(candidates[k] as string)) return true;
  }
  return false;
}

function hostMatches(h: IrHost, authority: string, start: number, end: number): boolean {
  if (h.exact) {
    if (!h.patternEndsWithDot && end > start && authority.charCodeAt(end - 1) === 0x2e) end -= 1;
    return end - start === h.value.length && asciiEqualsIgnoreCaseAt(authority, start, h.value);
  }
  const labels = h.labels;
  if ((labels.length === 0 || labels[0] !== "") && end > start && authority.charCodeAt(end - 1) === 0x2e)
    end -= 1;
  for (let i = 0; i < labels.length; i += 1) {
    const label = labels[i] as string;
    if (end - start < label.length || !asciiEqualsIgnoreCaseAt(authority, end - label.length, label))
      return false;
    end -= label.length;
    if (end <= start || authority.charCodeAt(end - 1) !== 0x2e) return false;
    end -= 1;
  }
  return true;
}

/** Best host score of a route (kind × 2^28 + length), 0 when the route has no hosts, -1 when none match. */
function routeHostScore(
  hosts: readonly IrHost[],
  authority: string | undefined,
  start: number,
  end: number,
): number {
  if (hosts.length === 0) return 0;
  if (authority === undefined || start < 0) return -1;
  let best = -1;
  for (let i = 0; i < hosts.length; i += 1) {
    const h = hosts[i] as IrHost;
    if (h.score > best && hostMatches(h, authority, start, end)) best = h.score;
  }
  return best;
}

function pathScore(p: IrPath, path: string, trimmedEnd: number): number {
  if (p.kind === PATH_EXACT) return path === p.value ? p.score : -1;
  if (p.kind === PATH_PREFIX) {
    if (p.root) return 1;
    const prefix = p.trimmed;
    if (trimmedEnd < prefix.length || !path.startsWith(prefix)) return -1;
    return trimmedEnd === prefix.length || path.charCodeAt(prefix.length) === 0x2f ? p.score : -1;
  }
  return fullMatch(p.regex as RustRegex, path) ? utf8Length(path) : -1;
}

function headerValueMatches(h: IrHeaderMatch, value: string): boolean {
  if (h.exact !== undefined) return value === h.exact;
  return isVisibleAscii(value) && fullMatch(h.regex as RustRegex, value);
}

function rawHeaderMatches(h: IrHeaderMatch, raw: readonly string[]): boolean {
  const name = h.name;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const rawName = raw[i] as string;
    if (
      rawName.length === name.length &&
      asciiEqualsIgnoreCaseAt(rawName, 0, name) &&
      headerValueMatches(h, raw[i + 1] as string)
    ) {
      return true;
    }
  }
  return false;
}

function headerMatches(h: IrHeaderMatch, request: HttpRequestFacts): boolean {
  const headers: HeaderLookup = request.headers;
  const value = typeof headers === "function" ? headers(h.name) : headers[h.name];
  if (typeof value === "string") {
    const raw = request.rawHeaders;
    if (raw === undefined) return headerValueMatches(h, value);
    // A value without a comma is one header line; otherwise (or when Node kept only the first of a
    // repeated header) the raw list has every value, one by one, as Linkerd matches them.
    if (value.indexOf(",") < 0 && headerValueMatches(h, value)) return true;
    return rawHeaderMatches(h, raw);
  }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i += 1) {
      const item: unknown = value[i];
      if (typeof item === "string" && headerValueMatches(h, item)) return true;
    }
  }
  return false;
}

function rawEquals(query: string, start: number, end: number, expected: string): boolean {
  return end - start === expected.length && query.startsWith(expected, start);
}

function needsDecoding(query: string, start: number, end: number): boolean {
  for (let i = start; i < end; i += 1) {
    const code = query.charCodeAt(i);
    if (code === 0x25 || code === 0x2b || code > 0x7e) return true;
  }
  return false;
}

function segmentEquals(query: string, start: number, end: number, expected: string): boolean {
  if (!needsDecoding(query, start, end)) return rawEquals(query, start, end, expected);
  return formDecode(query.slice(start, end)) === expected;
}

function queryMatches(q: IrQueryMatch, query: string): boolean {
  const length = query.length;
  let start = 0;
  while (start < length) {
    let end = query.indexOf("&", start);
    if (end < 0) end = length;
    if (end > start) {
      let eq = query.indexOf("=", start);
      if (eq < 0 || eq > end) eq = end;
      if (segmentEquals(query, start, eq, q.name)) {
        const valueStart = eq < end ? eq + 1 : end;
        if (q.exact !== undefined) {
          if (segmentEquals(query, valueStart, end, q.exact)) return true;
        } else if (fullMatch(q.regex as RustRegex, formDecode(query.slice(valueStart, end)))) {
          return true;
        }
      }
    }
    start = end + 1;
  }
  return false;
}

/** Path score of an HTTP match, or -1. */
function httpMatchScore(m: IrHttpMatch, request: HttpRequestFacts, path: string, trimmedEnd: number): number {
  if (m.method !== undefined && request.method !== m.method) return -1;
  let score = 1;
  if (m.path !== undefined) {
    score = pathScore(m.path, path, trimmedEnd);
    if (score < 0) return -1;
  }
  const headers = m.headers;
  for (let i = 0; i < headers.length; i += 1) {
    if (!headerMatches(headers[i] as IrHeaderMatch, request)) return -1;
  }
  const query = m.query;
  for (let i = 0; i < query.length; i += 1) {
    if (!queryMatches(query[i] as IrQueryMatch, request.query)) return -1;
  }
  return score;
}

/**
 * Rule-score order after the path length: header count, then query-param count, then whether a method was
 * matched (policy-semantics §8.4). Strictly greater only, so ties keep the earlier rule or route.
 */
function httpTailGreater(a: IrHttpMatch | undefined, b: IrHttpMatch | undefined): boolean {
  const ah = a === undefined ? 0 : a.headers.length;
  const bh = b === undefined ? 0 : b.headers.length;
  if (ah !== bh) return ah > bh;
  const aq = a === undefined ? 0 : a.query.length;
  const bq = b === undefined ? 0 : b.query.length;
  if (aq !== bq) return aq > bq;
  const am = a === undefined || a.method === undefined ? 0 : 1;
  const bm = b === undefined || b.method === undefined ? 0 : 1;
  return am > bm;
}

function hostBounds(authority: string | undefined): number {
  // Returns start; the end is recomputed by hostEnd() (kept separate so nothing is allocated).
  if (authority === undefined || authority.length === 0) return -1;
  return authority.lastIndexOf("@") + 1;
}

function hostEnd(authority: string, start: number): number {
  if (authority.charCodeAt(start) === 0x5b) {
    const close = authority.indexOf("]", start);
    return close < 0 ? authority.length : close + 1;
  }
  const colon = authority.indexOf(":", start);
  return colon < 0 ? authority.length : colon;
}

function authorizeOnRoute(
  server: ServerMeta,
  route: RouteTable<unknown>,
  rule: RuleTable<unknown>,
  variant: number,
  client: ClientFacts,
): HttpDecision {
  const authorizations = route.authorizations;
  for (let i = 0; i < authorizations.length; i += 1) {
    if (authzMatches(authorizations[i] as IrAuthz, client))
      return decisionFor(server, route, rule, variant, i);
  }
  return route.unauthorized;
}

/** One (route, rule, match) triple in wire order; `match` undefined is a rule's implicit catch-all. */
interface Entry<TMatch> {
  readonly seq: number;
  readonly route: RouteTable<TMatch>;
  readonly rule: RuleTable<TMatch>;
  readonly match: TMatch | undefined;
  readonly variant: number;
}

/**
 * Entries bucketed by the first path segment they can match (the gRPC service for gRPC routes), keyed by
 * a hash of that segment so a request finds its bucket without slicing a string. Entries that can match
 * any first segment (root prefixes, regexes, no path, implicit matches) are in `wildcard`. A request
 * walks its bucket and `wildcard` merged by `seq`, which keeps Linkerd's first-wins tie order.
 */
interface RouteIndex<TMatch> {
  readonly buckets: ReadonlyMap<number, readonly Entry<TMatch>[]>;
  readonly wildcard: readonly Entry<TMatch>[];
}

const NO_ENTRIES: readonly never[] = Object.freeze([]);

/** FNV-1a over `text[start, end)`, in 32-bit integer arithmetic (no allocation). */
function segmentHash(text: string, start: number, end: number): number {
  let hash = 0x811c9dc5 | 0;
  for (let i = start; i < end; i += 1) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  // Kept within V8's small-integer range: a full int32 is boxed as a heap number about half the time it
  // crosses a call or becomes a Map key, which would allocate on every decision.
  return hash & 0x3fffffff;
}

/** Hash of the first segment of an absolute path (`/seg/…`), or undefined if the path is not absolute. */
function firstSegmentHash(path: string): number | undefined {
  if (path.charCodeAt(0) !== 0x2f) return undefined;
  let end = path.indexOf("/", 1);
  if (end < 0) end = path.length;
  return segmentHash(path, 1, end);
}

function buildIndex<TMatch>(
  routes: readonly RouteTable<TMatch>[],
  bucketOf: (match: TMatch) => number | undefined,
): RouteIndex<TMatch> {
  const buckets = new Map<number, Entry<TMatch>[]>();
  const wildcard: Entry<TMatch>[] = [];
  let seq = 0;
  for (const route of routes) {
    for (const rule of route.rules) {
      const place = (match: TMatch | undefined, variant: number) => {
        const entry: Entry<TMatch> = Object.freeze({ seq: seq++, route, rule, match, variant });
        const bucket = match === undefined ? undefined : bucketOf(match);
        if (bucket === undefined) wildcard.push(entry);
        else {
          const list = buckets.get(bucket);
          if (list === undefined) buckets.set(bucket, [entry]);
          else list.push(entry);
        }
      };
      if (rule.matches.length === 0) place(undefined, 0);
      else {
        for (let j = 0; j < rule.matches.length; j += 1) {
          place(rule.matches[j] as TMatch, rule.perMatchVariants ? j : 0);
        }
      }
    }
  }
  return { buckets, wildcard: indexedList(wildcard) };
}

function httpBucket(match: IrHttpMatch): number | undefined {
  const path = match.path;
  if (path === undefined || path.kind === PATH_REGEX || path.root) return undefined;
  // Prefixes match whole segments, so the first segment of the (trimmed) pattern must equal the request's.
  // Anything that is not an absolute path (an empty prefix after trimming, say) may match any request.
  return firstSegmentHash(path.kind === PATH_PREFIX ? path.trimmed : path.value);
}

function grpcBucket(match: IrGrpcMatch): number | undefined {
  return match.service === undefined ? undefined : segmentHash(match.service, 0, match.service.length);
}

function authorizeHttpRoutes(
  server: ServerMeta,
  index: RouteIndex<IrHttpMatch>,
  request: HttpRequestFacts,
  notFound: HttpDeniedDecision,
): HttpDecision {
  const authority = request.authority;
  let start = -2; // host bounds are found on first use: most routes have no hosts
  let end = -1;
  const path = request.path.length === 0 ? ROOT_PATH : request.path;
  let trimmedEnd = path.length;
  while (trimmedEnd > 0 && path.charCodeAt(trimmedEnd - 1) === 0x2f) trimmedEnd -= 1;
  const hash = firstSegmentHash(path);
  const bucket = hash === undefined ? NO_ENTRIES : (index.buckets.get(hash) ?? NO_ENTRIES);
  const wildcard = index.wildcard;

  let best: Entry<IrHttpMatch> | undefined;
  let bestHost = 0;
  let bestPath = 0;
  let lastRoute: RouteTable<IrHttpMatch> | undefined;
  let host = 0;
  let i = 0;
  let j = 0;
  while (i < bucket.length || j < wildcard.length) {
    let entry: Entry<IrHttpMatch>;
    if (
      j >= wildcard.length ||
      (i < bucket.length && (bucket[i] as Entry<IrHttpMatch>).seq < (wildcard[j] as Entry<IrHttpMatch>).seq)
    ) {
      entry = bucket[i] as Entry<IrHttpMatch>;
      i += 1;
    } else {
      entry = wildcard[j] as Entry<IrHttpMatch>;
      j += 1;
    }
    if (entry.route !== lastRoute) {
      lastRoute = entry.route;
      if (entry.route.hosts.length === 0) host = 0;
      else {
        if (start === -2) {
          start = hostBounds(authority);
          end = start < 0 ? -1 : hostEnd(authority as string, start);
        }
        host = routeHostScore(entry.route.hosts, authority, start, end);
      }
    }
    if (host < 0 || (best !== undefined && host < bestHost)) continue;
    const match = entry.match;
    const score = match === undefined ? 1 : httpMatchScore(match, request, path, trimmedEnd);
    if (score < 0) continue;
    let better: boolean;
    if (best === undefined) better = true;
    else if (host !== bestHost) better = host > bestHost;
    else if (score !== bestPath) better = score > bestPath;
    else better = httpTailGreater(match, best.match);
    if (better) {
      best = entry;
      bestHost = host;
      bestPath = score;
    }
  }
  if (best === undefined) return notFound;
  return authorizeOnRoute(server, best.route, best.rule, best.variant, request.client);
}

function grpcTailGreater(a: IrGrpcMatch | undefined, b: IrGrpcMatch | undefined): boolean {
  const as = a === undefined ? 0 : a.serviceScore;
  const bs = b === undefined ? 0 : b.serviceScore;
  if (as !== bs) return as > bs;
  const am = a === undefined ? 0 : a.methodScore;
  const bm = b === undefined ? 0 : b.methodScore;
  if (am !== bm) return am > bm;
  return (a === undefined ? 0 : a.headers.length) > (b === undefined ? 0 : b.headers.length);
}

function grpcMatches(
  m: IrGrpcMatch,
  request: HttpRequestFacts,
  path: string,
  serviceEnd: number,
  methodEnd: number,
): boolean {
  if (serviceEnd < 0) return false;
  if (m.service !== undefined && !(serviceEnd - 1 === m.service.length && path.startsWith(m.service, 1)))
    return false;
  if (
    m.method !== undefined &&
    !(methodEnd - serviceEnd - 1 === m.method.length && path.startsWith(m.method, serviceEnd + 1))
  ) {
    return false;
  }
  const headers = m.headers;
  for (let i = 0; i < headers.length; i += 1) {
    if (!headerMatches(headers[i] as IrHeaderMatch, request)) return false;
  }
  return true;
}

function authorizeGrpcRoutes(
  server: ServerMeta,
  index: RouteIndex<IrGrpcMatch>,
  request: HttpRequestFacts,
  notFound: HttpDeniedDecision,
): HttpDecision {
  const authority = request.authority;
  const start = hostBounds(authority);
  const end = start < 0 ? -1 : hostEnd(authority as string, start);
  const path = request.path;
  // `/service/method[/…]` with both names present; only POST requests can match an explicit rule.
  let serviceEnd = -1;
  let methodEnd = -1;
  if (request.method === "POST" && path.charCodeAt(0) === 0x2f) {
    serviceEnd = path.indexOf("/", 1);
    if (serviceEnd >= 0) {
      methodEnd = path.indexOf("/", serviceEnd + 1);
      if (methodEnd < 0) methodEnd = path.length;
    }
  }
  const bucket =
    serviceEnd < 0 ? NO_ENTRIES : (index.buckets.get(segmentHash(path, 1, serviceEnd)) ?? NO_ENTRIES);
  const wildcard = index.wildcard;

  let best: Entry<IrGrpcMatch> | undefined;
  let bestHost = 0;
  let lastRoute: RouteTable<IrGrpcMatch> | undefined;
  let host = 0;
  let i = 0;
  let j = 0;
  while (i < bucket.length || j < wildcard.length) {
    let entry: Entry<IrGrpcMatch>;
    if (
      j >= wildcard.length ||
      (i < bucket.length && (bucket[i] as Entry<IrGrpcMatch>).seq < (wildcard[j] as Entry<IrGrpcMatch>).seq)
    ) {
      entry = bucket[i] as Entry<IrGrpcMatch>;
      i += 1;
    } else {
      entry = wildcard[j] as Entry<IrGrpcMatch>;
      j += 1;
    }
    if (entry.route !== lastRoute) {
      lastRoute = entry.route;
      host = routeHostScore(entry.route.hosts, authority, start, end);
    }
    if (host < 0 || (best !== undefined && host < bestHost)) continue;
    const match = entry.match;
    if (match !== undefined && !grpcMatches(match, request, path, serviceEnd, methodEnd)) continue;
    if (best === undefined || host > bestHost || grpcTailGreater(match, best.match)) {
      best = entry;
      bestHost = host;
    }
  }
  if (best === undefined) return notFound;
  return authorizeOnRoute(server, best.route, best.rule, 0, request.client);
}

// ---------------------------------------------------------------------------------------------------

function policyObject(fields: {
  status: PolicyStatus;
  port: number | undefined;
  server: ServerMeta;
  protocol: ServerProtocol;
  perRequest: boolean;
  detectTimeoutMs: number | undefined;
  invalidReason: string | undefined;
  routes: readonly RouteMeta[];
  rateLimit?: LocalRateLimiter | undefined;
  authorizeHttp(request: HttpRequestFacts): HttpDecision;
  authorizeConnection(client: ClientFacts): ConnectionDecision;
  explainHttp?(decision: HttpDecision | HttpRateLimitedDecision, client: ClientFacts): PolicyExplanation;
  explainConnection?(decision: ConnectionDecision, client: ClientFacts): PolicyExplanation;
}): CompiledServerPolicy {
  // Policies without authorizations (invalid, not loaded) explain themselves with their reason.
  const note =
    fields.status === "invalid"
      ? `the port's policy is invalid (${fields.invalidReason}): everything is refused, localhost included`
      : fields.status === "not-loaded"
        ? "the port's policy has not been loaded yet: everything is refused"
        : "";
  const plain = (
    decision: HttpDecision | HttpRateLimitedDecision | ConnectionDecision,
    client: ClientFacts,
  ) =>
    explanation({
      allowed: decision.allowed,
      reason: decision.reason,
      server: decision.server,
      route: decision.route,
      authz: decision.authz,
      client,
      trail: [],
      notes: note === "" ? [] : [note],
    });
  return Object.freeze({
    ...fields,
    rateLimit: fields.rateLimit,
    explainHttp: fields.explainHttp ?? plain,
    explainConnection: fields.explainConnection ?? plain,
  });
}

const PREDICATES = Object.freeze({ matches: authzMatches, inNetworks: networksContain });

/** Turns a validated server into its evaluator. */
export function buildPolicy(
  ir: IrServer,
  port?: number,
  rateLimiterOptions?: RateLimiterOptions,
): CompiledServerPolicy {
  const server = ir.meta;
  const notFound = httpDenied(server, "route-not-found", undefined, undefined, "no route found for request");
  const connectionAuthorizations = ir.connectionAuthorizations;
  const connectionAllows = connectionAuthorizations.map((a) => connectionAllowed(server, a));
  const connectionDeny = connectionDenied(server, "unauthorized", "unauthorized connection");
  const httpRoutes = ir.httpRoutes.map((r) => routeTable(r, server, "http"));
  const grpcRoutes = ir.grpcRoutes.map((r) => routeTable(r, server, "grpc"));
  precompute(server, [...httpRoutes, ...grpcRoutes]);
  const httpIndex = buildIndex(httpRoutes, httpBucket);
  const grpcIndex = buildIndex(grpcRoutes, grpcBucket);
  const isGrpc = ir.protocol === "grpc";
  const perRequest = ir.protocol !== "opaque" && ir.protocol !== "tls";

  return policyObject({
    status: ir.status,
    port,
    server,
    protocol: ir.protocol,
    perRequest,
    detectTimeoutMs: ir.detectTimeoutMs,
    invalidReason: undefined,
    routes: Object.freeze((isGrpc ? grpcRoutes : httpRoutes).map((r) => r.meta)),
    rateLimit: ir.rateLimit === undefined ? undefined : createRateLimiter(ir.rateLimit, rateLimiterOptions),
    authorizeHttp(request: HttpRequestFacts): HttpDecision {
      if (!perRequest) return notFound;
      if (isGrpc) return authorizeGrpcRoutes(server, grpcIndex, request, notFound);
      return authorizeHttpRoutes(server, httpIndex, request, notFound);
    },
    authorizeConnection(client: ClientFacts): ConnectionDecision {
      for (let i = 0; i < connectionAuthorizations.length; i += 1) {
        if (authzMatches(connectionAuthorizations[i] as IrAuthz, client)) {
          return connectionAllows[i] as ConnectionAllowedDecision;
        }
      }
      return connectionDeny;
    },
    explainHttp(decision, client) {
      const notes: string[] = [];
      let tried: readonly IrAuthz[] = [];
      if (!perRequest) {
        notes.push(`a ${ir.protocol} server authorizes connections, not requests: it has no routes`);
      } else if (decision.route === undefined) {
        const names = (isGrpc ? grpcRoutes : httpRoutes).map((r) => metaText(r.meta));
        notes.push(`no route matched the request; routes: ${names.join(", ") || "none"}`);
      } else {
        const route = [...httpRoutes, ...grpcRoutes].find((r) => r.meta === decision.route);
        tried = route?.authorizations ?? [];
      }
      if (decision.reason === "rate-limited") {
        const limited = decision as HttpRateLimitedDecision;
        notes.push(
          `authorized, then refused by the local rate limit ${metaText(limited.rateLimit.meta)}: ${limited.message}`,
        );
      }
      return explanation({
        allowed: decision.allowed,
        reason: decision.reason,
        server,
        route: decision.route,
        authz: decision.authz,
        client,
        trail: trail(tried, client, PREDICATES),
        notes,
      });
    },
    explainConnection(decision, client) {
      return explanation({
        allowed: decision.allowed,
        reason: decision.reason,
        server,
        route: undefined,
        authz: decision.authz,
        client,
        trail: trail(connectionAuthorizations, client, PREDICATES),
        notes: [],
      });
    },
  });
}

/**
 * Linkerd's `ServerPolicy::invalid`: a detect server whose only route, `invalid`, has no authorizations
 * and which has no connection authorizations. Every request is refused (403 / gRPC 7, reason
 * `invalid-policy`) and every connection closed, localhost included.
 */
export function invalidServerPolicy(
  reason: string,
  port?: number,
  detectTimeoutMs = 10_000,
): CompiledServerPolicy {
  const httpDeny = httpDenied(INVALID_META, "invalid-policy", INVALID_META, "http", "invalid server policy");
  const connectionDeny = connectionDenied(INVALID_META, "invalid-policy", "invalid server policy");
  return policyObject({
    status: "invalid",
    port,
    server: INVALID_META,
    protocol: "detect",
    perRequest: true,
    detectTimeoutMs,
    invalidReason: reason,
    routes: Object.freeze([INVALID_META]),
    authorizeHttp: () => httpDeny,
    authorizeConnection: () => connectionDeny,
  });
}

const notLoadedHttp = httpDenied(
  NOT_LOADED_META,
  "not-loaded",
  undefined,
  undefined,
  "inbound policy not loaded",
);
const notLoadedConnection = connectionDenied(NOT_LOADED_META, "not-loaded", "inbound policy not loaded");

/** What a port serves in strict mode before its first policy arrives: every request and connection refused. */
export const NOT_LOADED_POLICY: CompiledServerPolicy = policyObject({
  status: "not-loaded",
  port: undefined,
  server: NOT_LOADED_META,
  protocol: "detect",
  perRequest: true,
  detectTimeoutMs: undefined,
  invalidReason: undefined,
  routes: Object.freeze([]),
  authorizeHttp: () => notLoadedHttp,
  authorizeConnection: () => notLoadedConnection,
});
