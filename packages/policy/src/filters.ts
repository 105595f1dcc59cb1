import { secureRandom } from "@inmesh/core";
import type {
  FailureInjectorFilter,
  HttpRequestFacts,
  RedirectFilter,
  RequestHeaderModifierFilter,
  RouteFilter,
} from "./types.js";

/** The three header operations route filters need; a WHATWG `Headers` object satisfies it. */
export interface HeaderMutator {
  append(name: string, value: string): void;
  set(name: string, value: string): void;
  delete(name: string): void;
}

/** Linkerd's order: add (append) every entry, then set (replace), then remove. */
export function applyHeaderModifier(filter: RequestHeaderModifierFilter, headers: HeaderMutator): void {
  for (const { name, value } of filter.add) headers.append(name, value);
  for (const { name, value } of filter.set) headers.set(name, value);
  for (const name of filter.remove) headers.delete(name);
}

/**
 * A `HeaderMutator` over a Node header object (`req.headers`, lower-case keys). Appending to an existing
 * header joins with ", " as node:http does for repeated headers (`set-cookie` stays an array).
 */
export function objectHeaderMutator(headers: Record<string, string | string[] | undefined>): HeaderMutator {
  return {
    append(name, value) {
      const existing = headers[name];
      if (existing === undefined) headers[name] = name === "set-cookie" ? [value] : value;
      else if (Array.isArray(existing)) existing.push(value);
      else headers[name] = `${existing}, ${value}`;
    },
    set(name, value) {
      headers[name] = name === "set-cookie" ? [value] : value;
    },
    delete(name) {
      delete headers[name];
    },
  };
}

/** Samples a failure injector (Bernoulli numerator/denominator) from the CSPRNG. */
export function shouldInjectFailure(filter: FailureInjectorFilter): boolean {
  if (filter.numerator >= filter.denominator) return true;
  if (filter.numerator <= 0) return false;
  return secureRandom() * filter.denominator < filter.numerator;
}

export type RedirectOutcome =
  | { readonly kind: "redirect"; readonly status: number; readonly location: string }
  /** The computed location equals the request URI: Linkerd ignores the filter and the request proceeds. */
  | { readonly kind: "none" }
  /** A prefix rewrite on a non-prefix match, or no authority: Linkerd answers 500 and closes. */
  | { readonly kind: "invalid"; readonly message: string };

const NO_REDIRECT: RedirectOutcome = Object.freeze({ kind: "none" });

function portIfNotDefault(scheme: string, port: number): number | undefined {
  if (scheme === "http" && port === 80) return undefined;
  if (scheme === "https" && port === 443) return undefined;
  return port;
}

function splitAuthority(authority: string): { host: string; port: number | undefined } {
  const at = authority.lastIndexOf("@") + 1;
  let hostEnd: number;
  if (authority.charCodeAt(at) === 0x5b) {
    const close = authority.indexOf("]", at);
    hostEnd = close < 0 ? authority.length : close + 1;
  } else {
    const colon = authority.indexOf(":", at);
    hostEnd = colon < 0 ? authority.length : colon;
  }
  const portText = authority.slice(hostEnd + 1);
  const port = authority[hostEnd] === ":" && /^\d{1,5}$/.test(portText) ? Number(portText) : undefined;
  return {
    host: authority.slice(at, hostEnd),
    port: port !== undefined && port <= 0xffff ? port : undefined,
  };
}

/**
 * Computes a redirect's location from the request as linkerd2-proxy does: the scheme defaults to the
 * request's (`http`); a host-only override keeps a non-default request port; a port override drops default
 * ports; a prefix rewrite replaces the matched prefix and keeps the query.
 */
