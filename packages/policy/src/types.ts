import type { PeerIdentity } from "@inmesh/core";

/**
 * Group, kind and name of a Linkerd resource or of a default, exactly as Linkerd puts them in metric
 * labels (`srv_*`, `route_*`, `authz_*`). A default has group `""` and kind `"default"`.
 */
export interface ResourceMeta {
  readonly group: string;
  readonly kind: string;
  readonly name: string;
}

/** Labels of the server (the port's `Server` resource, or a default). */
export type ServerMeta = ResourceMeta;
/** Labels of the route that matched (an HTTPRoute/GRPCRoute, or `default`, `probe`, `invalid`). */
export type RouteMeta = ResourceMeta;
/** Labels of the authorization that admitted the call (AuthorizationPolicy, ServerAuthorization, a default). */
export type AuthzMeta = ResourceMeta;

/** The server's `proxyProtocol`. */
export type ServerProtocol = "detect" | "opaque" | "tls" | "http1" | "http2" | "grpc";

/**
 * Where a policy came from: the controller (`loaded`), a built-in default (`default`), an update that did
 * not convert (`invalid`), or nothing yet in strict mode (`not-loaded`).
 */
export type PolicyStatus = "loaded" | "default" | "invalid" | "not-loaded";

/**
 * Facts about the client of one connection, computed ONCE per connection with `clientFacts()` so that
 * per-request evaluation never parses addresses or identities.
 */
export interface ClientFacts {
  /** Client IP as matched against networks: IPv4-mapped IPv6 converted to IPv4, zone removed; "" if unparsable. */
  readonly address: string;
  /** Address family, or undefined when the address did not parse (such a client matches no network). */
  readonly family: 4 | 6 | undefined;
  readonly peer: PeerIdentity;
  /** True when mesh TLS was terminated here (with or without a client certificate). */
  readonly tlsEstablished: boolean;
  /** The verified client identity: DNS-like names lower-cased, SPIFFE URIs as presented. */
  readonly identity: string | undefined;
  readonly identityKind: "dns" | "uri" | undefined;
  /**
   * @internal The address as four 32-bit words (IPv4 uses the first word only); precomputed for the evaluator.
   */
  readonly ipWords: readonly [number, number, number, number];
  /**
   * @internal Every suffix of a DNS identity that starts at a dot (`a.b.c` → `.b.c`, `.c`); precomputed so
   * suffix authorizations are set lookups.
   */
  readonly identitySuffixes: readonly string[];
}

/** A header value as Node gives it: a string, an array for repeated headers, or undefined. */
export type HeaderValue = string | readonly string[] | undefined;

/**
 * How the evaluator reads request headers, by lower-case name: the runtime's own header object
 * (`req.headers`, `req.headersDistinct`, an HTTP/2 header object) or a lookup function (for example over
 * grpc-js Metadata). Nothing is copied. Pass `req.headersDistinct` for Linkerd's exact multi-value
 * semantics: node:http joins most repeated headers with ", ".
 */
export type HeaderLookup =
  | Readonly<Record<string, string | readonly string[] | undefined>>
  | ((name: string) => HeaderValue | null);

/** What the evaluator needs from one HTTP (or gRPC) request. Build it without copying. */
export interface HttpRequestFacts {
  /** Request method as sent, e.g. `GET` (compared case-sensitively, as HTTP does). */
  readonly method: string;
  /** `Host` header or `:authority` (may carry a port); undefined when absent. */
  readonly authority: string | undefined;
  /** Request path WITHOUT the query string, e.g. `/books/1`. */
  readonly path: string;
  /** Raw query string without the leading `?`; "" when absent. */
  readonly query: string;
  readonly headers: HeaderLookup;
  /**
   * The request's raw header list (`name, value, name, value, …`, as `req.rawHeaders`), when there is one.
   * Node joins most repeated headers into one string (`x-foo: nope` + `x-foo: bar` → `"nope, bar"`);
   * Linkerd matches each value, so a joined value is re-read from here. Only consulted by routes with
   * header matches, and only when the joined value holds a comma or does not match.
   */
  readonly rawHeaders?: readonly string[] | undefined;
  readonly client: ClientFacts;
  /** Scheme used to compute redirect locations; Linkerd normalizes inbound URIs to `http`. @default "http" */
  readonly scheme?: string;
}

/** One header to add or set; names are lower-case, values are Latin-1 strings (bytes as Node sees them). */
export interface HeaderEntry {
  readonly name: string;
  readonly value: string;
}

/** `RequestHeaderModifier`: add (append), then set (replace), then remove. */
export interface RequestHeaderModifierFilter {
  readonly kind: "request-header-modifier";
  readonly add: readonly HeaderEntry[];
  readonly set: readonly HeaderEntry[];
  readonly remove: readonly string[];
}

