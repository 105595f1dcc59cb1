import { spawnSync } from "node:child_process";
import { MeshChannel, meshChannel } from "@inmesh/core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { outboundCall } from "../../../test/support/mesh-traffic.js";
import { type AdminServer, createMeshMetrics, type MeshMetrics, startAdminServer } from "../src/index.js";
import { type MetricFamily, parsePrometheusText, samplesMatching, value } from "./prom-text.js";

// The families and label sets linkerd-viz queries (viz/cmd/stat-outbound.go, viz/metrics-api), recorded
// from known traffic, scraped over HTTP, and checked by Prometheus' own `promtool check metrics`.
const PROMTOOL = spawnSync("promtool", ["--version"]).status === 0;

const PARENT = {
  parent_group: "core",
  parent_kind: "Service",
  parent_namespace: "bookshop",
  parent_name: "books",
  parent_port: "80",
  parent_section_name: "",
};
const ROUTE = {
  route_group: "gateway.networking.k8s.io",
  route_kind: "HTTPRoute",
  route_namespace: "bookshop",
  route_name: "books-writes",
};
const BACKEND = {
  backend_group: "core",
  backend_kind: "Service",
  backend_namespace: "bookshop",
  backend_name: "books-flaky",
  backend_port: "80",
  backend_section_name: "",
};

let metrics: MeshMetrics;
let server: AdminServer;
let text: string;
let families: Map<string, MetricFamily>;

beforeAll(async () => {
  metrics = createMeshMetrics();
  metrics.subscribe();
  server = await startAdminServer({ port: 0, metrics });
  // An HTTP write retried once (503 then 201) through an HTTPRoute whose backend is books-flaky.
  outboundCall({
    authority: "books.bookshop.svc.cluster.local:80",
    method: "POST",
    route: { group: ROUTE.route_group, kind: ROUTE.route_kind, name: ROUTE.route_name },
    attempts: [
      {
        endpointAddress: "10.42.0.7:8080",
        serverIdentity: "books.bookshop.serviceaccount.identity.linkerd.cluster.local",
        endpointLabels: { namespace: "bookshop", service: "books-flaky", pod: "books-flaky-0" },
        statusCode: 503,
        durationMs: 30,
      },
      {
        endpointAddress: "10.42.0.7:8080",
        serverIdentity: "books.bookshop.serviceaccount.identity.linkerd.cluster.local",
        endpointLabels: { namespace: "bookshop", service: "books-flaky", pod: "books-flaky-0" },
        statusCode: 201,
        durationMs: 40,
      },
    ],
  });
  // A gRPC call on the default route, answered UNAVAILABLE.
  outboundCall({
    protocol: "grpc",
    authority: "authors.bookshop.svc.cluster.local:50051",
    method: "POST",
    path: "/bookshop.authors.v1.Authors/GetAuthor",
    attempts: [
      {
        endpointAddress: "10.42.0.9:7083",
        serverIdentity: "authors.bookshop.serviceaccount.identity.linkerd.cluster.local",
        endpointLabels: { namespace: "bookshop", service: "authors", pod: "authors-0" },
        grpcStatus: 14,
        durationMs: 5,
      },
    ],
  });
  meshChannel(MeshChannel.identityChanged).publish({
    status: "ready",
    expiresAtMs: 1_900_000_000_000,
    serial: "01",
  });
  const response = await fetch(`${server.url}/metrics`);
  text = await response.text();
  families = parsePrometheusText(text);
});

afterAll(async () => {
  metrics.unsubscribe();
  await server.close();
});

