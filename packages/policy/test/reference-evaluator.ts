/**
 * A deliberately plain reference evaluator, written straight from policy-semantics.md §8 with no
 * precompilation: it walks the proto on every call, uses bigint CIDR arithmetic, URLSearchParams, regex
 * `exec`, and tuple scores. The property tests compare the compiled evaluator against it.
 */
import { cidrContains, parseCidr, parseIpAddress, translateRustRegex } from "@inmesh/core";
import { type inbound, ipNetworkToString, type meta } from "@inmesh/proto";
import { RE2JS } from "re2js";

export interface RefMeta {
  group: string;
  kind: string;
  name: string;
}

export interface RefClient {
  address: string;
  tls: "none" | "established";
  /** Client certificate identity, when TLS carried one. */
  identity?: string;
}

export interface RefRequest {
  method: string;
  authority?: string;
  path: string;
  query: string;
  headers: Record<string, string | string[]>;
  client: RefClient;
}

export type RefResult =
  | { allowed: true; route?: RefMeta; authz: RefMeta; filterKinds: string[] }
  | { allowed: false; reason: "unauthorized" | "route-not-found" | "invalid-policy"; route?: RefMeta };

class Invalid extends Error {}

const fail = (why: string): never => {
  throw new Invalid(why);
};

// ----- metadata --------------------------------------------------------------------------------

function defaultMeta(name: string): RefMeta {
  return { group: "", kind: "default", name };
}

function metaOf(m: meta.Metadata | undefined): RefMeta {
  if (!m?.kind) return fail("metadata");
  if (m.kind.$case === "default") return defaultMeta(m.kind.value);
  return { group: m.kind.value.group, kind: m.kind.value.kind, name: m.kind.value.name };
}

function metaOfLabels(labels: Record<string, string>, group0: string, kind0: string): RefMeta {
  if (!Object.hasOwn(labels, "name")) return fail("labels");
  const name = labels.name as string;
  const group = Object.hasOwn(labels, "group") ? (labels.group as string) : group0;
  if (Object.hasOwn(labels, "kind")) {
    const kind = labels.kind as string;
    return group === "" && kind === "default" ? defaultMeta(name) : { group, kind, name };
  }
  const [head, ...rest] = name.split(":");
  if (rest.length === 0) return { group, kind: kind0, name };
  if (head === "default") return defaultMeta(rest.join(":"));
  return { group, kind: head as string, name: rest.join(":") };
}

// ----- authorizations ---------------------------------------------------------------------------

function parseNet(n: Parameters<typeof ipNetworkToString>[0]) {
  if (!n?.ip?.ip) return fail("net");
  const max = n.ip.ip.$case === "ipv4" ? 32 : 128;
  if (n.prefixLen > max) return fail("prefix");
  const text = ipNetworkToString(n);
  if (text === undefined) return fail("net");
  return parseCidr(text);
}

function clientIp(address: string): { family: 4 | 6; value: bigint } | undefined {
  const ip = parseIpAddress(address);
  if (ip && ip.family === 6 && ip.value >> 32n === 0xffffn)
    return { family: 4, value: ip.value & 0xffffffffn };
  return ip;
}

function checkAuthz(a: inbound.Authz): RefMeta {
  if (a.networks.length === 0) fail("no networks");
  for (const n of a.networks) {
    parseNet(n.net);
    for (const e of n.except) parseNet(e);
  }
  const permit = a.authentication?.permit;
  if (!permit) fail("no authentication");
  if (permit?.$case === "meshTLS" && !permit.value.clients) fail("no clients");
  return a.metadata ? metaOf(a.metadata) : metaOfLabels(a.labels, "policy.linkerd.io", "serverauthorization");
}

