import { context, propagation, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from "@opentelemetry/sdk-trace-base";
import { afterAll, describe, expect, it } from "vitest";
import { inboundCall, outboundCall } from "../../../test/support/mesh-traffic.js";
import { type OtelBridge, registerOtel } from "../src/index.js";

// Runs in its own process (vitest forks per file), so no global SDK is registered until the second test.
let bridge: OtelBridge | undefined;
const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });

afterAll(async () => {
  bridge?.unregister();
  trace.disable();
  propagation.disable();
  context.disable();
  await provider.shutdown();
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
    } finally {
      process.off("uncaughtException", onError);
    }
  });

  it("starts recording once an SDK is registered later, without registering the bridge again", () => {
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    propagation.setGlobalPropagator(new W3CTraceContextPropagator());
    trace.setGlobalTracerProvider(provider);
    const { headers } = outboundCall({ attempts: [{ endpointAddress: "10.0.0.1:80", statusCode: 200 }] });
    expect(exporter.getFinishedSpans().map((span) => span.name)).toEqual(["GET attempt", "GET"]);
    expect(headers.get("traceparent")).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
  });
});
