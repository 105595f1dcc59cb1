import { DestinationError, MeshChannel, MeshErrorCode, meshChannel } from "@inmesh/core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  allowed,
  closeTcp,
  denied,
  inboundCall,
  meshPeer,
  outboundCall,
  tcpAuthz,
  tcpConnection,
} from "../../../test/support/mesh-traffic.js";
import {
  type AdminServer,
  createMeshMetrics,
  type MeshMetrics,
  RESPONSE_LATENCY_BUCKETS_MS,
  startAdminServer,
} from "../src/index.js";
import { type MetricFamily, parsePrometheusText, samplesMatching, total, value } from "./prom-text.js";

const WEB = "web.default.serviceaccount.identity.linkerd.cluster.local";
const AUTHORS = "authors.default.serviceaccount.identity.linkerd.cluster.local";
const NOW_MS = 1_800_000_000_000;

const target = { target_addr: "10.42.0.7:8080", target_ip: "10.42.0.7", target_port: "8080" };
const srv = {
  srv_group: "policy.linkerd.io",
  srv_kind: "server",
  srv_name: "books-http",
  srv_port: "8080",
};
const route = { route_group: "policy.linkerd.io", route_kind: "HTTPRoute", route_name: "books-read" };
const authz = {
  authz_group: "policy.linkerd.io",
  authz_kind: "authorizationpolicy",
  authz_name: "books-from-web",
};
const webTls = { tls: "true", client_id: WEB };
const AUTHZ_TCP = { group: "policy.linkerd.io", kind: "authorizationpolicy", name: "books-tcp" };
const inboundEndpoint = { direction: "inbound", ...target, ...webTls, ...srv, ...route, ...authz };

let metrics: MeshMetrics;
let server: AdminServer;
let families: Map<string, MetricFamily>;
let contentType: string | null;

async function scrape(url: string): Promise<Map<string, MetricFamily>> {
  const response = await fetch(`${url}/metrics`);
  expect(response.status).toBe(200);
  contentType = response.headers.get("content-type");
  return parsePrometheusText(await response.text());
}

function publishKnownTraffic(): void {
  // Inbound HTTP, allowed: three 200s and one 503.
  for (const durationMs of [3, 7, 150]) inboundCall({ durationMs, path: `/books/${durationMs}` });
  inboundCall({ statusCode: 503, durationMs: 12 });
  // Denied by authorization, and a request that matched no route.
  inboundCall({ decision: denied("unauthorized"), statusCode: 403, durationMs: 1 });
  inboundCall({ decision: denied("route-not-found", { route: undefined }), statusCode: 404, durationMs: 1 });
  // Plaintext from loopback (a probe), no policy consulted.
  inboundCall({
    peer: { kind: "none", reason: "loopback" },
    targetAddress: "127.0.0.1",
    decision: undefined,
    path: "/healthz",
  });
  // gRPC: OK and UNAVAILABLE.
  inboundCall({ protocol: "grpc", method: "POST", path: "/books.v1.Books/Get", grpcStatus: 0 });
  inboundCall({ protocol: "grpc", method: "POST", path: "/books.v1.Books/Get", grpcStatus: 14 });

  // Outbound: one call retried once (503 then 200), and one that failed before any attempt.
  outboundCall({
    route: { group: "gateway.networking.k8s.io", kind: "HTTPRoute", name: "authors-get" },
    attempts: [
      {
        endpointAddress: "10.42.1.3:7001",
        serverIdentity: AUTHORS,
        endpointLabels: { namespace: "default", pod: "authors-1", service: "authors" },
        statusCode: 503,
        durationMs: 20,
      },
      {
        endpointAddress: "10.42.1.4:7001",
        serverIdentity: AUTHORS,
        endpointLabels: { namespace: "default", pod: "authors-2", service: "authors" },
        statusCode: 200,
        durationMs: 30,
      },
    ],
  });
  outboundCall({
    authority: "missing.default.svc.cluster.local:80",
    attempts: [],
    error: new DestinationError(MeshErrorCode.DESTINATION_NO_ENDPOINTS, "no endpoints"),
  });

  // TCP: two inbound meshed connections (one still open), one denied plaintext one, one outbound reset.
  const open = tcpConnection({ direction: "inbound", peer: meshPeer(WEB) });
  const closed = tcpConnection({ direction: "inbound", peer: meshPeer(WEB) });
  closeTcp(closed, { bytesRead: 100, bytesWritten: 250 });
  const plaintext = tcpConnection({
    direction: "inbound",
    peer: { kind: "none", reason: "no_tls_from_remote" },
  });
  closeTcp(plaintext, { bytesRead: 10, denied: true });
  const outbound = tcpConnection({ direction: "outbound", port: 7001, peer: meshPeer(AUTHORS) });
  closeTcp(outbound, { bytesRead: 5, bytesWritten: 7, errno: "ECONNRESET" });
  void open;
  // Connection-level authorizations: one allowed meshed connection later revoked, one denied plaintext.
  const tcpDecision = allowed({ route: undefined, authz: { ...AUTHZ_TCP } });
  tcpAuthz({ peer: meshPeer(WEB), decision: tcpDecision });
  tcpAuthz({ peer: meshPeer(WEB), decision: denied("unauthorized", { route: undefined }), terminated: true });
  tcpAuthz({ decision: denied("unauthorized", { route: undefined }) });

  // Identity: one certification and one failed refresh.
  meshChannel(MeshChannel.identityChanged).publish({
    status: "ready",
    expiresAtMs: 1_900_000_000_500,
    serial: "01",
  });
  meshChannel(MeshChannel.identityChanged).publish({
    status: "error",
    expiresAtMs: undefined,
    serial: undefined,
  });
}