function authzMatches(a: inbound.Authz, client: RefClient): boolean {
  const ip = clientIp(client.address);
  if (!ip) return false;
  const inNetworks = a.networks.some((n) => {
    const net = parseNet(n.net);
    if (!cidrContains(net, ip.family, ip.value)) return false;
    return !n.except.some((e) => cidrContains(parseNet(e), ip.family, ip.value));
  });
  if (!inNetworks) return false;
  const permit = a.authentication?.permit;
  if (permit?.$case === "unauthenticated") return true;
  if (permit?.$case !== "meshTLS") return false;
  if (client.tls !== "established") return false;
  const clients = permit.value.clients;
  if (clients?.$case === "unauthenticated") return true;
  if (clients?.$case !== "identities") return false;
  if (client.identity === undefined || client.identity === "") return false;
  const uri = client.identity.startsWith("spiffe://");
  const id = uri ? client.identity : client.identity.toLowerCase();
  if (clients.value.identities.some((i) => i.name === id)) return true;
  if (uri) return false;
  return clients.value.suffixes.some((s) =>
    s.parts.length === 0 ? true : id.endsWith(`.${s.parts.join(".")}`),
  );
}

// ----- validation of routes ---------------------------------------------------------------------

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

function refRegex(pattern: string): RE2JS {
  const t = translateRustRegex(pattern);
  if (!t.ok) return fail("regex");
  try {
    return RE2JS.compile(t.source);
  } catch {
    return fail("regex");
  }
}

function checkHeaderMatch(h: { name: string; value?: { $case: string; value: unknown } | undefined }) {
  if (!TOKEN.test(h.name)) fail("header name");
  const value = h.value;
  if (value === undefined) return fail("header value");
  if (value.$case === "regex") refRegex(value.value as string);
  else if ([...(value.value as Uint8Array)].some((b) => (b < 32 && b !== 9) || b === 127))
    fail("header value");
}

function checkHttpRoute(r: inbound.HttpRoute) {
  for (const h of r.hosts) if (!h.match) fail("host");
  r.authorizations.forEach(checkAuthz);
  metaOf(r.metadata);
  for (const rule of r.rules) {
    for (const m of rule.matches) {
      if (m.path) {
        if (!m.path.kind) fail("path");
        if (m.path.kind?.$case === "regex") refRegex(m.path.kind.value);
      }
      m.headers.forEach(checkHeaderMatch);
      for (const q of m.queryParams) {
        if (q.name === "" || !q.value) fail("query");
        if (q.value?.$case === "regex") refRegex(q.value.value);
      }
      if (m.method) {
        const t = m.method.type;
        if (!t) fail("method");
        if (t?.$case === "registered" && !(t.value >= 0 && t.value <= 8)) fail("method");
        if (t?.$case === "unregistered" && !TOKEN.test(t.value)) fail("method");
      }
    }
    for (const f of rule.filters) {
      if (f.kind?.$case === "failureInjector") {
        const fi = f.kind.value;
        if (fi.status < 100 || fi.status > 999) fail("status");
        if (fi.ratio && (fi.ratio.denominator === 0 || fi.ratio.numerator > fi.ratio.denominator))
          fail("ratio");
      }
    }
  }
}

function checkGrpcRoute(r: inbound.GrpcRoute) {
  for (const h of r.hosts) if (!h.match) fail("host");
  r.authorizations.forEach(checkAuthz);
  metaOf(r.metadata);
  for (const rule of r.rules) {
    for (const m of rule.matches) m.headers.forEach(checkHeaderMatch);
    for (const f of rule.filters) {
      if (f.kind?.$case === "failureInjector") {
        const fi = f.kind.value;
        if (fi.code > 65535) fail("code");
        if (fi.ratio && (fi.ratio.denominator === 0 || fi.ratio.numerator > fi.ratio.denominator))
          fail("ratio");
      }
    }
  }
}

/** Returns why the proxy would refuse the server, or undefined when it converts. */
export function refInvalidReason(server: inbound.Server): string | undefined {
  try {
    const kind = server.protocol?.kind;
    if (!kind) fail("protocol");
    server.authorizations.forEach(checkAuthz);
    if (kind?.$case === "detect") {
      kind.value.httpRoutes.forEach(checkHttpRoute);
      const t = kind.value.timeout;
      if (!t || t.seconds < 0n || (t.seconds === 0n && t.nanos < 0)) fail("timeout");
    }
    if (kind?.$case === "http1" || kind?.$case === "http2") kind.value.routes.forEach(checkHttpRoute);
    if (kind?.$case === "grpc") kind.value.routes.forEach(checkGrpcRoute);
    metaOfLabels(server.labels, "policy.linkerd.io", "server");
    return undefined;
  } catch (error) {
    if (error instanceof Invalid) return error.message;
    throw error;
  }
}