export function computeRedirect(
  filter: RedirectFilter,
  request: Pick<HttpRequestFacts, "authority" | "path" | "query" | "scheme">,
): RedirectOutcome {
  const requestScheme = (request.scheme ?? "http").toLowerCase();
  const scheme = filter.scheme ?? requestScheme;
  const original = request.authority ?? "";
  const override = filter.authority;
  let authority: string;
  if (override === undefined) {
    if (original === "") return Object.freeze({ kind: "invalid", message: "no authority to redirect to" });
    authority = original;
  } else if (override.kind === "exact") {
    authority = override.value;
  } else if (override.kind === "host") {
    const port = splitAuthority(original).port;
    const keep = port === undefined ? undefined : portIfNotDefault(scheme, port);
    authority = keep === undefined ? override.value : `${override.value}:${keep}`;
  } else {
    const { host, port: originalPort } = splitAuthority(original);
    const port = portIfNotDefault(scheme, override.port);
    if (port !== undefined && port !== originalPort) {
      if (original === "") return Object.freeze({ kind: "invalid", message: "no authority to redirect to" });
      authority = `${host}:${port}`;
    } else if (port === undefined && originalPort !== undefined) {
      authority = host;
    } else {
      if (original === "") return Object.freeze({ kind: "invalid", message: "no authority to redirect to" });
      authority = original;
    }
  }

  const path = request.path === "" ? "/" : request.path;
  const query = request.query;
  let pathAndQuery: string;
  if (filter.path === undefined) {
    pathAndQuery = query === "" ? path : `${path}?${query}`;
  } else if (filter.path.kind === "full") {
    pathAndQuery = filter.path.value;
  } else {
    const prefixLength = filter.matchedPrefixLength;
    if (prefixLength === undefined || prefixLength > path.length) {
      return Object.freeze({
        kind: "invalid",
        message: "redirects may only replace the path prefix when a path prefix match applied",
      });
    }
    const rest = path.slice(prefixLength);
    let next = filter.path.value;
    if (rest !== "" && !rest.startsWith("/")) next += "/";
    next += rest;
    if (query !== "") next += `?${query}`;
    pathAndQuery = next;
  }
  if (!pathAndQuery.startsWith("/")) {
    return Object.freeze({
      kind: "invalid",
      message: `redirect produced an invalid location path ${pathAndQuery}`,
    });
  }

  const originalPathAndQuery = query === "" ? path : `${path}?${query}`;
  if (
    scheme.toLowerCase() === requestScheme &&
    authority.toLowerCase() === original.toLowerCase() &&
    pathAndQuery === originalPathAndQuery
  ) {
    return NO_REDIRECT;
  }
  return Object.freeze({
    kind: "redirect",
    status: filter.status,
    location: `${scheme}://${authority}${pathAndQuery}`,
  });
}

export type FilterOutcome =
  /** Forward the request to the application (header modifiers, if any, have been applied). */
  | { readonly kind: "continue" }
  /** Answer with `httpStatus` (gRPC: HTTP 200 + `grpc-status: grpcStatus`) and maybe `location`. */
  | {
      readonly kind: "respond";
      readonly cause: "redirect" | "invalid-redirect" | "failure-injected" | "internal-error";
      readonly httpStatus: number;
      readonly grpcStatus: number;
      readonly location: string | undefined;
      /** Linkerd closes the connection after internal errors. */
      readonly closeConnection: boolean;
      readonly message: string;
    };

const CONTINUE: FilterOutcome = Object.freeze({ kind: "continue" });

function internalError(
  cause: "invalid-redirect" | "failure-injected" | "internal-error",
  message: string,
): FilterOutcome {
  // Linkerd's inbound rescue maps these to a generic 500 / gRPC INTERNAL and closes the connection.
  return Object.freeze({
    kind: "respond",
    cause,
    httpStatus: 500,
    grpcStatus: 13,
    location: undefined,
    closeConnection: true,
    message,
  });
}

/**
 * Runs an allowed decision's filters in rule order, as the proxy does after authorization: failure
 * injection may fail the request, a redirect may answer it, header modifiers edit `headers` in place.
 */
export function applyRouteFilters(
  filters: readonly RouteFilter[],
  request: Pick<HttpRequestFacts, "authority" | "path" | "query" | "scheme">,
  headers: HeaderMutator | undefined,
): FilterOutcome {
  for (const filter of filters) {
    switch (filter.kind) {
      case "failure-injector":
        if (shouldInjectFailure(filter)) {
          return internalError(
            "failure-injected",
            filter.protocol === "grpc"
              ? `gRPC request configured to fail with ${filter.status}: ${filter.message}`
              : `HTTP request configured to fail with ${filter.status}: ${filter.message}`,
          );
        }
        break;
      case "redirect": {
        const outcome = computeRedirect(filter, request);
        if (outcome.kind === "redirect") {
          return Object.freeze({
            kind: "respond",
            cause: "redirect",
            httpStatus: outcome.status,
            grpcStatus: 5,
            location: outcome.location,
            closeConnection: false,
            message: `request redirected to ${outcome.location}`,
          });
        }
        if (outcome.kind === "invalid")
          return internalError("invalid-redirect", `invalid redirect: ${outcome.message}`);
        break;
      }
      case "request-header-modifier":
        if (headers !== undefined) applyHeaderModifier(filter, headers);
        break;
      case "internal-error":
        return internalError("internal-error", `invalid server policy: ${filter.message}`);
    }
  }
  return CONTINUE;
}

/** True for `application/grpc` and `application/grpc+proto`-style content types: answer with grpc-status. */
export function isGrpcContentType(contentType: string | readonly string[] | undefined): boolean {
  const value = Array.isArray(contentType) ? contentType[0] : contentType;
  return typeof value === "string" && value.toLowerCase().startsWith("application/grpc");
}