beforeAll(async () => {
  metrics = createMeshMetrics({ nowMs: () => NOW_MS });
  metrics.subscribe();
  metrics.subscribe(); // idempotent: a second subscribe must not double-count
  server = await startAdminServer({ port: 0, metrics, readiness: () => true });
  publishKnownTraffic();
  families = await scrape(server.url);
});

afterAll(async () => {
  metrics.unsubscribe();
  await server.close();
});

describe("scraped /metrics after known traffic", () => {
  it("is Prometheus text 0.0.4 with HELP and TYPE for every family", () => {
    expect(contentType).toBe("text/plain; version=0.0.4; charset=utf-8");
    const expected: Record<string, string> = {
      request_total: "counter",
      response_total: "counter",
      response_latency_ms: "histogram",
      inbound_http_authz_allow_total: "counter",
      inbound_http_authz_deny_total: "counter",
      inbound_http_route_not_found_total: "counter",
      tcp_open_total: "counter",
      tcp_open_connections: "gauge",
      tcp_read_bytes_total: "counter",
      tcp_write_bytes_total: "counter",
      tcp_close_total: "counter",
      inbound_tcp_authz_allow_total: "counter",
      inbound_tcp_authz_deny_total: "counter",
      inbound_tcp_authz_terminate_total: "counter",
      outbound_http_route_retry_requests_total: "counter",
      control_identity_cert_expiration_timestamp_seconds: "gauge",
      control_identity_cert_refresh_timestamp_seconds: "gauge",
      control_identity_cert_refreshes_total: "counter",
      inmesh_metrics_series_dropped_total: "counter",
    };
    for (const [name, type] of Object.entries(expected)) {
      expect(families.get(name)?.type, name).toBe(type);
      expect(families.get(name)?.help, name).toBeTruthy();
    }
  });

  it("counts inbound requests and responses with linkerd2-proxy's endpoint labels", () => {
    // Three 200s, one 503 and two gRPC calls share one endpoint label set.
    expect(value(families, "request_total", inboundEndpoint)).toBe(6);
    expect(
      value(families, "response_total", {
        ...inboundEndpoint,
        status_code: "200",
        classification: "success",
      }),
    ).toBe(3);
    expect(
      value(families, "response_total", {
        ...inboundEndpoint,
        status_code: "503",
        classification: "failure",
      }),
    ).toBe(1);
    // A denied request carries no authz labels; a probe over loopback plaintext has no policy labels.
    const deniedEndpoint = { direction: "inbound", ...target, ...webTls, ...srv, ...route };
    expect(value(families, "request_total", deniedEndpoint)).toBe(1);
    expect(
      value(families, "request_total", {
        direction: "inbound",
        target_addr: "127.0.0.1:8080",
        target_ip: "127.0.0.1",
        target_port: "8080",
        tls: "no_identity",
        no_tls_reason: "loopback",
      }),
    ).toBe(1);
  });

  it("never uses the path as a label", () => {
    for (const family of families.values()) {
      for (const sample of family.samples) {
        expect(Object.keys(sample.labels)).not.toContain("path");
        expect(Object.values(sample.labels).some((v) => v.startsWith("/books"))).toBe(false);
      }
    }
  });

  it("classifies gRPC by grpc-status", () => {
    const grpc = { ...inboundEndpoint, status_code: "200" };
    expect(value(families, "response_total", { ...grpc, classification: "success", grpc_status: "0" })).toBe(
      1,
    );
    expect(value(families, "response_total", { ...grpc, classification: "failure", grpc_status: "14" })).toBe(
      1,
    );
  });

  it("has response_latency_ms with exactly Linkerd's buckets and correct cumulative counts", () => {
    const labels = { ...inboundEndpoint, status_code: "200" };
    const buckets = samplesMatching(families, "response_latency_ms_bucket", labels);
    expect(buckets.map((b) => b.labels.le)).toEqual([...RESPONSE_LATENCY_BUCKETS_MS.map(String), "+Inf"]);
    const at = (le: string) => buckets.find((b) => b.labels.le === le)?.value;
    // The 200s took 3, 7 and 150 ms, and the two gRPC calls (status 200 too) 5 ms each.
    expect(at("1")).toBe(0);
    expect(at("3")).toBe(1);
    expect(at("5")).toBe(3);
    expect(at("10")).toBe(4);
    expect(at("100")).toBe(4);
    expect(at("200")).toBe(5);
    expect(at("+Inf")).toBe(5);
    expect(value(families, "response_latency_ms_count", labels)).toBe(5);
    expect(value(families, "response_latency_ms_sum", labels)).toBe(170);
  });

  it("counts inbound authorization decisions with the policy labels of policy-semantics §8.8", () => {
    expect(
      value(families, "inbound_http_authz_allow_total", { ...target, ...srv, ...route, ...authz, ...webTls }),
    ).toBe(6);
    expect(value(families, "inbound_http_authz_deny_total", { ...target, ...srv, ...route, ...webTls })).toBe(
      1,
    );
    expect(value(families, "inbound_http_route_not_found_total", { ...target, ...srv, ...webTls })).toBe(1);
  });

  it("counts outbound requests per endpoint with server_id and dst_* labels, and retries", () => {
    const endpoint = (ip: string, pod: string) => ({
      direction: "outbound",
      authority: "authors.default.svc.cluster.local:7001",
      target_addr: `${ip}:7001`,
      target_ip: ip,
      target_port: "7001",
      tls: "true",
      server_id: AUTHORS,
      dst_namespace: "default",
      dst_pod: pod,
      dst_service: "authors",
    });
    expect(value(families, "request_total", endpoint("10.42.1.3", "authors-1"))).toBe(1);
    expect(
      value(families, "response_total", {
        ...endpoint("10.42.1.3", "authors-1"),
        status_code: "503",
        classification: "failure",
      }),
    ).toBe(1);
    expect(
      value(families, "response_total", {
        ...endpoint("10.42.1.4", "authors-2"),
        status_code: "200",
        classification: "success",
      }),
    ).toBe(1);
    expect(
      value(families, "outbound_http_route_retry_requests_total", {
        parent_group: "core",
        parent_kind: "Service",
        parent_namespace: "default",
        parent_name: "authors",
        parent_port: "7001",
        parent_section_name: "",
        hostname: "authors.default.svc.cluster.local",
        route_namespace: "default",
        route_group: "gateway.networking.k8s.io",
        route_kind: "HTTPRoute",
        route_name: "authors-get",
      }),
    ).toBe(1);
    expect(
      value(families, "response_total", {
        direction: "outbound",
        authority: "missing.default.svc.cluster.local:80",
        classification: "failure",
        error: "MESH_ERR_DESTINATION_NO_ENDPOINTS",
      }),
    ).toBe(1);
  });

  it("records the tcp_* families with the errno label on close", () => {
    const inbound = { direction: "inbound", peer: "src", target_port: "8080", ...webTls };
    expect(value(families, "tcp_open_total", inbound)).toBe(2);
    expect(value(families, "tcp_open_connections", inbound)).toBe(1);
    expect(value(families, "tcp_read_bytes_total", inbound)).toBe(100);
    expect(value(families, "tcp_write_bytes_total", inbound)).toBe(250);
    expect(value(families, "tcp_close_total", { ...inbound, errno: "" })).toBe(1);
    const outbound = {
      direction: "outbound",
      peer: "dst",
      target_port: "7001",
      tls: "true",
      server_id: AUTHORS,
    };
    expect(value(families, "tcp_close_total", { ...outbound, errno: "ECONNRESET" })).toBe(1);
    expect(value(families, "tcp_open_connections", outbound)).toBe(0);
    const plaintext = { target_port: "8080", tls: "no_identity", no_tls_reason: "no_tls_from_remote" };
    expect(value(families, "inbound_tcp_authz_deny_total", { ...target, ...srv, ...plaintext })).toBe(1);
    expect(
      value(families, "inbound_tcp_authz_allow_total", {
        ...target,
        ...srv,
        authz_group: "policy.linkerd.io",
        authz_kind: "authorizationpolicy",
        authz_name: "books-tcp",
        ...webTls,
      }),
    ).toBe(1);
    expect(value(families, "inbound_tcp_authz_terminate_total", { ...target, ...srv, ...webTls })).toBe(1);
    // Connections authorize nothing by themselves: only the published decisions count.
    expect(total(families, "inbound_tcp_authz_allow_total")).toBe(1);
  });

  it("exposes identity certificate expiry and refreshes", () => {
    expect(value(families, "control_identity_cert_expiration_timestamp_seconds", {})).toBe(1_900_000_000);
    expect(value(families, "control_identity_cert_refresh_timestamp_seconds", {})).toBe(NOW_MS / 1000);
    expect(value(families, "control_identity_cert_refreshes_total", { result: "ok" })).toBe(1);
    expect(value(families, "control_identity_cert_refreshes_total", { result: "error" })).toBe(1);
  });

  it("drops no series under normal traffic", () => {
    expect(total(families, "inmesh_metrics_series_dropped_total")).toBe(0);
  });

  it("stops recording after unsubscribe and keeps what it had", async () => {
    const other = createMeshMetrics();
    other.subscribe();
    inboundCall({});
    other.unsubscribe();
    other.unsubscribe();
    inboundCall({});
    const parsed = parsePrometheusText(other.render());
    expect(value(parsed, "request_total", inboundEndpoint)).toBe(1);
    expect(other.subscribed).toBe(false);
  });
});

