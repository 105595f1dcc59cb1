import type { grpcRoute, httpRoute, httpTypes, inbound, meta as metaPb, net } from "@inmesh/proto";
import {
  AUTHN_TLS_AUTHENTICATED,
  AUTHN_TLS_UNAUTHENTICATED,
  AUTHN_UNAUTHENTICATED,
  type AuthnKind,
  type IrAuthz,
  type IrGrpcMatch,
  type IrHeaderMatch,
  type IrHost,
  type IrHttpMatch,
  type IrNetwork,
  type IrPath,
  type IrQueryMatch,
  type IrRoute,
  type IrRule,
  type IrServer,
  PATH_EXACT,
  PATH_PREFIX,
  PATH_REGEX,
} from "./ir.js";
import { DEFAULT_ROUTE_META, defaultMeta, isAuditMeta, LOCALHOST_META, resourceMeta } from "./meta.js";
import type { IrRateLimit } from "./rate-limit.js";
import { compileRustRegex, isRustRegexCached, type RustRegex } from "./regex.js";
import type { HeaderEntry, ResourceMeta, RouteFilter, ServerProtocol } from "./types.js";
import { indexedList, utf8Length } from "./util.js";

/**
 * Converts an `inbound.Server` the way linkerd2-proxy does (`ServerPolicy::try_from`): server
 * authorizations plus the implicit `localhost` one, route authorizations extended by the server's, a
 * synthesized catch-all `default` route when a protocol with routes has none. Anything the proxy refuses
 * to decode raises `InvalidServerError`; the caller turns it into the invalid policy.
 */

const INVALID_SERVER = Symbol("InvalidServer");

/** Thrown inside the compiler only; never escapes `compileServerPolicy`. */
export interface InvalidServerError extends Error {
  readonly [INVALID_SERVER]: true;
}

function invalid(reason: string): never {
  const error = new Error(reason) as Error & { [INVALID_SERVER]?: true };
  error[INVALID_SERVER] = true;
  throw error;
}

export function isInvalidServerError(error: unknown): error is InvalidServerError {
  return error instanceof Error && (error as Partial<InvalidServerError>)[INVALID_SERVER] === true;
}

const U32 = 0xffffffffn;

export function dotCounts(suffixes: ReadonlySet<string> | undefined): readonly number[] {
  const counts = new Set<number>();
  for (const suffix of suffixes ?? []) counts.add(suffix.split(".").length - 1);
  return indexedList([...counts].sort((a, b) => a - b));
}

export function localhostAuthz(): IrAuthz {
  return Object.freeze({
    meta: LOCALHOST_META,
    networks: indexedList([network(4, [0x7f000001, 0, 0, 0], 32, []), network(6, [0, 0, 0, 1], 128, [])]),
    authn: AUTHN_UNAUTHENTICATED,
    identities: undefined,
    suffixes: undefined,
    suffixDots: indexedList([]),
    anyDnsIdentity: false,
    audit: false,
  });
}

/** Builds a network from address words and a prefix length, masking the host bits. */
export function network(
  family: 4 | 6,
  words: readonly [number, number, number, number],
  prefixLength: number,
  except: readonly IrNetwork[],
): IrNetwork {
  const masks = [0, 0, 0, 0];
  for (let i = 0; i < (family === 4 ? 1 : 4); i += 1) {
    const bits = Math.max(0, Math.min(32, prefixLength - 32 * i));
    masks[i] = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
  }
  const [m0 = 0, m1 = 0, m2 = 0, m3 = 0] = masks;
  return Object.freeze({
    family,
    w0: (words[0] & m0) >>> 0,
    w1: (words[1] & m1) >>> 0,
    w2: (words[2] & m2) >>> 0,
    w3: (words[3] & m3) >>> 0,
    m0,
    m1,
    m2,
    m3,
    except: indexedList([...except]),
  });
}

