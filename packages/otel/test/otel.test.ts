import { DestinationError, MeshChannel, MeshErrorCode, meshChannel } from "@inmesh/core";
import { context, propagation, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
} from "@opentelemetry/sdk-trace-base";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { allowed, denied, inboundCall, meshPeer, outboundCall } from "../../../test/support/mesh-traffic.js";
import { createOtelBridge, type OtelBridge, registerOtel } from "../src/index.js";

const WEB = "web.default.serviceaccount.identity.linkerd.cluster.local";
const AUTHORS = "authors.default.serviceaccount.identity.linkerd.cluster.local";
const TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID = "00f067aa0ba902b7";

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
const contextManager = new AsyncLocalStorageContextManager();
let bridge: OtelBridge;

beforeAll(() => {
  context.setGlobalContextManager(contextManager.enable());
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  trace.setGlobalTracerProvider(provider);
  bridge = registerOtel();
});

afterEach(() => {
  exporter.reset();
});

afterAll(async () => {
  bridge.unregister();
  trace.disable();
  propagation.disable();
  context.disable();
  await provider.shutdown();
});

function spans(): ReadableSpan[] {
  return exporter.getFinishedSpans();
}

function only(kind: SpanKind): ReadableSpan {
  const found = spans().filter((span) => span.kind === kind);
  expect(found).toHaveLength(1);
  return found[0]!;
}

describe("inbound calls", () => {
  it("are SERVER spans parented from the incoming traceparent, with HTTP and mesh attributes", () => {
    inboundCall({
      method: "GET",
      path: "/books/42?expand=author",
      authority: "books.default.svc.cluster.local:8080",
      headers: { traceparent: `00-${TRACE_ID}-${PARENT_SPAN_ID}-01`, "user-agent": "curl/8.5.0" },
      peer: meshPeer(WEB),
      statusCode: 200,
    });
    const span = only(SpanKind.SERVER);
    expect(span.name).toBe("GET");
    expect(span.spanContext().traceId).toBe(TRACE_ID);
    expect(span.parentSpanContext?.spanId).toBe(PARENT_SPAN_ID);
    expect(span.parentSpanContext?.isRemote).toBe(true);
    expect(span.attributes).toEqual({
      "http.request.method": "GET",
      "url.path": "/books/42",
      "url.scheme": "https",
      "server.address": "books.default.svc.cluster.local",
      "server.port": 8080,
      "client.address": "10.42.0.9",
      "network.protocol.name": "http",
      "network.protocol.version": "1.1",
      "user_agent.original": "curl/8.5.0",
      "http.response.status_code": 200,
      "mesh.peer.identity": WEB,
      "mesh.peer.tls": "mesh",
      "mesh.policy.allowed": true,
      "mesh.policy.server": "books-http",
      "mesh.policy.route": "books-read",
      "mesh.policy.authz": "books-from-web",
    });
    expect(span.status.code).toBe(SpanStatusCode.UNSET);
    expect(span.ended).toBe(true);
  });

  it("start a new trace without a traceparent, and report denials and server errors", () => {
    inboundCall({
      peer: { kind: "none", reason: "no_tls_from_remote" },
      decision: denied("unauthorized"),
      statusCode: 403,
    });
    inboundCall({ decision: allowed(), statusCode: 503 });
    const [deniedSpan, failed] = spans();
    expect(deniedSpan!.parentSpanContext).toBeUndefined();
    expect(deniedSpan!.attributes).toMatchObject({
      "url.scheme": "http",
      "mesh.peer.tls": "no_tls_from_remote",
      "mesh.policy.allowed": false,
      "mesh.policy.reason": "unauthorized",
      "http.response.status_code": 403,
    });
    expect(deniedSpan!.attributes["mesh.peer.identity"]).toBeUndefined();
    expect(deniedSpan!.attributes["mesh.policy.authz"]).toBeUndefined();
    // A 4xx is the client's problem, not a server error.
    expect(deniedSpan!.status.code).toBe(SpanStatusCode.UNSET);
    expect(failed!.status.code).toBe(SpanStatusCode.ERROR);
    expect(failed!.attributes["error.type"]).toBe("503");
  });

  it("are named and described as gRPC calls for gRPC", () => {
    inboundCall({ protocol: "grpc", method: "POST", path: "/books.v1.Books/Get", grpcStatus: 14 });
    inboundCall({ protocol: "grpc", method: "POST", path: "/books.v1.Books/Get", grpcStatus: 5 });
    const [unavailable, notFound] = spans();
    expect(unavailable!.name).toBe("books.v1.Books/Get");
    expect(unavailable!.attributes).toMatchObject({
      "rpc.system": "grpc",
      "rpc.service": "books.v1.Books",
      "rpc.method": "Get",
      "rpc.grpc.status_code": 14,
      "network.protocol.version": "2",
      "error.type": "14",
    });
    expect(unavailable!.status.code).toBe(SpanStatusCode.ERROR);
    // NOT_FOUND is not a server error for semconv.
    expect(notFound!.status.code).toBe(SpanStatusCode.UNSET);
  });

  it("report unknown methods as _OTHER", () => {
    inboundCall({ method: "PROPFIND" });
    const span = only(SpanKind.SERVER);
    expect(span.name).toBe("HTTP");
    expect(span.attributes["http.request.method"]).toBe("_OTHER");
    expect(span.attributes["http.request.method_original"]).toBe("PROPFIND");
  });
});