/** `RequestRedirect`; compute the location with `computeRedirect()`. */
export interface RedirectFilter {
  readonly kind: "redirect";
  /** Scheme override (`http`, `https`, …), or undefined to keep the request's. */
  readonly scheme: string | undefined;
  /**
   * Authority override: `exact` (host and port given), `host` (host only: a non-default request port is
   * kept), `port` (port only: default ports are dropped), or undefined to keep the request's.
   */
  readonly authority:
    | { readonly kind: "exact"; readonly value: string }
    | { readonly kind: "host"; readonly value: string }
    | { readonly kind: "port"; readonly port: number }
    | undefined;
  readonly path:
    | { readonly kind: "full"; readonly value: string }
    | { readonly kind: "prefix"; readonly value: string }
    | undefined;
  /** Response status (0 on the wire already turned into 301). */
  readonly status: number;
  /**
   * Length of the path prefix the request matched when the winning match was a path prefix (the request
   * prefix a `prefix` rewrite replaces), undefined otherwise (a prefix rewrite is then invalid: 500).
   */
  readonly matchedPrefixLength: number | undefined;
}

/** Failure injection (HTTP status or gRPC code), sampled with `shouldInjectFailure()`. */
export interface FailureInjectorFilter {
  readonly kind: "failure-injector";
  readonly protocol: "http" | "grpc";
  /** HTTP status (HTTP routes) or gRPC code (gRPC routes) the policy configured. */
  readonly status: number;
  readonly message: string;
  readonly numerator: number;
  readonly denominator: number;
}

/** A filter Linkerd does not know (an empty filter on the wire): the request fails with 500 after authorization. */
export interface InternalErrorFilter {
  readonly kind: "internal-error";
  readonly message: string;
}

export type RouteFilter =
  | RequestHeaderModifierFilter
  | RedirectFilter
  | FailureInjectorFilter
  | InternalErrorFilter;

export type HttpDenyReason = "unauthorized" | "route-not-found" | "invalid-policy" | "not-loaded";
export type ConnectionDenyReason = "unauthorized" | "invalid-policy" | "not-loaded";

/**
 * An allowed request. Returned by reference from a precomputed, frozen table: never mutate it, compare it
 * by identity if you like.
 */
export interface HttpAllowedDecision {
  readonly allowed: true;
  readonly reason: undefined;
  readonly server: ServerMeta;
  readonly route: RouteMeta;
  readonly authz: AuthzMeta;
  /** Whether the route is an HTTP route or a gRPC route (gRPC servers). */
  readonly routeKind: "http" | "grpc";
  /** Filters to apply, in order, with `applyRouteFilters()` (authorization already passed). */
  readonly filters: readonly RouteFilter[];
  /** The admitting authorization is the `audit` default: allowed, but Linkerd logs it. */
  readonly audit: boolean;
  readonly httpStatus: undefined;
  readonly grpcStatus: undefined;
  readonly message: undefined;
}

/** A refused request: answer `httpStatus` (or HTTP 200 + `grpc-status: grpcStatus` for gRPC requests). */
export interface HttpDeniedDecision {
  readonly allowed: false;
  readonly reason: HttpDenyReason;
  readonly server: ServerMeta;
  /** The route that matched (undefined when no route did). */
  readonly route: RouteMeta | undefined;
  readonly authz: undefined;
  readonly routeKind: "http" | "grpc" | undefined;
  readonly filters: readonly RouteFilter[];
  readonly audit: false;
  /** 403 (unauthorized, invalid policy, not loaded) or 404 (no route). */
  readonly httpStatus: 403 | 404;
  /** 7 PERMISSION_DENIED or 5 NOT_FOUND. */
  readonly grpcStatus: 7 | 5;
  /** Linkerd's error text, for `l5d-proxy-error` / `grpc-message` (meshed clients only). */
  readonly message: string;
}

export type HttpDecision = HttpAllowedDecision | HttpDeniedDecision;

/** Which limit refused a request, as Linkerd's `ratelimit_scope` label: overrides count as `identity`. */
export type RateLimitScope = "total" | "identity";

/**
 * An authorized request refused by the server's `HTTPLocalRateLimitPolicy`: answer 429 (gRPC 8
 * RESOURCE_EXHAUSTED). It keeps the route and authorization that admitted it (Linkerd counts the
 * authorization as an allow, then the rate limit). Shared and frozen.
 */
