import { context, propagation, SpanKind, trace } from "@opentelemetry/api";
import { InMemorySpanExporter } from "@opentelemetry/sdk-trace-base";
import { expect, it } from "vitest";
import { inboundCall } from "../../../test/support/mesh-traffic.js";
import { setUpTracing } from "./readme-example.js";

it("the README example runs", async () => {
  const exporter = new InMemorySpanExporter();
  const stop = setUpTracing(exporter);
  try {
    inboundCall({ path: "/books" });
    expect(exporter.getFinishedSpans().map((span) => span.kind)).toEqual([SpanKind.SERVER]);
  } finally {
    await stop();
    trace.disable();
    propagation.disable();
    context.disable();
  }
});
