import { AUTHN_TLS_UNAUTHENTICATED, AUTHN_UNAUTHENTICATED, type IrAuthz, type IrNetwork } from "./ir.js";
import type {
  AuthorizationTrial,
  AuthzMeta,
  ClientFacts,
  PolicyExplanation,
  ResourceMeta,
  RouteMeta,
  ServerMeta,
} from "./types.js";

/**
 * Explanations of decisions, for people: which authorizations were tried, in Linkerd's order (route
 * authorizations, then the server's, then `localhost`), and why each did not admit the caller. Built only
 * when asked for (a denial logged at debug level, `inmesh explain`), never on the decision path.
 */

const MAX_LISTED = 8;

function bits(mask: number): number {
  let count = 0;
  for (let m = mask >>> 0; m !== 0; m = (m << 1) >>> 0) count += 1;
  return count;
}

function formatNetwork(n: IrNetwork): string {
  if (n.family === 4) {
    const w = n.w0;
    return `${w >>> 24}.${(w >>> 16) & 0xff}.${(w >>> 8) & 0xff}.${w & 0xff}/${bits(n.m0)}`;
  }
  const hextets: string[] = [];
  for (const word of [n.w0, n.w1, n.w2, n.w3])
    hextets.push((word >>> 16).toString(16), (word & 0xffff).toString(16));
  const prefix = bits(n.m0) + bits(n.m1) + bits(n.m2) + bits(n.m3);
  return `${hextets.join(":").replace(/(^|:)0(:0)+(:|$)/, "::")}/${prefix}`;
}

function formatNetworks(networks: readonly IrNetwork[]): string {
  return networks
    .map((n) =>
      n.except.length === 0
        ? formatNetwork(n)
        : `${formatNetwork(n)} except ${n.except.map(formatNetwork).join(", ")}`,
    )
    .join(", ");
}

function list(items: readonly string[]): string {
  if (items.length <= MAX_LISTED) return items.join(", ");
  return `${items.slice(0, MAX_LISTED).join(", ")} and ${items.length - MAX_LISTED} more`;
}

export function metaText(meta: ResourceMeta | undefined): string {
  if (meta === undefined) return "none";
  return meta.kind === "default" ? `default:${meta.name}` : `${meta.kind}/${meta.name}`;
}

function describeClient(client: ClientFacts): string {
  const address = client.address === "" ? "an unknown address" : client.address;
  if (client.identity !== undefined) return `${client.identity} at ${address}`;
  if (client.tlsEstablished) return `mesh TLS without a client certificate from ${address}`;
  const peer = client.peer;
  if (peer.kind === "none" && peer.reason === "passthru")
    return `TLS passed through (SNI ${peer.sni ?? "none"}) from ${address}`;
  return `plaintext from ${address}`;
}

/** Why one authorization does or does not admit the client (the predicate of policy-semantics §8.3). */
function tryAuthorization(
  authz: IrAuthz,
  client: ClientFacts,
  admits: boolean,
  inNetworks: boolean,
): AuthorizationTrial {
  const meta = authz.meta;
  const trial = (verdict: AuthorizationTrial["verdict"], reason: string): AuthorizationTrial =>
    Object.freeze({ authz: meta, verdict, reason });
  if (admits) return trial("admitted", "admits the client");
  // The network is checked first, as the proxy does.
  if (!inNetworks) {
    return trial(
      "network",
      client.family === undefined
        ? "the client address is unknown, so it is in no network"
        : `client address ${client.address} is not in ${formatNetworks(authz.networks)}`,
    );
  }
  if (authz.authn === AUTHN_UNAUTHENTICATED) return trial("admitted", "admits the client");
  if (!client.tlsEstablished) {
    const peer = client.peer;
    const what =
      peer.kind === "none" && peer.reason === "passthru"
        ? "TLS passed through to the application (not mesh TLS)"
        : "plaintext";
    return trial("authentication", `requires mesh TLS; the connection is ${what}`);
  }
  if (authz.authn === AUTHN_TLS_UNAUTHENTICATED) return trial("admitted", "admits the client");
  if (client.identity === undefined)
    return trial("authentication", "requires a client identity; the client presented no certificate");
  const allowed: string[] = [...(authz.identities ?? [])];
  if (authz.anyDnsIdentity) allowed.push("* (any DNS-like identity)");
  for (const suffix of authz.suffixes ?? []) allowed.push(`*${suffix}`);
  const note =
    client.identityKind === "uri" && (authz.anyDnsIdentity || (authz.suffixes?.size ?? 0) > 0)
      ? " (a SPIFFE identity matches exact names only, never suffixes)"
      : "";
  return trial(
    "identity",
    `client identity ${client.identity} is not among ${allowed.length === 0 ? "no identities" : list(allowed)}${note}`,
  );
}

/** Tries authorizations in order until one admits the client, recording why each before it did not. */
export function trail(
  authorizations: readonly IrAuthz[],
  client: ClientFacts,
  predicates: {
    readonly matches: (authz: IrAuthz, client: ClientFacts) => boolean;
    readonly inNetworks: (networks: readonly IrNetwork[], client: ClientFacts) => boolean;
  },
): readonly AuthorizationTrial[] {
  const trials: AuthorizationTrial[] = [];
  for (const authz of authorizations) {
    const admits = predicates.matches(authz, client);
    trials.push(tryAuthorization(authz, client, admits, predicates.inNetworks(authz.networks, client)));
    if (admits) break;
  }
  return Object.freeze(trials);
}

export function explanation(fields: {
  allowed: boolean;
  reason: string | undefined;
  server: ServerMeta;
  route: RouteMeta | undefined;
  authz: AuthzMeta | undefined;
  client: ClientFacts;
  trail: readonly AuthorizationTrial[];
  notes: readonly string[];
}): PolicyExplanation {
  const lines = [
    `decision: ${fields.allowed ? "allowed" : `denied (${fields.reason})`}`,
    `client:   ${describeClient(fields.client)}`,
    `server:   ${metaText(fields.server)}`,
  ];
  if (fields.route !== undefined || fields.trail.length > 0)
    lines.push(`route:    ${metaText(fields.route)}`);
  if (fields.authz !== undefined) lines.push(`authz:    ${metaText(fields.authz)}`);
  if (fields.trail.length > 0) {
    lines.push("authorizations tried:");
    for (const trial of fields.trail) {
      const mark = trial.verdict === "admitted" ? "+" : "-";
      const kind = trial.verdict === "admitted" ? "" : ` [${trial.verdict}]`;
      lines.push(`  ${mark} ${metaText(trial.authz)}${kind}: ${trial.reason}`);
    }
  } else if (fields.route !== undefined && !fields.allowed) {
    lines.push("authorizations tried: none (nothing can admit a request here)");
  }
  for (const note of fields.notes) lines.push(note);
  return Object.freeze({
    allowed: fields.allowed,
    reason: fields.reason,
    server: fields.server,
    route: fields.route,
    authz: fields.authz,
    trail: fields.trail,
    text: lines.join("\n"),
  });
}