function convertNetwork(pb: net.IPNetwork | undefined, what: string): IrNetwork {
  if (pb === undefined) invalid(`${what}: missing network`);
  const ip = pb.ip?.ip;
  if (ip === undefined) invalid(`${what}: invalid IP address`);
  const prefixLength = pb.prefixLen;
  if (!Number.isInteger(prefixLength) || prefixLength < 0 || prefixLength > 255) {
    invalid(`${what}: invalid network prefix length ${prefixLength}`);
  }
  if (ip.$case === "ipv4") {
    if (prefixLength > 32) invalid(`${what}: invalid network prefix length ${prefixLength}`);
    return network(4, [Number(ip.value) >>> 0, 0, 0, 0], prefixLength, []);
  }
  const v6 = ip.value as net.IPv6 | undefined;
  if (v6 == null) invalid(`${what}: invalid IP address`);
  if (prefixLength > 128) invalid(`${what}: invalid network prefix length ${prefixLength}`);
  const first = BigInt.asUintN(64, BigInt(v6.first));
  const last = BigInt.asUintN(64, BigInt(v6.last));
  return network(
    6,
    [Number(first >> 32n), Number(first & U32), Number(last >> 32n), Number(last & U32)],
    prefixLength,
    [],
  );
}

function convertAuthz(pb: inbound.Authz, what: string): IrAuthz {
  if (pb.networks.length === 0) invalid(`${what}: missing networks`);
  const networks = pb.networks.map((n, i) => {
    const base = convertNetwork(n.net, `${what}: network ${i}`);
    const except = n.except.map((e, j) => convertNetwork(e, `${what}: network ${i} except ${j}`));
    return except.length === 0 ? base : Object.freeze({ ...base, except: indexedList(except) });
  });

  const permit = pb.authentication?.permit;
  if (permit === undefined) invalid(`${what}: missing authentications`);
  let authn: AuthnKind = AUTHN_UNAUTHENTICATED;
  let identities: Set<string> | undefined;
  let suffixes: Set<string> | undefined;
  let anyDnsIdentity = false;
  if (permit.$case === "meshTLS") {
    const clients = permit.value?.clients;
    if (clients === undefined) invalid(`${what}: missing authentications`);
    if (clients.$case === "unauthenticated") {
      authn = AUTHN_TLS_UNAUTHENTICATED;
    } else {
      authn = AUTHN_TLS_AUTHENTICATED;
      identities = new Set(clients.value.identities.map((identity) => identity.name));
      suffixes = new Set();
      for (const suffix of clients.value.suffixes) {
        // The proxy's suffix is `ends_with("." + parts.join("."))`, and `ends_with("")` for no parts.
        if (suffix.parts.length === 0) anyDnsIdentity = true;
        else suffixes.add(`.${suffix.parts.join(".")}`);
      }
    }
  } else if (permit.$case !== "unauthenticated") {
    invalid(`${what}: missing authentications`);
  }

  const meta =
    pb.metadata !== undefined
      ? convertMetadata(pb.metadata, what)
      : metaFromLabels(pb.labels, "policy.linkerd.io", "serverauthorization", what);
  return Object.freeze({
    meta,
    networks: indexedList(networks),
    authn,
    identities: identities !== undefined && identities.size > 0 ? identities : undefined,
    suffixes: suffixes !== undefined && suffixes.size > 0 ? suffixes : undefined,
    suffixDots: dotCounts(suffixes),
    anyDnsIdentity,
    audit: isAuditMeta(meta),
  });
}

function convertMetadata(pb: metaPb.Metadata | undefined, what: string): ResourceMeta {
  const kind = pb?.kind;
  if (kind === undefined) invalid(`${what}: missing metadata`);
  if (kind.$case === "default") return defaultMeta(String(kind.value));
  const resource = kind.value;
  return resourceMeta(resource?.group ?? "", resource?.kind ?? "", resource?.name ?? "");
}

