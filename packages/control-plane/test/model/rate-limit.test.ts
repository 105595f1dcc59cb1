import { describe, expect, it } from "vitest";
import { buildClusterState, ManifestError, type ManifestProblem } from "../../src/model/index.js";
import { server } from "./helpers.js";

const BASE = `apiVersion: v1
kind: Pod
metadata: { name: web-1, namespace: shop, labels: { app: web, linkerd.io/control-plane-ns: linkerd } }
spec:
  containers: [{ name: app, image: app, ports: [{ containerPort: 8080 }] }]
status: { podIP: 10.0.0.9 }
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: { name: web-http, namespace: shop }
spec: { podSelector: { matchLabels: { app: web } }, port: 8080 }
`;

const limit = (spec: string, name = "web-limits") => `---
apiVersion: policy.linkerd.io/v1alpha1
kind: HTTPLocalRateLimitPolicy
metadata: { name: ${name}, namespace: shop }
spec:
${spec}`;

function problems(text: string): ManifestProblem[] {
  try {
    buildClusterState([{ path: "m.yaml", text }]);
  } catch (error) {
    if (error instanceof ManifestError) return [...error.problems];
    throw error;
  }
  return [];
}

describe("HTTPLocalRateLimitPolicy (dev control plane)", () => {
  it("is sent on the Server's protocol with its metadata, limits and override identities", () => {
    const state = buildClusterState([
      {
        path: "m.yaml",
        text:
          BASE +
          limit(`  targetRef: { group: policy.linkerd.io, kind: Server, name: web-http }
  total: { requestsPerSecond: 100 }
  identity: { requestsPerSecond: 20 }
  overrides:
    - requestsPerSecond: 50
      clientRefs: [{ kind: ServiceAccount, name: batch }, { kind: ServiceAccount, name: cron, namespace: ops }]
`),
      },
    ]);
    const web = server(state, "shop", "web-1", 8080);
    const kind = web.protocol?.kind;
    expect(kind?.$case).toBe("detect");
    const limits = kind?.$case === "detect" ? kind.value.httpLocalRateLimit : undefined;
    expect(limits).toMatchObject({
      metadata: {
        kind: {
          $case: "resource",
          value: { group: "policy.linkerd.io", kind: "HTTPLocalRateLimitPolicy", name: "web-limits" },
        },
      },
      total: { requestsPerSecond: 100 },
      identity: { requestsPerSecond: 20 },
      overrides: [
        {
          limit: { requestsPerSecond: 50 },
          clients: {
            identities: [
              { name: "batch.shop.serviceaccount.identity.linkerd.cluster.local" },
              { name: "cron.ops.serviceaccount.identity.linkerd.cluster.local" },
            ],
          },
        },
      ],
    });
  });

  it("refuses invalid limits, and ignores (with a warning) one whose Server does not exist", () => {
    expect(
      problems(
        BASE +
          limit(`  targetRef: { group: policy.linkerd.io, kind: Server, name: web-http }
  total: { requestsPerSecond: 10 }
  identity: { requestsPerSecond: 20 }
  overrides: [{ requestsPerSecond: 0, clientRefs: [{ kind: Namespace, name: ops }] }]
`),
      ).map((p) => `${p.field}: ${p.message}`),
    ).toEqual([
      "spec.identity.requestsPerSecond: must not exceed spec.total.requestsPerSecond (10)",
      "spec.overrides[0].requestsPerSecond: must be between 1 and 4294967295, got 0",
      'spec.overrides[0].clientRefs[0].kind: unsupported client reference "Namespace": use ServiceAccount',
    ]);
    const state = buildClusterState([
      {
        path: "m.yaml",
        text:
          BASE +
          limit(
            "  targetRef: { group: policy.linkerd.io, kind: Server, name: gone }\n  total: { requestsPerSecond: 5 }\n",
          ),
      },
    ]);
    expect(state.warnings.map((w) => `${w.kind}/${w.name}: ${w.message}`)).toEqual([
      'HTTPLocalRateLimitPolicy/web-limits: Server "gone" does not exist in namespace "shop"; this HTTPLocalRateLimitPolicy is ignored',
    ]);
    const kind = server(state, "shop", "web-1", 8080).protocol?.kind;
    expect(kind?.$case === "detect" ? kind.value.httpLocalRateLimit : "?").toBeUndefined();
  });
});