// ----- route selection --------------------------------------------------------------------------

function lowerAscii(s: string): string {
  return s.replace(/[A-Z]/g, (c) => c.toLowerCase());
}

function hostOf(authority: string): string {
  const hostPort = authority.split("@").pop() as string;
  if (hostPort.startsWith("[")) return hostPort.slice(0, hostPort.indexOf("]") + 1 || hostPort.length);
  return hostPort.split(":")[0] as string;
}

const bytes = (s: string) => Buffer.byteLength(s, "utf8");

/** [kind, length]: kind 2 exact, 1 suffix. */
function hostScore(
  h: inbound.HttpRoute["hosts"][number],
  authority: string | undefined,
): number[] | undefined {
  if (authority === undefined || authority === "" || !h.match) return undefined;
  let host = hostOf(authority);
  if (h.match.$case === "exact") {
    const pattern = h.match.value;
    if (!pattern.endsWith(".") && host.endsWith(".")) host = host.slice(0, -1);
    return lowerAscii(host) === lowerAscii(pattern) ? [2, bytes(pattern)] : undefined;
  }
  const labels = h.match.value.reverseLabels;
  if (labels[0] !== "" && host.endsWith(".")) host = host.slice(0, -1);
  const suffix = labels.length === 0 ? "" : `.${[...labels].reverse().join(".")}`;
  return lowerAscii(host).endsWith(lowerAscii(suffix)) ? [2 - 1, bytes(suffix)] : undefined;
}

function greater(a: number[], b: number[]): boolean {
  for (let i = 0; i < Math.max(a.length, b.length); i += 1) {
    const x = a[i] ?? 0;
    const y = b[i] ?? 0;
    if (x !== y) return x > y;
  }
  return false;
}

/** Linkerd's check, literally: an unanchored leftmost-first `find` that must span the whole value. */
function fullRegexMatch(pattern: string, value: string): boolean {
  const m = refRegex(pattern).exec(value) as (string[] & { index: number }) | null;
  return m !== null && m.index === 0 && (m[0] ?? "").length === value.length;
}

function headerValues(req: RefRequest, name: string): string[] {
  const v = req.headers[name.toLowerCase()];
  return v === undefined ? [] : Array.isArray(v) ? v : [v];
}

function headerMatch(
  h: inbound.HttpRoute["rules"][number]["matches"][number]["headers"][number],
  req: RefRequest,
) {
  return headerValues(req, h.name).some((v) => {
    if (h.value?.$case === "exact") return v === Buffer.from(h.value.value).toString("latin1");
    return /^[\t\x20-\x7e]*$/.test(v) && fullRegexMatch(h.value?.value as string, v);
  });
}

const METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "HEAD", "TRACE"];

function httpMatchScore(
  m: inbound.HttpRoute["rules"][number]["matches"][number],
  req: RefRequest,
): number[] | undefined {
  if (m.method) {
    const t = m.method.type;
    const method = t?.$case === "registered" ? METHODS[t.value] : t?.value;
    if (req.method !== method) return undefined;
  }
  const path = req.path === "" ? "/" : req.path;
  let pathLen = 1;
  const pk = m.path?.kind;
  if (pk?.$case === "exact") {
    if (path !== pk.value) return undefined;
    pathLen = bytes(pk.value);
  } else if (pk?.$case === "prefix") {
    if (pk.value !== "/") {
      const p = pk.value.replace(/\/+$/, "");
      const rp = path.replace(/\/+$/, "");
      if (!(rp === p || rp.startsWith(`${p}/`))) return undefined;
      pathLen = bytes(p);
    }
  } else if (pk?.$case === "regex") {
    if (!fullRegexMatch(pk.value, path)) return undefined;
    pathLen = bytes(path);
  }
  if (!m.headers.every((h) => headerMatch(h, req))) return undefined;
  const params = [...new URLSearchParams(req.query)];
  for (const q of m.queryParams) {
    const ok = params.some(
      ([name, value]) =>
        name === q.name &&
        (q.value?.$case === "exact"
          ? value === q.value.value
          : fullRegexMatch(q.value?.value as string, value)),
    );
    if (!ok || req.query === "") return undefined;
  }
  // Spec order after the path: headers, query params, method.
  return [pathLen, m.headers.length, m.queryParams.length, m.method ? 1 : 0];
}

