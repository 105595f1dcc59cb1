import {
  CATCH_ALL_HTTP_SCORE,
  compareScores,
  type HttpRequestMatch,
  type MatchScore,
  type OutboundRequest,
  parseQuery,
  type QueryPairs,
  scoreHttpMatch,
} from "./http-match.js";
import type { HeaderModifier, HttpFilter } from "./outbound-policy.js";

/**
 * HTTPRoute filters that act on the request's destination or on the response (contract §1.5), as
 * linkerd2-proxy applies them (`linkerd/http/route/src/http/filter`).
 */

export type RedirectFilter = Extract<HttpFilter, { kind: "redirect" }>;

/** The request as a redirect sees it: the absolute URI linkerd2-proxy normalizes it to. */
export interface RedirectRequest {
  /** `http` for mesh traffic. */
  readonly scheme: string;
  /** The Host the application sent (`host` or `host:port`). */
  readonly authority: string;
  /** Path and query, as sent. */
  readonly pathAndQuery: string;
}

export type RedirectOutcome =
  | { readonly kind: "redirect"; readonly status: number; readonly location: string }
  /** A prefix replacement on a rule that did not match by prefix: the proxy fails the request (500). */
  | { readonly kind: "invalid"; readonly message: string };

function defaultPort(scheme: string): number | undefined {
  return scheme === "http" ? 80 : scheme === "https" ? 443 : undefined;
}

function splitAuthority(authority: string): { host: string; port: number | undefined } {
  const match = /^(\[[^\]]*\]|[^:]*)(?::(\d{1,5}))?$/.exec(authority);
  if (!match) return { host: authority, port: undefined };
  return { host: match[1] as string, port: match[2] === undefined ? undefined : Number(match[2]) };
}

function portIfNotDefault(scheme: string, port: number | undefined): number | undefined {
  return port === undefined || port === defaultPort(scheme) ? undefined : port;
}

function redirectAuthority(filter: RedirectFilter, request: RedirectRequest, scheme: string): string {
  const original = splitAuthority(request.authority);
  if (filter.host !== undefined && filter.port !== undefined) return `${filter.host}:${filter.port}`;
  if (filter.host !== undefined) {
    // Only the host: keep the request's port unless it is the scheme's default.
    const port = portIfNotDefault(scheme, original.port);
    return port === undefined ? filter.host : `${filter.host}:${port}`;
  }
  if (filter.port !== undefined) {
    const port = portIfNotDefault(scheme, filter.port);
    if (port !== undefined && port !== original.port) return `${original.host}:${port}`;
    if (port === undefined && original.port !== undefined) return original.host;
  }
  return request.authority;
}

/** Length of the prefix the rule matched by, or undefined when the best match is not a prefix match. */
function matchedPrefixLength(
  matches: readonly HttpRequestMatch[],
  request: OutboundRequest,
  path: string,
): number | undefined {
  if (matches.length === 0) return 1;
  let pairs: QueryPairs | undefined;
  const query = () => {
    pairs ??= parseQuery(request.query);
    return pairs;
  };
  let best: { match: HttpRequestMatch; score: MatchScore } | undefined;
  for (const match of matches) {
    const score = scoreHttpMatch(match, request, path, query);
    if (score && (!best || compareScores(score, best.score) > 0)) best = { match, score };
  }
  if (!best) return undefined;
  const matcher = best.match.path;
  if (!matcher) return CATCH_ALL_HTTP_SCORE[0];
  if (matcher.kind !== "prefix") return undefined;
  const trimmed = matcher.value.replace(/\/+$/, "");
  return trimmed === "" ? 1 : trimmed.length;
}

/**
 * Where a RequestRedirect filter sends this request: scheme, host and port from the filter or the
 * request, the path replaced in full or by the matched prefix (query kept). A location equal to the
 * request's own is no redirect (undefined), as in the proxy.
 */
export function applyRedirect(
  filter: RedirectFilter,
  request: RedirectRequest,
  matches: readonly HttpRequestMatch[],
  matchRequest: OutboundRequest,
): RedirectOutcome | undefined {
  const scheme = filter.scheme ?? request.scheme;
  const authority = redirectAuthority(filter, request, scheme);
  let pathAndQuery = request.pathAndQuery;
  const q = pathAndQuery.indexOf("?");
  const path = q < 0 ? pathAndQuery : pathAndQuery.slice(0, q);
  if (filter.path?.kind === "full") pathAndQuery = filter.path.value;
  else if (filter.path?.kind === "prefix") {
    const length = matchedPrefixLength(matches, matchRequest, path);
    if (length === undefined || length > path.length) {
      return {
        kind: "invalid",
        message:
          "invalid redirect: redirects may only replace the path prefix when a path prefix match applied",
      };
    }
    const rest = path.slice(length);
    let replaced = filter.path.value;
    if (rest !== "" && !rest.startsWith("/")) replaced += "/";
    replaced += rest;
    if (q >= 0) replaced += pathAndQuery.slice(q);
    pathAndQuery = replaced;
  }
  const location = `${scheme}://${authority}${pathAndQuery}`;
  if (location === `${request.scheme}://${request.authority}${request.pathAndQuery}`) return undefined;
  return { kind: "redirect", status: filter.status, location };
}

/** A response header record as undici hands it to handlers: lower-case names, repeated values as arrays. */
export type HeaderRecord = Record<string, string | string[] | undefined>;

/**
 * Applies header modifiers as the proxy does: `add` appends, `set` replaces, `remove` deletes, in that
 * order, filter after filter. Returns a new record when anything changed (the input is not mutated).
 */
export function modifyHeaderRecord(
  headers: HeaderRecord,
  modifiers: readonly HeaderModifier[],
): HeaderRecord {
  if (modifiers.length === 0) return headers;
  const result: HeaderRecord = { ...headers };
  for (const modifier of modifiers) {
    for (const [name, value] of modifier.add) {
      const existing = result[name];
      if (existing === undefined) result[name] = value;
      else result[name] = Array.isArray(existing) ? [...existing, value] : [existing, value];
    }
    for (const [name, value] of modifier.set) result[name] = value;
    for (const name of modifier.remove) delete result[name];
  }
  return result;
}
