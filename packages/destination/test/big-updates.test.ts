/**
 * Oversized Destination updates (issue 11) from a real grpc-js controller double on loopback: one add
 * of 50,000 addresses keeps LIMITS.maxEndpoints of them (endpoints are interchangeable replicas, so a
 * subset balances correctly), says so once with a coded warning, and the watch keeps working; a message
 * over the byte cap is refused and the last good set stays.
 */

import type { MeshError } from "@inmesh/core";
import { destination, outbound } from "@inmesh/proto";
import { afterEach, describe, expect, it } from "vitest";
import {
  compileProfile,
  createContextToken,
  createDiscovery,
  type EndpointSet,
  LIMITS,
  type OutboundPolicyState,
} from "../src/index.js";
import { startControlPlane, testClients } from "./control-plane-double.js";
import { addUpdate, removeUpdate, waitFor, weightedAddr } from "./helpers.js";

const AUTHORITY = "web.ns.svc.cluster.local:80";
const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const address = (i: number) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}:8080`;
const identity = {
  strategy: {
    $case: "dnsLikeIdentity" as const,
    value: { name: "web.ns.serviceaccount.identity.linkerd.cluster.local" },
  },
  serverName: undefined,
};

async function setup(
  handlers: Parameters<typeof startControlPlane>[0],
  maxMessageBytes?: number,
  updateSliceMs?: number,
) {
  const plane = await startControlPlane(handlers);
  cleanups.push(() => plane.kill());
  const clients = testClients(plane.address);
  cleanups.push(() => clients.close());
  const discovery = createDiscovery({
    ...clients,
    sourceWorkload: '{"ns":"client-ns","pod":"client-0"}',
    contextToken: createContextToken({ ns: "client-ns" }),
    backoff: { minMs: 10, maxMs: 100 },
    ...(maxMessageBytes ? { maxMessageBytes } : {}),
    ...(updateSliceMs ? { updateSliceMs } : {}),
  });
  cleanups.push(() => discovery.close());
  return { plane, discovery };
}

describe("endpoint updates over the caps", () => {
  it("keeps the first maxEndpoints of a 50,000-address add, warns once, then applies later updates", async () => {
    const warnings: Error[] = [];
    const onWarning = (warning: Error) => warnings.push(warning);
    process.on("warning", onWarning);
    cleanups.push(() => process.off("warning", onWarning));

    const { plane, discovery } = await setup({});
    const watch = discovery.watchEndpoints(AUTHORITY);
    const values: EndpointSet[] = [];
    watch.onUpdate((set) => values.push(set));
    await waitFor(() => plane.getCalls.length === 1);
    const call = plane.getCalls[0] as NonNullable<(typeof plane.getCalls)[0]>;

    const addrs = Array.from({ length: 50_000 }, (_, i) =>
      weightedAddr(address(i), { tlsIdentity: identity }),
    );
    call.write(addUpdate(addrs, { namespace: "ns" }));
    await waitFor(() => values.length === 1, 20_000, "the capped set");
    const set = values[0] as EndpointSet;
    expect(set.endpoints).toHaveLength(LIMITS.maxEndpoints);
    expect(set.get(address(0))?.tlsIdentity?.name).toBe(
      "web.ns.serviceaccount.identity.linkerd.cluster.local",
    );
    expect(set.get(address(0))?.metricLabels).toEqual({ namespace: "ns" });
    expect(set.get(address(LIMITS.maxEndpoints))).toBeUndefined();
    await waitFor(() =>
      warnings.some((w) => (w as { code?: string }).code === "MESH_DESTINATION_ENDPOINTS_CAPPED"),
    );

    // The stream is alive and proportional updates apply: a removal frees a slot for a new address.
    call.write(removeUpdate([address(0)]));
    await waitFor(() => values.length === 2);
    call.write(addUpdate([weightedAddr("10.200.0.1:8080")]));
    await waitFor(() => values.length === 3);
    const last = values[2] as EndpointSet;
    expect(last.endpoints).toHaveLength(LIMITS.maxEndpoints);
    expect(last.get("10.200.0.1:8080")).toBeDefined();
    expect(last.get(address(0))).toBeUndefined();
    expect(watch.state().closed).toBe(false);
  }, 30_000);

  it("applies a big add, then what came behind it, in order, publishing whole messages only", async () => {
    const { plane, discovery } = await setup({}, 8 * 1024 * 1024);
    const watch = discovery.watchEndpoints(AUTHORITY);
    const values: EndpointSet[] = [];
    watch.onUpdate((set) => values.push(set));
    await waitFor(() => plane.getCalls.length === 1);
    const call = plane.getCalls[0] as NonNullable<(typeof plane.getCalls)[0]>;
    const addrs = Array.from({ length: 20_000 }, (_, i) =>
      weightedAddr(address(i), { tlsIdentity: identity }),
    );
    call.write(addUpdate(addrs, { namespace: "ns" }));
    call.write(removeUpdate([address(5), address(15_000)]));
    call.write(addUpdate([weightedAddr("10.200.0.1:8080")]));
    await waitFor(() => values.at(-1)?.get("10.200.0.1:8080") !== undefined, 20_000, "the last update");
    const states = values.map((set) => [set.size, set.get(address(5)) !== undefined]);
    // Each publication is the state after whole messages: the capped add (10,000 with address 5),
    // then without address 5 (address 15,000 was never in), then with the new address.
    for (const [size, hasFive] of states) {
      expect([
        [10_000, true],
        [9_999, false],
        [10_000, false],
      ]).toContainEqual([size, hasFive]);
    }
    expect(states.at(-1)).toEqual([10_000, false]);
    expect(values.every((set) => set.get(address(9_999)) !== undefined)).toBe(true);
  }, 30_000);

  it("pauses the stream while more than a message's worth waits, and applies every message in order", async () => {
    // Slices of 0.2 ms: the messages arrive faster than they are applied.
    const { plane, discovery } = await setup({}, 512 * 1024, 0.2);
    const watch = discovery.watchEndpoints(AUTHORITY);
    const values: EndpointSet[] = [];
    watch.onUpdate((set) => values.push(set));
    await waitFor(() => plane.getCalls.length === 1);
    const call = plane.getCalls[0] as NonNullable<(typeof plane.getCalls)[0]>;
    // Four messages of ~380 KiB written at once: behind the first, more than 512 KiB waits.
    for (let m = 0; m < 4; m += 1) {
      const addrs = Array.from({ length: 5_000 }, (_, i) =>
        weightedAddr(address(m * 5_000 + i), { tlsIdentity: identity }),
      );
      call.write(addUpdate(addrs, { batch: String(m) }));
    }
    call.write(removeUpdate([address(0), address(19_999)]));
    await waitFor(() => values.length > 0 && values.at(-1)?.get(address(0)) === undefined, 20_000);
    const last = values.at(-1) as EndpointSet;
    expect(last.size).toBe(9_999);
    // The cap took the first 10,000 addresses in order: batches 0 and 1, nothing of 2 and 3.
    expect(last.get(address(1))?.metricLabels.batch).toBe("0");
    expect(last.get(address(9_999))?.metricLabels.batch).toBe("1");
    expect(last.get(address(10_000))).toBeUndefined();
    expect(watch.state().reconnects).toBe(0);
  }, 30_000);

  it("refuses a message over the byte cap and keeps the last good set", async () => {
    const { plane, discovery } = await setup({}, 64 * 1024);
    const watch = discovery.watchEndpoints(AUTHORITY);
    const values: EndpointSet[] = [];
    const errors: string[] = [];
    watch.onUpdate((set) => values.push(set));
    watch.onError((error) => errors.push(error.code));
    await waitFor(() => plane.getCalls.length === 1);
    const first = plane.getCalls[0] as NonNullable<(typeof plane.getCalls)[0]>;
    first.write(addUpdate([weightedAddr("10.0.0.1:8080")]));
    await waitFor(() => values.length === 1);
    first.write(addUpdate(Array.from({ length: 5_000 }, (_, i) => weightedAddr(address(i + 10)))));
    // The oversized message restarts the stream (a typed error) instead of being applied.
    await waitFor(() => plane.getCalls.length >= 2, 10_000, "a new stream");
    expect(values).toHaveLength(1);
    expect(values[0]?.endpoints.map((e) => e.address)).toEqual(["10.0.0.1:8080"]);
    expect(watch.state().closed).toBe(false);
    expect(errors.every((code) => code.startsWith("MESH_ERR_"))).toBe(true);
  });
});

const BACKENDS = {
  kind: {
    $case: "firstAvailable",
    value: {
      backends: [
        {
          backend: {
            metadata: { kind: { $case: "default", value: "svc" } },
            kind: {
              $case: "balancer",
              value: {
                discovery: { kind: { $case: "dst", value: { path: "web.ns.svc.cluster.local:80" } } },
              },
            },
          },
        },
      ],
    },
  },
};

/** An outbound policy whose routes bring `regexes` distinct path regexes, 8 per rule. */
function outboundPolicy(regexes: number, seed: string) {
  const routes = [];
  for (let r = 0; r * 8 < regexes; r += 1) {
    const matches = [];
    for (let m = 0; m < 8 && r * 8 + m < regexes; m += 1) {
      matches.push({ path: { kind: { $case: "regex", value: `/${seed}/r${r}/m${m}/[a-z]+` } } });
    }
    routes.push({
      metadata: { kind: { $case: "default", value: `r${r}` } },
      hosts: [],
      rules: [{ matches, backends: BACKENDS }],
    });
  }
  return outbound.OutboundPolicy.fromPartial({
    metadata: { kind: { $case: "default", value: "web" } },
    protocol: { kind: { $case: "http1", value: { routes } } },
  } as never);
}

describe("outbound policies and profiles over the regex cap", () => {
  it("refuses an outbound policy bringing more new regexes than the cap; the last policy stays", async () => {
    const { discovery, plane } = await setup({
      watch(call) {
        call.write(outboundPolicy(8, "small"));
        call.write(outboundPolicy(LIMITS.maxNewRegexesPerMessage + 8, "huge"));
      },
    });
    const watch = discovery.watchOutboundPolicy("web.ns.svc.cluster.local:80");
    const values: OutboundPolicyState[] = [];
    const errors: MeshError[] = [];
    watch.onUpdate((value) => values.push(value));
    watch.onError((error) => errors.push(error));
    await waitFor(() => errors.length > 0, 10_000, "the refusal");
    expect(errors[0]?.code).toBe("MESH_ERR_DESTINATION_INVALID_UPDATE");
    expect(errors[0]?.message).toMatch(/more than 1024 new regexes in one message/);
    expect(values).toHaveLength(1);
    const first = values[0];
    expect(first?.kind === "policy" && first.protocol.kind === "http1" && first.protocol.routes.length).toBe(
      1,
    );
    expect(plane.watchCalls.length).toBeGreaterThanOrEqual(1);
  });

  it("accepts a policy at the cap, and the same policy again costs no new compilation", () => {
    const profile = (seed: string, count: number) =>
      destination.DestinationProfile.fromPartial({
        fullyQualifiedName: "web.ns.svc.cluster.local",
        routes: Array.from({ length: count / 2 }, (_, i) => ({
          condition: {
            match: {
              $case: "any",
              value: {
                matches: [
                  { match: { $case: "path", value: { regex: `/${seed}/a${i}` } } },
                  { match: { $case: "path", value: { regex: `/${seed}/b${i}` } } },
                ],
              },
            },
          },
          metricsLabels: { route: `r${i}` },
        })),
      } as never);
    const atCap = profile("cap", LIMITS.maxNewRegexesPerMessage);
    expect(compileProfile(atCap).routes).toHaveLength(LIMITS.maxNewRegexesPerMessage / 2);
    // Cached now: the same patterns again are not new.
    expect(compileProfile(atCap).routes).toHaveLength(LIMITS.maxNewRegexesPerMessage / 2);
    expect(() => compileProfile(profile("over", LIMITS.maxNewRegexesPerMessage + 2))).toThrow(
      /more than 1024 new path regexes/,
    );
  });
});
