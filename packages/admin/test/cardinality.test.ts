import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  closeTcp,
  inboundCall,
  meshPeer,
  outboundCall,
  tcpConnection,
} from "../../../test/support/mesh-traffic.js";
import { type AdminServer, createMeshMetrics, type MeshMetrics, startAdminServer } from "../src/index.js";
import { type MetricFamily, parsePrometheusText, samplesMatching, total, value } from "./prom-text.js";

// CVE-2025-43915 class: attacker-chosen paths and identities must not grow the metric series without bound.
const CAP = 500;
const PATHS = 100_000;
const PEERS = 10_000;

let metrics: MeshMetrics;
let server: AdminServer;
let families: Map<string, MetricFamily>;
let scrapedBytes = 0;

/** Distinct series per family in a parsed scrape (a histogram series counted once, not per bucket). */
function seriesPerFamily(parsed: Map<string, MetricFamily>): Map<string, number> {
  const counts = new Map<string, number>();
  for (const family of parsed.values()) {
    const keys = new Set<string>();
    for (const sample of family.samples) {
      const { le: _le, ...labels } = sample.labels;
      keys.add(JSON.stringify(Object.entries(labels).sort()));
    }
    counts.set(family.name, keys.size);
  }
  return counts;
}

beforeAll(async () => {
  // Process metrics are not families of the registry (seriesCount does not see them).
  metrics = createMeshMetrics({ maxSeriesPerFamily: CAP, processMetrics: false });
  metrics.subscribe();
  server = await startAdminServer({ port: 0, metrics });

  for (let i = 0; i < PATHS; i++) inboundCall({ path: `/books/${i}?q=${i}`, durationMs: i % 100 });
  for (let i = 0; i < PEERS; i++) {
    const peer = meshPeer(`sa-${i}.ns-${i % 97}.serviceaccount.identity.linkerd.cluster.local`);
    inboundCall({ peer, statusCode: i % 2 === 0 ? 200 : 503 });
    closeTcp(tcpConnection({ direction: "inbound", peer }), { bytesRead: 1, errno: `EBOGUS${i}` });
  }
  const response = await fetch(`${server.url}/metrics`);
  const text = await response.text();
  scrapedBytes = Buffer.byteLength(text);
  families = parsePrometheusText(text);
});

afterAll(async () => {
  metrics.unsubscribe();
  await server.close();
});

describe(`${PATHS} distinct paths and ${PEERS} distinct peer identities`, () => {
  it("keep every family at or under the series cap", () => {
    const counts = seriesPerFamily(families);
    for (const [name, count] of counts) {
      expect(count, name).toBeLessThanOrEqual(CAP);
      expect(metrics.seriesCount(name), name).toBe(count);
    }
    // The families that carry client_id are full, not over.
    expect(counts.get("request_total")).toBe(CAP - 2);
    expect(counts.get("request_total")).toBeGreaterThan(CAP - 10);
    expect(scrapedBytes).toBeLessThan(25 * 1024 * 1024);
  });

  it("adds nothing for distinct paths", () => {
    const single = createMeshMetrics({ maxSeriesPerFamily: CAP });
    single.subscribe();
    for (let i = 0; i < 1000; i++) inboundCall({ path: `/p/${i}` });
    single.unsubscribe();
    expect(single.seriesCount("request_total")).toBe(1);
  });

  it("puts the rest in overflow series and counts them, losing no observation", () => {
    const overflow = samplesMatching(families, "request_total", { overflow: "true" });
    expect(overflow.map((s) => s.labels)).toEqual([{ direction: "inbound", overflow: "true" }]);
    // Every request is still counted: regular series plus overflow add up to all the traffic.
    expect(total(families, "request_total")).toBe(PATHS + PEERS);
    expect(total(families, "response_total")).toBe(PATHS + PEERS);
    expect(total(families, "response_latency_ms_count")).toBe(PATHS + PEERS);
    expect(total(families, "tcp_open_total")).toBe(PEERS);
    expect(
      value(families, "response_total", {
        direction: "inbound",
        classification: "failure",
        overflow: "true",
      }),
    ).toBeGreaterThan(0);
    const dropped = value(families, "inmesh_metrics_series_dropped_total", { family: "request_total" });
    expect(dropped).toBe(total(families, "request_total", { overflow: "true" }));
    expect(dropped).toBeGreaterThan(PEERS - CAP);
  });

  it("maps unknown errno names onto one value", () => {
    const errnos = new Set(samplesMatching(families, "tcp_close_total").map((s) => s.labels.errno));
    expect([...errnos].filter((e) => e !== undefined)).toEqual(["unknown"]);
  });
});

