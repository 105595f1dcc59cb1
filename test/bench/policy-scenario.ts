/**
 * The S4 scenario (performance.md): a server with 50 HTTP routes whose authorizations name 1,000 client
 * identities plus namespace-wide wildcard suffixes, and a fixed set of pre-built random requests. Shared by
 * the vitest bench (policy-eval.bench.ts) and the allocation script (policy-alloc.mjs).
 */
import type { PeerIdentity } from "@inmesh/core";
import {
  type CompiledServerPolicy,
  clientFacts,
  compileServerPolicy,
  type HttpRequestFacts,
} from "@inmesh/policy";
import { inbound, ipNetworkFromString } from "@inmesh/proto";

export const ROUTES = 50;
export const IDENTITIES = 1000;
const NAMESPACES = 25;

/** mulberry32: a tiny deterministic PRNG so every run evaluates the same requests (not for security). */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const identity = (i: number) => `sa${i}.ns${i % NAMESPACES}.serviceaccount.identity.linkerd.cluster.local`;
const nsSuffix = (ns: number) => [`ns${ns}`, "serviceaccount", "identity", "linkerd", "cluster", "local"];

function authz(name: string, identities: string[], suffixes: string[][]): inbound.Authz {
  return inbound.Authz.fromPartial({
    networks: [
      { net: ipNetworkFromString("10.0.0.0/8"), except: [ipNetworkFromString("10.255.0.0/16")] },
      { net: ipNetworkFromString("fd00::/8"), except: [] },
    ],
    authentication: {
      permit: {
        $case: "meshTLS",
        value: {
          clients: {
            $case: "identities",
            value: {
              identities: identities.map((n) => ({ name: n })),
              suffixes: suffixes.map((parts) => ({ parts })),
            },
          },
        },
      },
    },
    metadata: {
      kind: { $case: "resource", value: { group: "policy.linkerd.io", kind: "authorizationpolicy", name } },
    },
  });
}

export function s4Server(): inbound.Server {
  const perRoute = IDENTITIES / ROUTES;
  const routes = Array.from({ length: ROUTES }, (_, r) =>
    inbound.HttpRoute.fromPartial({
      metadata: {
        kind: {
          $case: "resource",
          value: { group: "policy.linkerd.io", kind: "HTTPRoute", name: `route-${r}` },
        },
      },
      hosts:
        r % 5 === 0
          ? [
              {
                match: {
                  $case: "suffix",
                  value: { reverseLabels: ["local", "cluster", "svc", `ns${r % NAMESPACES}`] },
                },
              },
            ]
          : [],
      authorizations: [
        authz(
          `route-${r}-clients`,
          Array.from({ length: perRoute }, (_, k) => identity(r * perRoute + k)),
          [nsSuffix((r * 7) % NAMESPACES)],
        ),
      ],
      rules: [
        {
          matches: [
            {
              path: { kind: { $case: "exact", value: `/svc${r}/health` } },
              method: { type: { $case: "registered", value: 0 } },
              headers: [],
              queryParams: [],
            },
            { path: { kind: { $case: "prefix", value: `/svc${r}/api` } }, headers: [], queryParams: [] },
          ],
          filters: [],
        },
        {
          matches: [
            {
              path: { kind: { $case: "prefix", value: `/svc${r}` } },
              headers: [{ name: "x-tenant", value: { $case: "exact", value: Buffer.from(`t${r % 3}`) } }],
              queryParams: [],
            },
          ],
          filters: [],
        },
      ],
    }),
  );
  return {
    protocol: {
      kind: {
        $case: "detect",
        value: { timeout: { seconds: 10n, nanos: 0 }, httpRoutes: routes, httpLocalRateLimit: undefined },
      },
    },
    serverIps: [],
    authorizations: [authz("platform", [], [nsSuffix(0), nsSuffix(1)])],
    labels: { group: "policy.linkerd.io", kind: "server", name: "s4" },
  };
}

export interface Scenario {
  readonly policy: CompiledServerPolicy;
  readonly requests: readonly HttpRequestFacts[];
}

/** Builds the policy and `count` requests (a power of two, so callers can index with a mask). */
export function s4Scenario(count = 4096): Scenario {
  const random = prng(0x5eed);
  const pick = (n: number) => Math.floor(random() * n);
  const policy = compileServerPolicy(s4Server(), { port: 8080 });
  const requests: HttpRequestFacts[] = [];
  for (let i = 0; i < count; i += 1) {
    const route = pick(ROUTES + 5); // a few paths no route serves
    const roll = random();
    const path =
      roll < 0.3
        ? `/svc${route}/health`
        : roll < 0.7
          ? `/svc${route}/api/v${pick(3)}/items/${pick(1000)}`
          : `/svc${route}/other`;
    const who = pick(IDENTITIES + 200); // some identities no policy names
    const peer: PeerIdentity =
      who < IDENTITIES + 100
        ? {
            kind: "mesh",
            name:
              who < IDENTITIES
                ? identity(who)
                : `stranger${who}.ns${pick(40)}.serviceaccount.identity.linkerd.cluster.local`,
            tls: "established",
          }
        : { kind: "none", reason: "no_tls_from_remote" };
    const address =
      random() < 0.9
        ? `10.${pick(256)}.${pick(256)}.${1 + pick(250)}`
        : `fd00::${(1 + pick(0xfffe)).toString(16)}`;
    requests.push({
      method: random() < 0.7 ? "GET" : "POST",
      authority: `svc${route}.ns${route % NAMESPACES}.svc.cluster.local:8080`,
      path,
      query: random() < 0.5 ? "" : `page=${pick(10)}`,
      headers: { "x-tenant": `t${pick(3)}`, "content-type": "application/json" },
      client: clientFacts(address, peer),
    });
  }
  return { policy, requests };
}
