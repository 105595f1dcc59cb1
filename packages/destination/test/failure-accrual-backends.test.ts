import { outbound } from "@inmesh/proto";
import { describe, expect, it } from "vitest";
import { compileOutboundPolicy, failureAccrualByBackend } from "../src/index.js";

const balanced = (path: string) => ({
  backend: {
    metadata: { kind: { $case: "default", value: "svc" } },
    kind: { $case: "balancer", value: { discovery: { kind: { $case: "dst", value: { path } } } } },
  },
});
const forward = {
  backend: {
    metadata: { kind: { $case: "default", value: "fwd" } },
    kind: {
      $case: "forward",
      value: { addr: { ip: { ip: { $case: "ipv4", value: 0x7f000001 } }, port: 80 } },
    },
  },
};

const routes = [
  {
    metadata: { kind: { $case: "default", value: "r" } },
    rules: [
      {
        matches: [],
        backends: {
          kind: { $case: "firstAvailable", value: { backends: [balanced("Web.ns.svc.cluster.local:80")] } },
        },
      },
      {
        matches: [],
        backends: {
          kind: {
            $case: "randomAvailable",
            value: {
              backends: [
                { weight: 1, backend: balanced("web-v2.ns.svc.cluster.local:80") },
                { weight: 1, backend: forward },
              ],
            },
          },
        },
      },
    ],
  },
];

const consecutive = (maxFailures: number) => ({
  kind: {
    $case: "consecutiveFailures",
    value: {
      maxFailures,
      backoff: { minBackoff: { seconds: 2 }, maxBackoff: { seconds: 9 }, jitterRatio: 0 },
    },
  },
});

describe("failureAccrualByBackend", () => {
  it("gives every balanced backend of the protocol's routes that protocol's breaker settings", () => {
    const policy = compileOutboundPolicy(
      outbound.OutboundPolicy.fromPartial({
        protocol: {
          kind: {
            $case: "detect",
            value: {
              timeout: { seconds: 10 },
              opaque: { routes: [] },
              http1: { routes, failureAccrual: consecutive(3) },
              http2: { routes, failureAccrual: consecutive(4) },
            },
          },
        },
      } as never),
    );
    const http1 = failureAccrualByBackend(policy, "http1");
    expect([...http1.keys()].sort()).toEqual([
      "web-v2.ns.svc.cluster.local:80",
      "web.ns.svc.cluster.local:80",
    ]);
    expect(http1.get("web.ns.svc.cluster.local:80")).toMatchObject({
      kind: "consecutive",
      maxFailures: 3,
      backoff: { minMs: 2000, maxMs: 9000, jitterRatio: 0 },
    });
    expect(failureAccrualByBackend(policy, "http2").get("web-v2.ns.svc.cluster.local:80")).toMatchObject({
      maxFailures: 4,
    });
  });

  it("is off without the setting, and empty for protocols without a balancer", () => {
    const none = compileOutboundPolicy(
      outbound.OutboundPolicy.fromPartial({
        protocol: { kind: { $case: "http1", value: { routes } } },
      } as never),
    );
    expect(failureAccrualByBackend(none, "http1").get("web.ns.svc.cluster.local:80")).toEqual({
      kind: "none",
    });
    const opaque = compileOutboundPolicy(
      outbound.OutboundPolicy.fromPartial({
        protocol: { kind: { $case: "opaque", value: { routes: [] } } },
      } as never),
    );
    expect(failureAccrualByBackend(opaque, "http1").size).toBe(0);
  });
});