describe("outbound calls", () => {
  it("are CLIENT spans under the active span, inject traceparent, and have a child span per attempt", () => {
    const tracer = trace.getTracer("app");
    const appSpan = tracer.startSpan("handle order");
    const { headers } = context.with(trace.setSpan(context.active(), appSpan), () =>
      outboundCall({
        method: "get",
        path: "/authors/1?Signature=secret&page=2",
        route: { group: "gateway.networking.k8s.io", kind: "HTTPRoute", name: "authors-get" },
        attempts: [
          { endpointAddress: "10.42.1.3:7001", serverIdentity: AUTHORS, statusCode: 503 },
          { endpointAddress: "10.42.1.4:7001", serverIdentity: AUTHORS, statusCode: 200 },
        ],
      }),
    );
    appSpan.end();

    const client = only(SpanKind.CLIENT);
    expect(client.name).toBe("GET");
    expect(client.parentSpanContext?.spanId).toBe(appSpan.spanContext().spanId);
    expect(client.spanContext().traceId).toBe(appSpan.spanContext().traceId);
    expect(client.attributes).toEqual({
      "http.request.method": "GET",
      "url.full": "http://authors.default.svc.cluster.local:7001/authors/1?Signature=REDACTED&page=2",
      "server.address": "authors.default.svc.cluster.local",
      "server.port": 7001,
      "network.protocol.name": "http",
      "http.response.status_code": 200,
      "mesh.attempts": 2,
      "mesh.route": "authors-get",
    });
    expect(client.status.code).toBe(SpanStatusCode.UNSET);

    // The header carries the CLIENT span, so the server's span is its child.
    const { traceId, spanId } = client.spanContext();
    expect(headers.get("traceparent")).toBe(`00-${traceId}-${spanId}-01`);

    const attempts = spans()
      .filter((span) => span.kind === SpanKind.INTERNAL && span.name !== "handle order")
      .sort((a, b) => Number(a.attributes["mesh.attempt"]) - Number(b.attributes["mesh.attempt"]));
    expect(attempts).toHaveLength(2);
    for (const attempt of attempts) {
      expect(attempt.name).toBe("GET attempt");
      expect(attempt.parentSpanContext?.spanId).toBe(spanId);
      expect(attempt.spanContext().traceId).toBe(traceId);
      expect(attempt.attributes["mesh.server.identity"]).toBe(AUTHORS);
      expect(attempt.attributes["network.peer.port"]).toBe(7001);
    }
    const [first, retry] = attempts;
    expect(first!.attributes).toMatchObject({ "mesh.attempt": 1, "network.peer.address": "10.42.1.3" });
    expect(first!.attributes["http.request.resend_count"]).toBeUndefined();
    expect(first!.status.code).toBe(SpanStatusCode.ERROR);
    expect(first!.attributes["error.type"]).toBe("503");
    expect(retry!.attributes).toMatchObject({
      "mesh.attempt": 2,
      "http.request.resend_count": 1,
      "network.peer.address": "10.42.1.4",
      "http.response.status_code": 200,
    });
    expect(retry!.status.code).toBe(SpanStatusCode.UNSET);
  });

  it("record errors that happen before any attempt", () => {
    const { headers } = outboundCall({
      attempts: [],
      error: new DestinationError(MeshErrorCode.DESTINATION_NO_ENDPOINTS, "no endpoints for authors"),
    });
    const client = only(SpanKind.CLIENT);
    expect(client.parentSpanContext).toBeUndefined();
    expect(client.status.code).toBe(SpanStatusCode.ERROR);
    expect(client.attributes["error.type"]).toBe("MESH_ERR_DESTINATION_NO_ENDPOINTS");
    expect(client.events.map((event) => event.name)).toEqual(["exception"]);
    expect(headers.has("traceparent")).toBe(true);
  });

  it("treat any gRPC status but OK as a client error", () => {
    outboundCall({
      protocol: "grpc",
      method: "POST",
      path: "/authors.v1.Authors/List",
      attempts: [{ endpointAddress: "[fd00::7]:7002", statusCode: 200, grpcStatus: 5 }],
    });
    const client = only(SpanKind.CLIENT);
    expect(client.name).toBe("authors.v1.Authors/List");
    expect(client.attributes).toMatchObject({
      "rpc.system": "grpc",
      "rpc.service": "authors.v1.Authors",
      "rpc.method": "List",
      "rpc.grpc.status_code": 5,
      "error.type": "5",
    });
    const attempt = only(SpanKind.INTERNAL);
    expect(attempt.attributes["network.peer.address"]).toBe("fd00::7");
    expect(attempt.attributes["mesh.server.identity"]).toBeUndefined();
  });
});