/** Labels as pre-2.12 controllers sent them (and still do for servers). */
export function metaFromLabels(
  labels: Readonly<Record<string, string>> | undefined,
  defaultGroup: string,
  defaultKind: string,
  what: string,
): ResourceMeta {
  const get = (key: string): string | undefined =>
    labels !== undefined && Object.hasOwn(labels, key) ? labels[key] : undefined;
  const name = get("name");
  if (name === undefined) invalid(`${what}: missing 'name' label`);
  const group = get("group") ?? defaultGroup;
  const kind = get("kind");
  if (kind !== undefined) {
    if (group === "" && kind === "default") return defaultMeta(name);
    return resourceMeta(group, kind, name);
  }
  // Old controllers encode the kind in the name: `default:deny`, `kind:name`.
  const colon = name.indexOf(":");
  if (colon < 0) return resourceMeta(group, defaultKind, name);
  const head = name.slice(0, colon);
  const rest = name.slice(colon + 1);
  if (head === "default") return defaultMeta(rest);
  return resourceMeta(group, head, rest);
}

/**
 * A host score is kind (1 suffix, 2 exact) × this unit + the matched length. The unit keeps every score a
 * small integer (below 2^30) so it is never boxed on the evaluator's hot path; a control-plane message is
 * capped far below 2^28 bytes, so lengths cannot reach it.
 */
const HOST_KIND_UNIT = 2 ** 28;

function convertHost(pb: httpRoute.HostMatch, what: string): IrHost {
  const match = pb.match;
  if (match === undefined) invalid(`${what}: host match must contain a match`);
  if (match.$case === "exact") {
    const value = String(match.value);
    return Object.freeze({
      exact: true,
      value,
      patternEndsWithDot: value.endsWith("."),
      labels: indexedList([]),
      score: 2 * HOST_KIND_UNIT + utf8Length(value),
    });
  }
  const labels = (match.value?.reverseLabels ?? []).map(String);
  let length = 0;
  for (const label of labels) length += utf8Length(label) + 1;
  return Object.freeze({
    exact: false,
    value: "",
    patternEndsWithDot: false,
    labels: indexedList(labels),
    score: HOST_KIND_UNIT + length,
  });
}

// RFC 9110 token characters, which is what the `http` crate accepts in header names and methods.
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

function headerName(name: string, what: string): string {
  if (!TOKEN.test(name) || name.length > 0xffff)
    invalid(`${what}: invalid header name ${JSON.stringify(name)}`);
  return name.toLowerCase();
}

/** Header value bytes must be visible or obs-text, or tab: what the `http` crate accepts. */
function headerValue(bytes: Uint8Array | string, what: string): string {
  const buffer = typeof bytes === "string" ? Buffer.from(bytes, "utf8") : Buffer.from(bytes);
  for (const byte of buffer) {
    if ((byte < 0x20 && byte !== 0x09) || byte === 0x7f) invalid(`${what}: invalid header value`);
  }
  return buffer.toString("latin1");
}

function regex(pattern: string, what: string): RustRegex {
  const compiled = compileRustRegex(pattern);
  if (typeof compiled === "string") invalid(`${what}: ${compiled}`);
  return compiled;
}

function convertHeaderMatch(pb: httpRoute.HeaderMatch, what: string): IrHeaderMatch {
  const name = headerName(String(pb.name), what);
  const value = pb.value;
  if (value === undefined) invalid(`${what}: missing a header value match`);
  if (value.$case === "exact") {
    return Object.freeze({
      name,
      exact: headerValue(value.value ?? new Uint8Array(), what),
      regex: undefined,
    });
  }
  return Object.freeze({ name, exact: undefined, regex: regex(String(value.value), what) });
}

function convertQueryMatch(pb: httpRoute.QueryParamMatch, what: string): IrQueryMatch {
  const name = String(pb.name);
  if (name === "") invalid(`${what}: missing a query param name`);
  const value = pb.value;
  if (value === undefined) invalid(`${what}: missing a query param value`);
  if (value.$case === "exact") return Object.freeze({ name, exact: String(value.value), regex: undefined });
  return Object.freeze({ name, exact: undefined, regex: regex(String(value.value), what) });
}

const REGISTERED_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "HEAD", "TRACE"];

function convertMethod(pb: httpTypes.HttpMethod, what: string): string {
  const type = pb.type;
  if (type === undefined) invalid(`${what}: invalid HTTP method`);
  if (type.$case === "registered") {
    const method = REGISTERED_METHODS[type.value as number];
    if (method === undefined) invalid(`${what}: invalid HTTP method`);
    return method;
  }
  const method = String(type.value);
  if (!TOKEN.test(method)) invalid(`${what}: invalid HTTP method`);
  return method;
}

