import { createRequire } from "node:module";
import { context, propagation, trace } from "@opentelemetry/api";
import { afterAll, describe, expect, it } from "vitest";
import { inboundCall, outboundCall } from "../../../test/support/mesh-traffic.js";
import { type OtelBridge, registerOtel } from "../src/index.js";

const isOtelApi = (file: string) => /[/\\]@opentelemetry[/\\]api[/\\]/.test(file);

// Runs in its own process (vitest forks per file), so no global SDK is registered until the second test.
// The SDK is imported by the second test only: it loads the CommonJS build of the API, which the first
// test checks the bridge did not load.
let bridge: OtelBridge | undefined;
let shutdown: (() => Promise<void>) | undefined;

afterAll(async () => {
  bridge?.unregister();
  trace.disable();
  propagation.disable();
  context.disable();
  await shutdown?.();
});

describe("without an OpenTelemetry SDK", () => {
  it("creates nothing, sets no header and throws nothing", async () => {
    bridge = registerOtel();
    const errors: unknown[] = [];
    const onError = (error: unknown) => errors.push(error);
    process.on("uncaughtException", onError);
    try {
      const inbound = inboundCall({
        headers: { traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" },
      });
      // No span, context or scope is built for a call nobody records (the handler runs directly).
      expect(inbound.runInScope).toBeUndefined();
      const { headers } = outboundCall({ attempts: [{ endpointAddress: "10.0.0.1:80", statusCode: 200 }] });
      await new Promise((resolve) => setImmediate(resolve));
      expect(headers.size).toBe(0);
      expect(errors).toEqual([]);
      expect(trace.getActiveSpan()).toBeUndefined();
      // Nothing to record or propagate: the bridge has not even loaded its copy of the API (CommonJS).
      expect(Object.keys(createRequire(import.meta.url).cache).filter(isOtelApi)).toEqual([]);
    } finally {
      process.off("uncaughtException", onError);
    }
  });

  it("starts recording once an SDK is registered later, without registering the bridge again", async () => {
    const { AsyncLocalStorageContextManager } = await import("@opentelemetry/context-async-hooks");
    const { W3CTraceContextPropagator } = await import("@opentelemetry/core");
    const { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } = await import(
      "@opentelemetry/sdk-trace-base"
    );
    const exporter = new InMemorySpanExporter();
    const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
    shutdown = () => provider.shutdown();
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    propagation.setGlobalPropagator(new W3CTraceContextPropagator());
    trace.setGlobalTracerProvider(provider);
    const { headers } = outboundCall({ attempts: [{ endpointAddress: "10.0.0.1:80", statusCode: 200 }] });
    expect(exporter.getFinishedSpans().map((span) => span.name)).toEqual(["GET attempt", "GET"]);
    expect(headers.get("traceparent")).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
  });
});