describe("the identity pull source", () => {
  it("reads certificateExpiresAtMs at every scrape", () => {
    let expiresAtMs: number | undefined;
    const pulled = createMeshMetrics({ certificateExpiresAtMs: () => expiresAtMs });
    expect(
      samplesMatching(
        parsePrometheusText(pulled.render()),
        "control_identity_cert_expiration_timestamp_seconds",
      ),
    ).toEqual([]);
    expiresAtMs = 1_700_000_123_999;
    expect(
      value(parsePrometheusText(pulled.render()), "control_identity_cert_expiration_timestamp_seconds", {}),
    ).toBe(1_700_000_123);
  });
});

describe("options", () => {
  it("rejects bad options with MESH_ERR_INVALID_ARG", () => {
    for (const bad of [
      { maxSeriesPerFamily: 0 },
      { maxSeriesPerFamily: 1.5 },
      { maxSeriesPerFamily: Number.NaN },
      { maxLabelValueLength: 2 },
      { certificateExpiresAtMs: 5 as unknown as () => number },
    ]) {
      expect(() => createMeshMetrics(bad)).toThrow(
        expect.objectContaining({ code: MeshErrorCode.INVALID_ARG }),
      );
    }
  });

  it("never lets a telemetry failure reach the publisher", async () => {
    const guarded = createMeshMetrics();
    guarded.subscribe();
    try {
      const hostile = {
        get protocol(): never {
          throw new Error("boom");
        },
      };
      expect(() => meshChannel(MeshChannel.inboundCallEnd).publish(hostile as never)).not.toThrow();
      // diagnostics_channel rethrows a subscriber's error on the next tick; vitest would report it.
      await new Promise((resolve) => setImmediate(resolve));
    } finally {
      guarded.unsubscribe();
    }
  });

  it("keeps allowed decisions without a route (TCP-only or default policies) well formed", () => {
    const local = createMeshMetrics();
    local.subscribe();
    inboundCall({ decision: allowed({ route: undefined, authz: undefined }) });
    local.unsubscribe();
    const parsed = parsePrometheusText(local.render());
    expect(value(parsed, "inbound_http_authz_allow_total", { ...target, ...srv, ...webTls })).toBe(1);
  });
});
