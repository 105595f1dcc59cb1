import { registerOtel } from "@inmesh/otel";
import { context, propagation, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { BasicTracerProvider, SimpleSpanProcessor, type SpanExporter } from "@opentelemetry/sdk-trace-base";

export function setUpTracing(exporter: SpanExporter) {
  // Your SDK setup (usually @opentelemetry/sdk-node does all three).
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  trace.setGlobalTracerProvider(provider);

  // Spans for every inbound call, outbound call and retry attempt made through inmesh.
  const bridge = registerOtel();

  return async () => {
    bridge.unregister();
    await provider.shutdown();
  };
}
