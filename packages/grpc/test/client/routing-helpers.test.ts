import { Metadata, status } from "@grpc/grpc-js";
import type { FailureAccrualPolicy, GrpcFilter, HttpFilter, OutboundPolicy } from "@inmesh/destination";
import { describe, expect, it } from "vitest";
import {
  backendPaths,
  grpcFailureAccrual,
  injectedFailure,
  isSynthesized,
  modifyRequestMetadata,
  noRouteStatus,
} from "../../src/client/routing.js";

const accrual: FailureAccrualPolicy = {
  kind: "consecutive",
  maxFailures: 3,
  backoff: { minMs: 1000, maxMs: 1000, jitterRatio: 0, respectRetryAfterHint: false },
  minReadyEndpoints: 0,
};

const balancer = (path: string) => ({
  backend: {
    metadata: {} as never,
    queue: { capacity: 100, failfastTimeoutMs: 3000 },
    target: {
      kind: "balancer" as const,
      path,
      load: { kind: "peak-ewma" as const, defaultRttMs: 30, decayMs: 10_000 },
    },
  },
  filters: [],
});

function grpcPolicy(paths: string[]): OutboundPolicy {
  return {
    kind: "policy",
    metadata: {} as never,
    protocol: {
      kind: "grpc",
      failureAccrual: accrual,
      routes: [
        {
          metadata: {} as never,
          hosts: [],
          rules: [
            {
              matches: [],
              filters: [],
              backends: {
                kind: "random-available",
                backends: paths.map((path) => ({ ...balancer(path), weight: 1 })),
              },
              timeouts: {},
              retry: undefined,
              allowL5dRequestHeaders: false,
            },
          ],
        },
      ],
    },
  };
}

describe("gRPC routing helpers", () => {
  it("applies request header modifiers to a copy of the metadata, leaving -bin names alone", () => {
    const metadata = new Metadata();
    metadata.set("x-keep", "1");
    metadata.set("x-drop", "2");
    metadata.set("x-replace", "old");
    const filter: GrpcFilter = {
      kind: "request-header-modifier",
      set: [
        ["x-replace", "new"],
        ["x-raw-bin", "nope"],
      ],
      add: [["x-added", "a"]],
      remove: ["x-drop"],
    };
    const modified = modifyRequestMetadata(metadata, [filter]);
    expect(modified).not.toBe(metadata);
    expect(modified.getMap()).toEqual({ "x-keep": "1", "x-replace": "new", "x-added": "a" });
    expect(metadata.get("x-drop")).toEqual(["2"]);
    expect(modifyRequestMetadata(metadata, [])).toBe(metadata);
  });

  it("leaves out what grpc-js metadata cannot carry instead of failing the call", () => {
    const filter: GrpcFilter = {
      kind: "request-header-modifier",
      set: [
        ["x-caf\u00e9", "name not allowed"],
        ["x-latin1", "caf\u00e9"],
        ["grpc-timeout", "1S"],
        ["x-ok", "fine"],
      ],
      add: [["x!bang", "v"]],
      remove: ["grpc-status"],
    };
    const modified = modifyRequestMetadata(new Metadata(), [filter]);
    expect(modified.getMap()).toEqual({ "x-ok": "fine" });
  });

  it("answers an injected failure with the filter's code and message, marked as the mesh's", () => {
    const always: GrpcFilter = { kind: "failure-injector", code: 8, message: "injected", ratio: 1 };
    const never: GrpcFilter = { ...always, ratio: 0 };
    const injected = injectedFailure([never, always]);
    expect(injected?.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(injected?.details).toBe("injected");
    expect(injected && isSynthesized(injected)).toBe(true);
    expect(injectedFailure([never])).toBeUndefined();
    const http: HttpFilter = { kind: "failure-injector", status: 503, message: "http", ratio: 1 };
    expect(injectedFailure([http])?.code).toBe(status.INTERNAL);
  });

  it("answers no route with NOT_FOUND and l5d-proxy-error; a server's status is not synthesized", () => {
    const answer = noRouteStatus("books.default.svc.cluster.local:8080");
    expect(answer.code).toBe(status.NOT_FOUND);
    expect(answer.metadata.get("l5d-proxy-error")[0]).toContain("no route");
    expect(isSynthesized({ code: status.UNAVAILABLE, details: "x", metadata: new Metadata() })).toBe(false);
  });

  it("takes failure accrual from the policy's gRPC or HTTP/2 routes, and names its backends", () => {
    const policy = grpcPolicy(["A.default.svc.cluster.local:8080", "b.default.svc.cluster.local:8080"]);
    expect(grpcFailureAccrual(policy)).toBe(accrual);
    expect(grpcFailureAccrual(undefined).kind).toBe("none");
    expect(grpcFailureAccrual({ kind: "none", reason: "not-found" }).kind).toBe("none");
    const detect: OutboundPolicy = {
      ...policy,
      protocol: {
        kind: "detect",
        timeoutMs: 10_000,
        http1: { routes: [], failureAccrual: { kind: "none" } },
        http2: { routes: [], failureAccrual: accrual },
        opaque: [],
      },
    };
    expect(grpcFailureAccrual(detect)).toBe(accrual);
    expect([...backendPaths(policy)]).toEqual([
      "a.default.svc.cluster.local:8080",
      "b.default.svc.cluster.local:8080",
    ]);
  });
});