describe("the bridge", () => {
  it("never lets an exception reach the publisher", async () => {
    const hostile = {
      get authority(): never {
        throw new Error("boom");
      },
    };
    expect(() => meshChannel(MeshChannel.outboundCallStart).publish(hostile as never)).not.toThrow();
    expect(() => meshChannel(MeshChannel.inboundCallEnd).publish({} as never)).not.toThrow();
    // diagnostics_channel would rethrow a subscriber's error on the next tick; vitest would report it.
    await new Promise((resolve) => setImmediate(resolve));
    expect(spans()).toEqual([]);
  });

  it("stops creating spans after unregister, and register is idempotent", () => {
    const other = new InMemorySpanExporter();
    const otherProvider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(other)] });
    const local = createOtelBridge({
      tracerProvider: otherProvider,
      propagator: new W3CTraceContextPropagator(),
    });
    local.register();
    local.register();
    inboundCall({});
    expect(other.getFinishedSpans()).toHaveLength(1);
    local.unregister();
    local.unregister();
    expect(local.registered).toBe(false);
    inboundCall({});
    expect(other.getFinishedSpans()).toHaveLength(1);
    // The globally registered bridge saw both calls.
    expect(spans()).toHaveLength(2);
  });

  it("rejects bad options", () => {
    expect(() => createOtelBridge({ tracerProvider: {} as never })).toThrow(
      expect.objectContaining({ code: MeshErrorCode.INVALID_ARG }),
    );
    expect(() => createOtelBridge({ propagator: { inject() {} } as never })).toThrow(
      expect.objectContaining({ code: MeshErrorCode.INVALID_ARG }),
    );
  });
});
