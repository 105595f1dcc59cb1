import { ipAddressFromString, outbound } from "@inmesh/proto";
import { describe, expect, it } from "vitest";
import { buildClusterState, type ClusterState } from "../../src/model/index.js";
import { workload } from "./helpers.js";

const MANIFESTS = `
apiVersion: v1
kind: Service
metadata: { name: books, namespace: shop }
spec: { ports: [{ port: 80 }] }
---
apiVersion: v1
kind: Service
metadata: { name: pinned, namespace: shop }
spec: { clusterIP: 10.96.0.5, ports: [{ port: 80 }] }
---
apiVersion: v1
kind: Service
metadata: { name: headless, namespace: shop }
spec: { clusterIP: None, ports: [{ port: 80 }] }
---
apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata: { name: blocked, namespace: shop }
spec:
  trafficPolicy: Deny
  networks: [{ cidr: 203.0.113.0/24, except: [203.0.113.7/32] }]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata: { name: everything-else, namespace: linkerd-egress }
spec: { trafficPolicy: Allow }
`;

function lookup(state: ClusterState, ip: string, port: number, ns = "shop") {
  const result = state.outboundPolicy({
    sourceWorkload: workload(ns, "client"),
    target: { $case: "addr", value: { ip: ipAddressFromString(ip), port } },
  });
  if (result.ok) {
    expect(outbound.OutboundPolicy.decode(outbound.OutboundPolicy.encode(result.policy).finish())).toEqual(
      result.policy,
    );
  }
  return result;
}

function httpRouteName(policy: outbound.OutboundPolicy): string | undefined {
  const kind = policy.protocol?.kind;
  if (kind?.$case !== "detect") throw new Error(`expected detect, got ${kind?.$case}`);
  const metadata = kind.value.http1?.routes[0]?.metadata?.kind;
  return metadata?.$case === "default" ? metadata.value : undefined;
}

describe("cluster IPs and egress by address", () => {
  const state = buildClusterState([{ path: "egress.yaml", text: MANIFESTS }]);

  it("gives a Service without clusterIP a stable one in 10.96.0.0/12, keeps declared ones, none for headless", () => {
    const books = state.services.find((s) => s.name === "books");
    expect(books?.clusterIP).toMatch(/^10\.(9[6-9]|10[0-9]|11[01])\.\d+\.\d+$/);
    expect(state.services.find((s) => s.name === "pinned")?.clusterIP).toBe("10.96.0.5");
    expect(state.services.find((s) => s.name === "headless")?.clusterIP).toBeUndefined();
    const again = buildClusterState([{ path: "egress.yaml", text: MANIFESTS }]);
    expect(again.services.find((s) => s.name === "books")?.clusterIP).toBe(books?.clusterIP);
  });

  it("a cluster IP looks up its Service", () => {
    const ip = state.services.find((s) => s.name === "books")?.clusterIP as string;
    const result = lookup(state, ip, 80);
    expect(result.ok && result.policy.metadata?.kind).toMatchObject({
      $case: "resource",
      value: { kind: "Service", name: "books", namespace: "shop", port: 80 },
    });
  });

  it("an address in a Deny EgressNetwork of the source namespace gets the deny routes", () => {
    const result = lookup(state, "203.0.113.9", 443);
    if (!result.ok) throw new Error(result.message);
    expect(result.policy.metadata?.kind).toMatchObject({
      $case: "resource",
      value: { group: "policy.linkerd.io", kind: "EgressNetwork", name: "blocked", port: 443 },
    });
    expect(httpRouteName(result.policy)).toBe("http-egress-deny");
    const kind = result.policy.protocol?.kind;
    if (kind?.$case !== "detect") throw new Error("expected detect");
    expect(kind.value.opaque?.routes[0]?.rules[0]?.filters[0]?.kind?.$case).toBe("forbidden");
  });

  it("the source namespace's networks hide the global ones; an excepted address is outside them", () => {
    const excepted = lookup(state, "203.0.113.7", 443);
    if (!excepted.ok) throw new Error(excepted.message);
    // shop has EgressNetworks, so the global one is not considered: outside the cluster, the fallback.
    expect(excepted.policy.metadata?.kind).toEqual({ $case: "default", value: "egress-fallback" });
    const fromOther = lookup(state, "203.0.113.9", 443, "elsewhere");
    if (!fromOther.ok) throw new Error(fromOther.message);
    expect(httpRouteName(fromOther.policy)).toBe("http-egress-allow");
  });

  it("a pod address inside the cluster networks is NotFound (forwarded as addressed by the client)", () => {
    const result = lookup(state, "10.1.2.3", 8080, "elsewhere");
    expect(result).toMatchObject({ ok: false, code: "NotFound" });
  });

  it("refuses an EgressNetwork without a valid trafficPolicy", () => {
    expect(() =>
      buildClusterState([
        {
          path: "bad.yaml",
          text: "apiVersion: policy.linkerd.io/v1alpha1\nkind: EgressNetwork\nmetadata: { name: x, namespace: y }\nspec: { trafficPolicy: Maybe }\n",
        },
      ]),
    ).toThrow(/trafficPolicy/);
  });
});