function grpcMatchScore(
  m: inbound.GrpcRoute["rules"][number]["matches"][number],
  req: RefRequest,
): number[] | undefined {
  if (req.method !== "POST") return undefined;
  const parts = req.path.split("/");
  if (parts[0] !== "" || parts.length < 3) return undefined;
  const service = m.rpc?.service ?? "";
  const method = m.rpc?.method ?? "";
  if (service !== "" && parts[1] !== service) return undefined;
  if (method !== "" && parts[2] !== method) return undefined;
  if (!m.headers.every((h) => headerMatch(h, req))) return undefined;
  return [bytes(service), bytes(method), m.headers.length];
}

interface RefRoute {
  meta: RefMeta;
  hosts: inbound.HttpRoute["hosts"];
  authorizations: inbound.Authz[];
  rules: { score(req: RefRequest): number[] | undefined; filterKinds: string[] }[];
}

const LOCALHOST: inbound.Authz = {
  networks: [
    { net: { ip: { ip: { $case: "ipv4", value: 0x7f000001 } }, prefixLen: 32 }, except: [] },
    { net: { ip: { ip: { $case: "ipv6", value: { first: 0n, last: 1n } } }, prefixLen: 128 }, except: [] },
  ],
  authentication: { permit: { $case: "unauthenticated", value: {} } },
  labels: {},
  metadata: { kind: { $case: "default", value: "localhost" } },
};

function routesOf(server: inbound.Server): RefRoute[] | undefined {
  const kind = server.protocol?.kind;
  const serverAuthz = [...server.authorizations, LOCALHOST];
  const defaultRoute = (): RefRoute => ({
    meta: defaultMeta("default"),
    hosts: [],
    authorizations: serverAuthz,
    rules: [{ score: () => [1, 0, 0, 0], filterKinds: [] }],
  });
  const filterKind = (f: { kind?: { $case: string } | undefined }) =>
    ({
      failureInjector: "failure-injector",
      requestHeaderModifier: "request-header-modifier",
      redirect: "redirect",
    })[f.kind?.$case as "redirect"] ?? "internal-error";
  if (kind?.$case === "detect" || kind?.$case === "http1" || kind?.$case === "http2") {
    const routes = kind.$case === "detect" ? kind.value.httpRoutes : kind.value.routes;
    if (routes.length === 0) return [defaultRoute()];
    return routes.map((r) => ({
      meta: metaOf(r.metadata),
      hosts: r.hosts,
      authorizations: [...r.authorizations, ...serverAuthz],
      rules: r.rules.map((rule) => ({
        score: (req: RefRequest) =>
          best(
            rule.matches.map((m) => httpMatchScore(m, req)),
            [1, 0, 0, 0],
          ),
        filterKinds: rule.filters.map(filterKind),
      })),
    }));
  }
  if (kind?.$case === "grpc") {
    if (kind.value.routes.length === 0) return [defaultRoute()];
    return kind.value.routes.map((r) => ({
      meta: metaOf(r.metadata),
      hosts: r.hosts,
      authorizations: [...r.authorizations, ...serverAuthz],
      rules: r.rules.map((rule) => ({
        score: (req: RefRequest) =>
          best(
            rule.matches.map((m) => grpcMatchScore(m, req)),
            [0, 0, 0],
          ),
        filterKinds: rule.filters.map(filterKind),
      })),
    }));
  }
  return undefined;
}

/** Best score of a rule's matches, first wins ties; an empty match list matches with `implicit`. */
function best(scores: (number[] | undefined)[], implicit: number[]): number[] | undefined {
  if (scores.length === 0) return implicit;
  let top: number[] | undefined;
  for (const s of scores) if (s && (!top || greater(s, top))) top = s;
  return top;
}