function convertPath(pb: httpRoute.PathMatch, what: string): IrPath {
  const kind = pb.kind;
  if (kind === undefined) invalid(`${what}: missing path match`);
  const value = String(kind.value);
  if (kind.$case === "exact") {
    return Object.freeze({
      kind: PATH_EXACT,
      value,
      trimmed: value,
      root: false,
      regex: undefined,
      score: utf8Length(value),
    });
  }
  if (kind.$case === "prefix") {
    const root = value === "/";
    const trimmed = root ? "/" : value.replace(/\/+$/, "");
    return Object.freeze({
      kind: PATH_PREFIX,
      value,
      trimmed,
      root,
      regex: undefined,
      score: root ? 1 : utf8Length(trimmed),
    });
  }
  return Object.freeze({
    kind: PATH_REGEX,
    value,
    trimmed: value,
    root: false,
    regex: regex(value, what),
    score: 0,
  });
}

function convertHttpMatch(pb: httpRoute.HttpRouteMatch, what: string): IrHttpMatch {
  const path = pb.path === undefined ? undefined : convertPath(pb.path, what);
  const headers = pb.headers.map((h, i) => convertHeaderMatch(h, `${what}: header ${i}`));
  const query = pb.queryParams.map((q, i) => convertQueryMatch(q, `${what}: query param ${i}`));
  const method = pb.method === undefined ? undefined : convertMethod(pb.method, what);
  let prefixLength: number | undefined;
  if (path === undefined) prefixLength = 1;
  else if (path.kind === PATH_PREFIX) prefixLength = path.root ? 1 : path.trimmed.length;
  return Object.freeze({
    method,
    path,
    headers: indexedList(headers),
    query: indexedList(query),
    prefixLength,
  });
}

function convertGrpcMatch(pb: grpcRoute.GrpcRouteMatch, what: string): IrGrpcMatch {
  const service = pb.rpc?.service ? String(pb.rpc.service) : undefined;
  const method = pb.rpc?.method ? String(pb.rpc.method) : undefined;
  return Object.freeze({
    service,
    method,
    serviceScore: service === undefined ? 0 : utf8Length(service),
    methodScore: method === undefined ? 0 : utf8Length(method),
    headers: Object.freeze(pb.headers.map((h, i) => convertHeaderMatch(h, `${what}: header ${i}`))),
  });
}

function convertHeaders(pb: httpTypes.Headers | undefined, what: string): readonly HeaderEntry[] {
  return Object.freeze(
    (pb?.headers ?? []).map((h) =>
      Object.freeze({
        name: headerName(String(h.name), what),
        value: headerValue(h.value ?? new Uint8Array(), what),
      }),
    ),
  );
}

function convertHeaderModifier(pb: httpRoute.RequestHeaderModifier, what: string): RouteFilter {
  return Object.freeze({
    kind: "request-header-modifier",
    add: convertHeaders(pb.add, `${what}: add`),
    set: convertHeaders(pb.set, `${what}: set`),
    remove: Object.freeze(pb.remove.map((name) => headerName(String(name), `${what}: remove`))),
  });
}

function convertRatio(
  pb: httpRoute.Ratio | undefined,
  what: string,
): { numerator: number; denominator: number } {
  if (pb === undefined) return { numerator: 1, denominator: 1 };
  if (pb.denominator === 0 || pb.numerator > pb.denominator) {
    invalid(`${what}: invalid request distribution ${pb.numerator}/${pb.denominator}`);
  }
  return { numerator: pb.numerator, denominator: pb.denominator };
}

function convertHttpFailureInjector(pb: httpRoute.HttpFailureInjector, what: string): RouteFilter {
  if (!(pb.status >= 100 && pb.status <= 999)) invalid(`${what}: invalid HTTP status code ${pb.status}`);
  return Object.freeze({
    kind: "failure-injector",
    protocol: "http",
    status: pb.status,
    message: String(pb.message),
    ...convertRatio(pb.ratio, what),
  });
}