describe("label values from peers are bounded", () => {
  it("maps out-of-range status codes onto `invalid` and truncates long values", () => {
    const local = createMeshMetrics({ maxSeriesPerFamily: CAP, maxLabelValueLength: 64 });
    local.subscribe();
    for (const statusCode of [0, 99, 600, 1000, 12345, -1, 200.5]) inboundCall({ statusCode });
    for (const grpcStatus of [17, 255, -3]) inboundCall({ protocol: "grpc", grpcStatus });
    const longName = `${"a".repeat(300)}.ns.serviceaccount.identity.linkerd.cluster.local`;
    inboundCall({ peer: meshPeer(longName) });
    outboundCall({
      attempts: [{ endpointAddress: "10.0.0.1:80", statusCode: 777, endpointLabels: { "bad key!": "x" } }],
    });
    local.unsubscribe();
    const parsed = parsePrometheusText(local.render());
    const statuses = new Set(samplesMatching(parsed, "response_total").map((s) => s.labels.status_code));
    expect([...statuses].sort()).toEqual(["200", "invalid"]);
    const grpc = new Set(samplesMatching(parsed, "response_total").map((s) => s.labels.grpc_status));
    expect([...grpc].filter(Boolean)).toEqual(["invalid"]);
    const ids = samplesMatching(parsed, "request_total").map((s) => s.labels.client_id ?? "");
    expect(Math.max(...ids.map((id) => id.length))).toBe(64);
    expect(samplesMatching(parsed, "request_total", { dst_bad_key_: "x" })).toHaveLength(1);
  });

  it("escapes quotes, backslashes and newlines so a hostile identity cannot forge a series", () => {
    const local = createMeshMetrics();
    local.subscribe();
    const forged = 'x"} 1\nrequest_total{direction="outbound",authority="forged\\';
    inboundCall({ peer: meshPeer(forged) });
    local.unsubscribe();
    const parsed = parsePrometheusText(local.render());
    expect(samplesMatching(parsed, "request_total")).toHaveLength(1);
    expect(samplesMatching(parsed, "request_total", { client_id: forged })).toHaveLength(1);
  });
});

describe("idle series", () => {
  it("are dropped after retainIdleMs, except gauges still counting open connections", () => {
    let nowMs = 1_000_000;
    const local = createMeshMetrics({ retainIdleMs: 60_000, nowMs: () => nowMs });
    local.subscribe();
    inboundCall({ peer: meshPeer("gone.ns.serviceaccount.identity.linkerd.cluster.local") });
    const open = tcpConnection({
      direction: "inbound",
      peer: meshPeer("open.ns.serviceaccount.identity.linkerd.cluster.local"),
    });
    nowMs += 30_000;
    inboundCall({ peer: meshPeer("recent.ns.serviceaccount.identity.linkerd.cluster.local") });
    nowMs += 40_000; // "gone" idle for 70 s, "recent" for 40 s
    let parsed = parsePrometheusText(local.render());
    const clients = samplesMatching(parsed, "request_total").map((s) => s.labels.client_id);
    expect(clients).toEqual(["recent.ns.serviceaccount.identity.linkerd.cluster.local"]);
    expect(total(parsed, "tcp_open_connections")).toBe(1);
    expect(samplesMatching(parsed, "tcp_open_total")).toEqual([]);
    closeTcp(open, {});
    nowMs += 120_000;
    parsed = parsePrometheusText(local.render());
    expect(samplesMatching(parsed, "tcp_open_connections")).toEqual([]);
    expect(samplesMatching(parsed, "request_total")).toEqual([]);
    local.unsubscribe();
  });

  it("make room under the cap for new label sets once the old ones go idle", () => {
    let nowMs = 5_000_000;
    const cap = 16;
    const local = createMeshMetrics({ maxSeriesPerFamily: cap, retainIdleMs: 60_000, nowMs: () => nowMs });
    local.subscribe();
    for (let i = 0; i < 50; i++)
      inboundCall({ peer: meshPeer(`old-${i}.ns.serviceaccount.identity.linkerd.cluster.local`) });
    expect(local.seriesCount("request_total")).toBeLessThanOrEqual(cap);
    nowMs += 61_000;
    const fresh = meshPeer("fresh.ns.serviceaccount.identity.linkerd.cluster.local");
    inboundCall({ peer: fresh });
    inboundCall({ peer: fresh });
    local.unsubscribe();
    const parsed = parsePrometheusText(local.render());
    expect(
      total(parsed, "request_total", { client_id: "fresh.ns.serviceaccount.identity.linkerd.cluster.local" }),
    ).toBe(2);
    expect(samplesMatching(parsed, "request_total", { overflow: "true" })).toEqual([]);
  });
});