export function refAuthorizeHttp(server: inbound.Server, req: RefRequest): RefResult {
  if (refInvalidReason(server) !== undefined) {
    return { allowed: false, reason: "invalid-policy", route: defaultMeta("invalid") };
  }
  const routes = routesOf(server);
  if (!routes) return { allowed: false, reason: "route-not-found" };
  const candidates: { route: RefRoute; rule: RefRoute["rules"][number]; score: number[] }[] = [];
  for (const route of routes) {
    let host = [0, 0];
    if (route.hosts.length > 0) {
      const scores = route.hosts.map((h) => hostScore(h, req.authority)).filter((s) => s !== undefined);
      if (scores.length === 0) continue;
      host = scores.reduce((a, b) => (greater(b, a) ? b : a));
    }
    for (const rule of route.rules) {
      const score = rule.score(req);
      if (score) candidates.push({ route, rule, score: [...host, ...score] });
    }
  }
  if (candidates.length === 0) return { allowed: false, reason: "route-not-found" };
  const winner = candidates.reduce((a, b) => (greater(b.score, a.score) ? b : a));
  const authz = winner.route.authorizations.find((a) => authzMatches(a, req.client));
  if (!authz) return { allowed: false, reason: "unauthorized", route: winner.route.meta };
  return {
    allowed: true,
    route: winner.route.meta,
    authz: authz === LOCALHOST ? defaultMeta("localhost") : checkAuthz(authz),
    filterKinds: winner.rule.filterKinds,
  };
}

export function refAuthorizeConnection(
  server: inbound.Server,
  client: RefClient,
): { allowed: boolean; reason?: string; authz?: RefMeta } {
  if (refInvalidReason(server) !== undefined) return { allowed: false, reason: "invalid-policy" };
  const authz = [...server.authorizations, LOCALHOST].find((a) => authzMatches(a, client));
  if (!authz) return { allowed: false, reason: "unauthorized" };
  return { allowed: true, authz: authz === LOCALHOST ? defaultMeta("localhost") : checkAuthz(authz) };
}

/**
 * HTTPLocalRateLimitPolicy as a plain token bucket per limit (governor's quota: `rps` tokens, refilled at
 * `rps` per second, starting full), counted in thousandths of a token so the arithmetic is exact. Order
 * (local_rate_limit.rs): the total limit first, spending a token even when a later limit refuses; then
 * the client's override (a bucket shared by the override's identities) and nothing else; else the
 * per-identity bucket keyed by identity (clients without one share a key). Returns the refusing scope.
 */
export function refRateLimiter(limit: inbound.HttpLocalRateLimit) {
  const buckets = new Map<string, { milli: number; at: number }>();
  const take = (key: string, rps: number, now: number): boolean => {
    const bucket = buckets.get(key) ?? { milli: rps * 1000, at: now };
    bucket.milli = Math.min(rps * 1000, bucket.milli + (now - bucket.at) * rps);
    bucket.at = now;
    buckets.set(key, bucket);
    if (bucket.milli < 1000) return false;
    bucket.milli -= 1000;
    return true;
  };
  const rps = (l: { requestsPerSecond: number } | undefined) => l?.requestsPerSecond ?? 0;
  const norm = (name: string) => (name.includes("://") ? name : name.toLowerCase());
  return {
    check(client: RefClient, now: number): "ok" | "total" | "identity" {
      const total = rps(limit.total);
      if (total > 0 && !take("total", total, now)) return "total";
      const id =
        client.tls === "established" && client.identity !== undefined && client.identity !== ""
          ? client.identity.startsWith("spiffe://")
            ? client.identity
            : client.identity.toLowerCase()
          : undefined;
      if (id !== undefined) {
        const index = limit.overrides.findIndex(
          (o) =>
            rps(o.limit) > 0 &&
            (o.clients?.identities ?? []).some((i) => i.name !== "" && norm(i.name) === id),
        );
        if (index >= 0)
          return take(`override ${index}`, rps(limit.overrides[index]?.limit), now) ? "ok" : "identity";
      }
      const perIdentity = rps(limit.identity);
      if (perIdentity > 0 && !take(`id ${id ?? ""}`, perIdentity, now)) return "identity";
      return "ok";
    },
  };
}