export interface HttpRateLimitedDecision {
  readonly allowed: false;
  readonly reason: "rate-limited";
  readonly server: ServerMeta;
  readonly route: RouteMeta;
  readonly authz: AuthzMeta;
  readonly routeKind: "http" | "grpc";
  readonly filters: readonly RouteFilter[];
  readonly audit: false;
  readonly httpStatus: 429;
  readonly grpcStatus: 8;
  /** Linkerd's error text, e.g. `total rate limit exceeded: 10rps`. */
  readonly message: string;
  readonly rateLimit: {
    /** The HTTPLocalRateLimitPolicy's labels (`ratelimit_group/kind/name`), when the controller sent them. */
    readonly meta: ResourceMeta | undefined;
    readonly scope: RateLimitScope;
    readonly rps: number;
  };
}

/**
 * The server's local rate limiter (stateful, one per compiled policy: a policy update starts afresh, as in
 * the proxy). Check it after authorization and filters, for requests about to reach the application.
 */
export interface LocalRateLimiter {
  readonly meta: ResourceMeta | undefined;
  /** Spends one request of the client's limits: undefined when admitted, else the 429 decision. */
  check(decision: HttpAllowedDecision, client: ClientFacts): HttpRateLimitedDecision | undefined;
  /** Identities whose per-identity state is held (bounded by `maxTrackedIdentities`). */
  readonly trackedIdentities: number;
}

/** Why one authorization did (`admitted`) or did not admit a caller. */
export interface AuthorizationTrial {
  readonly authz: AuthzMeta;
  /** `network`: the client address is outside its networks; `authentication`: it needs mesh TLS or a client
   * certificate the connection lacks; `identity`: the client identity is not one it names. */
  readonly verdict: "admitted" | "network" | "authentication" | "identity";
  readonly reason: string;
}

/** A decision explained for people (`inmesh explain`, debug logs). Built on demand, never per request. */
export interface PolicyExplanation {
  readonly allowed: boolean;
  readonly reason: string | undefined;
  readonly server: ServerMeta;
  readonly route: RouteMeta | undefined;
  readonly authz: AuthzMeta | undefined;
  /** The authorizations tried, in the proxy's order, up to the one that admitted the caller. */
  readonly trail: readonly AuthorizationTrial[];
  /** The whole explanation, several lines of text. */
  readonly text: string;
}

/** A connection-level decision (opaque/TLS ports, non-HTTP traffic on detect ports). */
export interface ConnectionAllowedDecision {
  readonly allowed: true;
  readonly reason: undefined;
  readonly server: ServerMeta;
  readonly route: undefined;
  readonly authz: AuthzMeta;
  readonly audit: boolean;
  readonly message: undefined;
}

/** A refused connection: close it without writing anything. */
export interface ConnectionDeniedDecision {
  readonly allowed: false;
  readonly reason: ConnectionDenyReason;
  readonly server: ServerMeta;
  readonly route: undefined;
  readonly authz: undefined;
  readonly audit: false;
  readonly message: string;
}

export type ConnectionDecision = ConnectionAllowedDecision | ConnectionDeniedDecision;

/** A port's inbound policy, compiled for allocation-free evaluation. Immutable; replaced as a whole on updates. */
export interface CompiledServerPolicy {
  readonly status: PolicyStatus;
  /** The served port this policy was compiled for (for `srv_port`-style labels), when known. */
  readonly port: number | undefined;
  readonly server: ServerMeta;
  readonly protocol: ServerProtocol;
  /**
   * True when HTTP requests are authorized one by one (`detect`, `http1`, `http2`, `grpc`). False for
   * `opaque`/`tls`: authorize the connection once with `authorizeConnection()`; `authorizeHttp()` then
   * answers `route-not-found`, as the proxy has no routes there.
   */
  readonly perRequest: boolean;
  /** Protocol-detection timeout of a `detect` server, in milliseconds. */
  readonly detectTimeoutMs: number | undefined;
  /** Why the update was refused (status `invalid`). */
  readonly invalidReason: string | undefined;
  /** Route labels in wire order (HTTP or gRPC routes, incl. synthesized `default`), for diagnostics. */
  readonly routes: readonly RouteMeta[];
  /** The server's `HTTPLocalRateLimitPolicy`, when it has one. */
  readonly rateLimit: LocalRateLimiter | undefined;
  /** Authorizes one request; pure, no I/O, no allocation; the result is shared and frozen. */
  authorizeHttp(request: HttpRequestFacts): HttpDecision;
  /** Authorizes a whole connection against the server-level authorizations. */
  authorizeConnection(client: ClientFacts): ConnectionDecision;
  /** Explains a decision `authorizeHttp` (or the rate limiter) made for this client: slow, for diagnostics. */
  explainHttp(decision: HttpDecision | HttpRateLimitedDecision, client: ClientFacts): PolicyExplanation;
  /** Explains a decision `authorizeConnection` made for this client: slow, for diagnostics. */
  explainConnection(decision: ConnectionDecision, client: ClientFacts): PolicyExplanation;
}