function convertGrpcFailureInjector(pb: grpcRoute.GrpcFailureInjector, what: string): RouteFilter {
  if (!(pb.code >= 0 && pb.code <= 0xffff)) invalid(`${what}: invalid gRPC status code ${pb.code}`);
  return Object.freeze({
    kind: "failure-injector",
    protocol: "grpc",
    status: pb.code,
    message: String(pb.message),
    ...convertRatio(pb.ratio, what),
  });
}

const SCHEME = /^[A-Za-z0-9+\-.]{1,64}$/;

function convertScheme(pb: httpTypes.Scheme, what: string): string {
  const type = pb.type;
  if (type === undefined) invalid(`${what}: scheme must have a type`);
  if (type.$case === "registered") {
    if (type.value === 0) return "http";
    if (type.value === 1) return "https";
    invalid(`${what}: unexpected registered scheme ${type.value}`);
  }
  const scheme = String(type.value);
  if (!SCHEME.test(scheme)) invalid(`${what}: invalid scheme ${JSON.stringify(scheme)}`);
  return scheme;
}

const AUTHORITY_CHARS = /^[A-Za-z0-9\-._~!$&'()*+,;=:@[\]%]+$/;

/** Roughly what `http::uri::Authority` accepts: URI characters, one userinfo, a bracketed IPv6 host, a numeric port. */
function authority(text: string, what: string): string {
  const fail = () => invalid(`${what}: invalid HTTP authority ${JSON.stringify(text)}`);
  if (!AUTHORITY_CHARS.test(text)) fail();
  const at = text.lastIndexOf("@");
  if (text.indexOf("@") !== at) fail();
  const hostPort = text.slice(at + 1);
  let port: string | undefined;
  if (hostPort.startsWith("[")) {
    const close = hostPort.indexOf("]");
    if (close < 0) fail();
    const after = hostPort.slice(close + 1);
    if (after !== "") {
      if (!after.startsWith(":")) fail();
      port = after.slice(1);
    }
  } else {
    if (hostPort.includes("[") || hostPort.includes("]")) fail();
    const colons = hostPort.split(":").length - 1;
    if (colons > 1) fail();
    if (colons === 1) port = hostPort.slice(hostPort.indexOf(":") + 1);
  }
  if (port !== undefined && !/^\d*$/.test(port)) fail();
  return text;
}

function convertRedirect(pb: httpRoute.RequestRedirect, what: string): RouteFilter {
  const scheme = pb.scheme === undefined ? undefined : convertScheme(pb.scheme, what);
  if (!(pb.port >= 0 && pb.port <= 0xffff)) invalid(`${what}: port number must be a u16: ${pb.port}`);
  const host = String(pb.host);
  let authorityOverride:
    | { kind: "exact"; value: string }
    | { kind: "host"; value: string }
    | { kind: "port"; port: number }
    | undefined;
  if (host === "") authorityOverride = pb.port === 0 ? undefined : { kind: "port", port: pb.port };
  else if (pb.port !== 0) authorityOverride = { kind: "exact", value: authority(`${host}:${pb.port}`, what) };
  else authorityOverride = { kind: "host", value: authority(host, what) };

  let path: { kind: "full"; value: string } | { kind: "prefix"; value: string } | undefined;
  const replace = pb.path?.replace;
  if (replace?.$case === "full") {
    if (!String(replace.value).startsWith("/")) invalid(`${what}: redirect paths must be absolute`);
    path = { kind: "full", value: String(replace.value) };
  } else if (replace?.$case === "prefix") {
    // Deviation, on purpose: the proxy's decoder refuses prefixes that DO start with "/" (an inverted
    // check), which would turn every Gateway-API prefix redirect into an invalid server.
    path = { kind: "prefix", value: String(replace.value) };
  }

  if (!(pb.status >= 0 && pb.status <= 0xffff))
    invalid(`${what}: HTTP status code must be a u16: ${pb.status}`);
  if (pb.status !== 0 && !(pb.status >= 100 && pb.status <= 999)) {
    invalid(`${what}: invalid HTTP status code ${pb.status}`);
  }
  return Object.freeze({
    kind: "redirect",
    scheme,
    authority: authorityOverride === undefined ? undefined : Object.freeze(authorityOverride),
    path: path === undefined ? undefined : Object.freeze(path),
    status: pb.status === 0 ? 301 : pb.status,
    matchedPrefixLength: undefined,
  });
}

const UNKNOWN_FILTER: RouteFilter = Object.freeze({
  kind: "internal-error",
  message: "server policy configured with unknown filter",
});

function convertHttpFilter(pb: inbound.HttpRoute_Filter, what: string): RouteFilter {
  const kind = pb.kind;
  if (kind === undefined) return UNKNOWN_FILTER;
  if (kind.$case === "requestHeaderModifier") return convertHeaderModifier(kind.value, what);
  if (kind.$case === "redirect") return convertRedirect(kind.value, what);
  return convertHttpFailureInjector(kind.value, what);
}

function convertGrpcFilter(pb: inbound.GrpcRoute_Filter, what: string): RouteFilter {
  const kind = pb.kind;
  if (kind === undefined) return UNKNOWN_FILTER;
  if (kind.$case === "requestHeaderModifier") return convertHeaderModifier(kind.value, what);
  return convertGrpcFailureInjector(kind.value, what);
}

function convertRouteCommon(
  pb: inbound.HttpRoute | inbound.GrpcRoute,
  serverAuthorizations: readonly IrAuthz[],
  what: string,
): { meta: ResourceMeta; hosts: readonly IrHost[]; authorizations: readonly IrAuthz[] } {
  const hosts = pb.hosts.map((h, i) => convertHost(h, `${what}: host ${i}`));
  const routeAuthz = pb.authorizations.map((a, i) => convertAuthz(a, `${what}: authorization ${i}`));
  if (pb.metadata === undefined) invalid(`${what}: missing metadata`);
  const meta = convertMetadata(pb.metadata, what);
  return {
    meta,
    hosts: indexedList(hosts),
    authorizations: indexedList([...routeAuthz, ...serverAuthorizations]),
  };
}

function convertHttpRoute(
  pb: inbound.HttpRoute,
  serverAuthorizations: readonly IrAuthz[],
  what: string,
): IrRoute<IrHttpMatch> {
  const common = convertRouteCommon(pb, serverAuthorizations, what);
  const rules = pb.rules.map(
    (rule, i): IrRule<IrHttpMatch> =>
      Object.freeze({
        matches: Object.freeze(
          rule.matches.map((m, j) => convertHttpMatch(m, `${what}: rule ${i} match ${j}`)),
        ),
        filters: Object.freeze(
          rule.filters.map((f, j) => convertHttpFilter(f, `${what}: rule ${i} filter ${j}`)),
        ),
      }),
  );
  return Object.freeze({ ...common, rules: Object.freeze(rules) });
}

function convertGrpcRoute(
  pb: inbound.GrpcRoute,
  serverAuthorizations: readonly IrAuthz[],
  what: string,
): IrRoute<IrGrpcMatch> {
  const common = convertRouteCommon(pb, serverAuthorizations, what);
  const rules = pb.rules.map(
    (rule, i): IrRule<IrGrpcMatch> =>
      Object.freeze({
        matches: Object.freeze(
          rule.matches.map((m, j) => convertGrpcMatch(m, `${what}: rule ${i} match ${j}`)),
        ),
        filters: Object.freeze(
          rule.filters.map((f, j) => convertGrpcFilter(f, `${what}: rule ${i} filter ${j}`)),
        ),
      }),
  );
  return Object.freeze({ ...common, rules: Object.freeze(rules) });
}

/** The catch-all route the proxy synthesizes when a controller sends a protocol with no routes. */
export function defaultRoute<TMatch>(authorizations: readonly IrAuthz[]): IrRoute<TMatch> {
  return Object.freeze({
    meta: DEFAULT_ROUTE_META,
    hosts: indexedList([]),
    authorizations,
    rules: Object.freeze([Object.freeze({ matches: Object.freeze([]), filters: Object.freeze([]) })]),
  });
}

function durationMs(pb: { seconds: bigint; nanos: number } | undefined): number {
  if (pb === undefined) invalid("missing protocol detection timeout");
  const totalNanos = BigInt(pb.seconds) * 1_000_000_000n + BigInt(Math.trunc(Number(pb.nanos)));
  if (totalNanos < 0n) invalid("invalid protocol detection timeout: negative duration");
  return Number(totalNanos) / 1_000_000;
}

function convertRateLimit(pb: inbound.HttpLocalRateLimit | undefined): IrRateLimit | undefined {
  if (pb === undefined) return undefined;
  const rps = (l: { requestsPerSecond: number } | undefined) => {
    const value = Number(l?.requestsPerSecond ?? 0);
    return Number.isInteger(value) && value > 0 ? Math.min(value, 0xffffffff) : 0;
  };
  const overrides = pb.overrides
    .map((o) => ({
      rps: rps(o.limit),
      // The proxy parses each name as an identity: DNS-like names lower-cased, URIs as they are.
      identities: Object.freeze(
        (o.clients?.identities ?? [])
          .map((id) => String(id.name))
          .filter((name) => name !== "")
          .map((name) => (name.includes("://") ? name : name.toLowerCase())),
      ),
    }))
    .filter((o) => o.rps > 0 && o.identities.length > 0);
  const ir: IrRateLimit = Object.freeze({
    meta: pb.metadata === undefined ? undefined : convertMetadata(pb.metadata, "local rate limit"),
    totalRps: rps(pb.total),
    identityRps: rps(pb.identity),
    overrides: Object.freeze(overrides),
  });
  return ir.totalRps === 0 && ir.identityRps === 0 && ir.overrides.length === 0 ? undefined : ir;
}

/** Converts the proto or throws InvalidServerError (see isInvalidServerError). */
/**
 * Caps on what one `inbound.Server` may hold. Linkerd has none, but its controller is trusted more than
 * peers, not blindly: a 3 MB policy with 14,000 regex routes stalled the event loop for 1.5 s. Gateway API
 * itself caps a route at 16 rules of 64 matches each; the caps sit well above that.
 */
export const POLICY_LIMITS = Object.freeze({
  maxAuthorizations: 1024,
  maxRoutes: 1024,
  maxRulesPerRoute: 256,
  maxMatchesPerRule: 64,
  maxHeaderMatchesPerMatch: 64,
  maxQueryMatchesPerMatch: 64,
  /** Matches of all routes together, and the regexes among them (one compiled matcher each). */
  maxMatches: 16_384,
  maxRegexes: 1024,
});

/**
 * Why a server message exceeds `POLICY_LIMITS`, or undefined. Counts only (no conversion), so a refused
 * message costs one pass over its routes. Truncating is not safe for policy (a dropped route changes
 * which route, and so which authorization, a request gets), so an over-cap message is refused whole.
 */
export function serverOverLimits(pb: inbound.Server): string | undefined {
  const limits = POLICY_LIMITS;
  if (pb.authorizations.length > limits.maxAuthorizations)
    return `${pb.authorizations.length} authorizations (limit ${limits.maxAuthorizations})`;
  const value = pb.protocol?.kind?.value as
    | {
        routes?: readonly (inbound.HttpRoute | inbound.GrpcRoute)[];
        httpRoutes?: readonly inbound.HttpRoute[];
      }
    | undefined;
  const routes = value?.routes ?? value?.httpRoutes ?? [];
  if (routes.length > limits.maxRoutes) return `${routes.length} routes (limit ${limits.maxRoutes})`;
  let matches = 0;
  let regexes = 0;
  for (const route of routes) {
    if (route.rules.length > limits.maxRulesPerRoute)
      return `a route with ${route.rules.length} rules (limit ${limits.maxRulesPerRoute})`;
    for (const rule of route.rules) {
      if (rule.matches.length > limits.maxMatchesPerRule)
        return `a rule with ${rule.matches.length} matches (limit ${limits.maxMatchesPerRule})`;
      for (const match of rule.matches) {
        matches += 1;
        const headers = match.headers ?? [];
        if (headers.length > limits.maxHeaderMatchesPerMatch)
          return `a match with ${headers.length} header matches (limit ${limits.maxHeaderMatchesPerMatch})`;
        for (const header of headers) if (header.value?.$case === "regex") regexes += 1;
        if ("path" in match && match.path?.kind?.$case === "regex") regexes += 1;
        if ("queryParams" in match) {
          if (match.queryParams.length > limits.maxQueryMatchesPerMatch)
            return `a match with ${match.queryParams.length} query matches (limit ${limits.maxQueryMatchesPerMatch})`;
          for (const query of match.queryParams) if (query.value?.$case === "regex") regexes += 1;
        }
      }
    }
  }
  if (matches > limits.maxMatches) return `${matches} route matches (limit ${limits.maxMatches})`;
  if (regexes > limits.maxRegexes) return `${regexes} regex matches (limit ${limits.maxRegexes})`;
  return undefined;
}

/** The regex patterns of a server's routes not compiled yet (each once), in order. */
export function uncompiledRegexes(pb: inbound.Server): string[] {
  const value = pb.protocol?.kind?.value as
    | {
        routes?: readonly (inbound.HttpRoute | inbound.GrpcRoute)[];
        httpRoutes?: readonly inbound.HttpRoute[];
      }
    | undefined;
  const patterns = new Set<string>();
  const add = (pattern: string) => {
    if (!isRustRegexCached(pattern)) patterns.add(pattern);
  };
  for (const route of value?.routes ?? value?.httpRoutes ?? []) {
    for (const rule of route.rules) {
      for (const match of rule.matches) {
        for (const header of match.headers ?? [])
          if (header.value?.$case === "regex") add(header.value.value);
        if ("path" in match && match.path?.kind?.$case === "regex") add(match.path.kind.value);
        if ("queryParams" in match)
          for (const query of match.queryParams) if (query.value?.$case === "regex") add(query.value.value);
      }
    }
  }
  return [...patterns];
}

export function convertServer(pb: inbound.Server): IrServer {
  const kind = pb.protocol?.kind;
  if (kind === undefined) invalid("missing proxy protocol");
  const over = serverOverLimits(pb);
  if (over !== undefined) invalid(`policy too large: ${over}`);
  const serverAuthorizations = indexedList([
    ...pb.authorizations.map((a, i) => convertAuthz(a, `authorization ${i}`)),
    localhostAuthz(),
  ]);

  let protocol: ServerProtocol = kind.$case;
  let detectTimeoutMs: number | undefined;
  let httpRoutes: readonly IrRoute<IrHttpMatch>[] = [];
  let grpcRoutes: readonly IrRoute<IrGrpcMatch>[] = [];
  let rateLimit: IrRateLimit | undefined;
  const http = (routes: readonly inbound.HttpRoute[]) =>
    routes.length === 0
      ? [defaultRoute<IrHttpMatch>(serverAuthorizations)]
      : routes.map((r, i) => convertHttpRoute(r, serverAuthorizations, `HTTP route ${i}`));
  switch (kind.$case) {
    case "detect":
      httpRoutes = http(kind.value?.httpRoutes ?? []);
      detectTimeoutMs = durationMs(kind.value?.timeout);
      rateLimit = convertRateLimit(kind.value?.httpLocalRateLimit);
      break;
    case "http1":
    case "http2":
      httpRoutes = http(kind.value?.routes ?? []);
      rateLimit = convertRateLimit(kind.value?.localRateLimit);
      break;
    case "grpc": {
      const routes = kind.value?.routes ?? [];
      grpcRoutes =
        routes.length === 0
          ? [defaultRoute<IrGrpcMatch>(serverAuthorizations)]
          : routes.map((r, i) => convertGrpcRoute(r, serverAuthorizations, `gRPC route ${i}`));
      break;
    }
    case "opaque":
    case "tls":
      break;
    default:
      protocol = "detect";
      invalid("missing proxy protocol");
  }
  const meta = metaFromLabels(pb.labels, "policy.linkerd.io", "server", "server labels");
  return Object.freeze({
    status: "loaded",
    meta,
    protocol,
    detectTimeoutMs,
    connectionAuthorizations: serverAuthorizations,
    httpRoutes: Object.freeze(httpRoutes),
    grpcRoutes: Object.freeze(grpcRoutes),
    rateLimit,
  });
}