describe("the families linkerd-viz reads", () => {
  it.runIf(PROMTOOL)("pass promtool check metrics (parsing and lint)", () => {
    const result = spawnSync("promtool", ["check", "metrics"], { input: text, encoding: "utf8" });
    // promtool exits 1 on a parse error and 3 on lint findings. The only finding allowed is the one
    // linkerd2-proxy itself earns: its legacy `response_latency_ms` name, which viz queries as is.
    const findings = `${result.stdout}${result.stderr}`.split("\n").filter((line) => line !== "");
    expect(findings).toEqual(["response_latency_ms metric names should not contain abbreviated units"]);
    expect(result.status).toBe(3);
    // Without that family the exposition is clean.
    const clean = text
      .split("\n")
      .filter((line) => !/^(# (HELP|TYPE) )?response_latency_ms/.test(line))
      .join("\n");
    const strict = spawnSync("promtool", ["check", "metrics"], { input: clean, encoding: "utf8" });
    expect(`${strict.stdout}${strict.stderr}`).toBe("");
    expect(strict.status).toBe(0);
  });

  it("process_* (the pod list queries max(process_start_time_seconds) by pod)", () => {
    const startTime = value(families, "process_start_time_seconds", {});
    expect(startTime * 1000).toBeLessThanOrEqual(Date.now());
    expect(startTime * 1000).toBeGreaterThan(Date.now() - 24 * 3_600_000);
    expect(value(families, "process_cpu_seconds_total", {})).toBeGreaterThan(0);
    expect(value(families, "process_resident_memory_bytes", {})).toBeGreaterThan(1024 * 1024);
    expect(families.get("process_cpu_seconds_total")?.type).toBe("counter");
    if (process.platform === "linux") {
      expect(value(families, "process_open_fds", {})).toBeGreaterThan(2);
      expect(value(families, "process_max_fds", {})).toBeGreaterThan(value(families, "process_open_fds", {}));
    }
  });

  it("the identity certificate expiry under its new and old name", () => {
    expect(value(families, "control_identity_cert_expiration_timestamp_seconds", {})).toBe(1_900_000_000);
    expect(value(families, "identity_cert_expiration_timestamp_seconds", {})).toBe(1_900_000_000);
  });

  it("outbound_http_route_* with stat-outbound's labels", () => {
    const hostname = { hostname: "books.bookshop.svc.cluster.local" };
    expect(
      value(families, "outbound_http_route_request_statuses_total", {
        ...PARENT,
        ...ROUTE,
        ...hostname,
        http_status: "201",
        error: "",
      }),
    ).toBe(1);
    expect(
      value(families, "outbound_http_route_retry_requests_total", { ...PARENT, ...ROUTE, ...hostname }),
    ).toBe(1);
    expect(
      value(families, "outbound_http_route_request_duration_seconds_count", {
        ...PARENT,
        ...ROUTE,
        ...hostname,
      }),
    ).toBe(1);
    expect(
      value(families, "outbound_http_route_request_duration_seconds_bucket", {
        ...PARENT,
        ...ROUTE,
        ...hostname,
        le: "0.05",
      }),
    ).toBe(0);
    expect(
      value(families, "outbound_http_route_request_duration_seconds_bucket", {
        ...PARENT,
        ...ROUTE,
        ...hostname,
        le: "0.5",
      }),
    ).toBe(1);
    for (const [status, count] of [
      ["503", 1],
      ["201", 1],
    ] as const) {
      expect(
        value(families, "outbound_http_route_backend_response_statuses_total", {
          ...PARENT,
          ...ROUTE,
          ...BACKEND,
          http_status: status,
          error: "",
        }),
      ).toBe(count);
    }
    expect(
      value(families, "outbound_http_route_backend_requests_total", { ...PARENT, ...ROUTE, ...BACKEND }),
    ).toBe(2);
    expect(
      value(families, "outbound_http_route_backend_response_duration_seconds_count", {
        ...PARENT,
        ...ROUTE,
        ...BACKEND,
      }),
    ).toBe(2);
  });

  it("outbound_grpc_route_* with grpc_status names and the default route", () => {
    const parent = { ...PARENT, parent_name: "authors", parent_port: "50051" };
    const route = { route_group: "", route_kind: "default", route_namespace: "", route_name: "grpc" };
    expect(
      value(families, "outbound_grpc_route_request_statuses_total", {
        ...parent,
        ...route,
        hostname: "authors.bookshop.svc.cluster.local",
        grpc_status: "UNAVAILABLE",
        error: "",
      }),
    ).toBe(1);
    expect(
      value(families, "outbound_grpc_route_backend_response_statuses_total", {
        ...parent,
        ...route,
        ...BACKEND,
        backend_name: "authors",
        backend_port: "50051",
        grpc_status: "UNAVAILABLE",
        error: "",
      }),
    ).toBe(1);
    expect(
      samplesMatching(families, "outbound_grpc_route_backend_response_duration_seconds_bucket"),
    ).not.toEqual([]);
    expect(samplesMatching(families, "outbound_grpc_route_request_duration_seconds_bucket")).not.toEqual([]);
    expect(families.get("outbound_grpc_route_retry_requests_total")?.type).toBe("counter");
  });

  it("every label stat-outbound groups by is on each family it queries", () => {
    const queries: [string, string[]][] = [
      [
        "outbound_http_route_backend_response_statuses_total",
        ["backend_name", "backend_port", "http_status", "error"],
      ],
      [
        "outbound_http_route_backend_response_duration_seconds_bucket",
        ["backend_name", "backend_port", "le"],
      ],
      ["outbound_http_route_request_statuses_total", ["http_status", "error"]],
      ["outbound_http_route_retry_requests_total", []],
      ["outbound_http_route_request_duration_seconds_bucket", ["le"]],
      [
        "outbound_grpc_route_backend_response_statuses_total",
        ["backend_name", "backend_port", "grpc_status", "error"],
      ],
      [
        "outbound_grpc_route_backend_response_duration_seconds_bucket",
        ["backend_name", "backend_port", "le"],
      ],
      ["outbound_grpc_route_request_statuses_total", ["grpc_status", "error"]],
      ["outbound_grpc_route_request_duration_seconds_bucket", ["le"]],
    ];
    for (const [name, extra] of queries) {
      const samples = samplesMatching(families, name);
      expect(samples.length, name).toBeGreaterThan(0);
      for (const sample of samples) {
        for (const label of ["parent_name", "parent_port", "route_name", "route_kind", ...extra]) {
          expect(Object.keys(sample.labels), `${name} ${label}`).toContain(label);
        }
      }
    }
  });
});
