import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { type ControlPlane, startControlPlane } from "@inmesh/control-plane";
import { createMesh, type Mesh } from "@inmesh/mesh";
import { type OtelBridge, registerOtel } from "@inmesh/otel";
import { freeLoopbackPort } from "@inmesh/testing/ports";
import { context, propagation, SpanKind, trace } from "@opentelemetry/api";
import { InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { NodeTracerProvider } from "@opentelemetry/sdk-trace-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

// The @inmesh/otel README with createMesh(), on the real OpenTelemetry SDK, across two meshed services:
// web calls books, books' handler does its own work in a child span and calls web back. One trace,
// every span exported once, each hop parented on the one before.

const WEB_IP = "127.0.15.1";
const BOOKS_IP = "127.0.15.2";

function manifests(webPort: number, booksPort: number) {
  const pod = (name: string, app: string, ip: string, port: number) => `apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: shop, labels: { app: ${app}, linkerd.io/control-plane-ns: linkerd } }
spec:
  serviceAccountName: ${app}
  containers: [{ name: app, ports: [{ name: http, containerPort: ${port} }] }]
status: { podIP: ${ip} }
---
apiVersion: v1
kind: Service
metadata: { name: ${app}, namespace: shop }
spec:
  selector: { app: ${app} }
  ports: [{ name: http, port: 80, targetPort: http }]
`;
  return [
    {
      path: "shop.yaml",
      text: `apiVersion: v1
kind: Namespace
metadata: { name: shop }
---
${pod("web-0", "web", WEB_IP, webPort)}---
${pod("books-0", "books", BOOKS_IP, booksPort)}`,
    },
  ];
}

describe("one trace across two meshed services (OpenTelemetry SDK)", () => {
  let dir: string;
  let controlPlane: ControlPlane;
  let provider: NodeTracerProvider;
  let bridge: OtelBridge;
  const exporter = new InMemorySpanExporter();
  const meshes: Mesh[] = [];

  beforeAll(async () => {
    // The README's setup: the SDK (context manager, W3C propagator, provider), then registerOtel().
    provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
    provider.register();
    bridge = registerOtel();

    dir = await mkdtemp(path.join(tmpdir(), "inmesh-tracing-"));
    const webPort = await freeLoopbackPort(WEB_IP);
    const booksPort = await freeLoopbackPort(BOOKS_IP);
    controlPlane = await startControlPlane({
      manifests: manifests(webPort, booksPort),
      stateDir: dir,
      ports: { identity: 0, destination: 0, policy: 0 },
      watch: false,
    });
    // Each service with createMesh() and its defaults (tracing on), as the mesh README shows.
    const web = createMesh({
      env: (await controlPlane.writeEnv("web-0", { namespace: "shop" })).variables,
      admin: false,
    });
    const books = createMesh({
      env: (await controlPlane.writeEnv("books-0", { namespace: "shop" })).variables,
      admin: false,
    });
    meshes.push(web, books);
    const tracer = trace.getTracer("books-app");
    await web.createServer((_req, res) => res.end("pong"), { port: webPort }).listen(webPort, WEB_IP);
    await books
      .createServer(
        (_req, res) => {
          // The handler's own work, in a child span of whatever is active: the SERVER span.
          tracer.startActiveSpan("load books", async (span) => {
            const response = await books.fetch("http://web.shop.svc.cluster.local/ping");
            await response.text();
            span.end();
            res.end("books");
          });
        },
        { port: booksPort },
      )
      .listen(booksPort, BOOKS_IP);
    await Promise.all(meshes.map((mesh) => mesh.ready({ timeoutMs: 15_000 })));
  });

  afterAll(async () => {
    await Promise.allSettled(meshes.map((mesh) => mesh.close()));
    bridge?.unregister();
    await provider?.shutdown();
    await controlPlane?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
    context.disable();
    propagation.disable();
    trace.disable();
  });

  it("client → server → handler child → outbound client → server, one trace, each span once", async () => {
    exporter.reset();
    const response = await meshes[0]!.fetch("http://books.shop.svc.cluster.local/books");
    expect(await response.text()).toBe("books");
    // The last server span ends when its response closes, just after the client saw the body.
    await expect
      .poll(() => exporter.getFinishedSpans().filter((span) => span.kind === SpanKind.SERVER).length)
      .toBe(2);

    const spans = exporter.getFinishedSpans();
    const ids = spans.map((span) => span.spanContext().spanId);
    expect(new Set(ids).size).toBe(ids.length);
    expect(new Set(spans.map((span) => span.spanContext().traceId)).size).toBe(1);

    const byId = new Map(spans.map((span) => [span.spanContext().spanId, span]));
    const parentOf = (span: ReadableSpan) => byId.get(span.parentSpanContext?.spanId ?? "");
    const only = (predicate: (span: ReadableSpan) => boolean, what: string) => {
      const found = spans.filter(predicate);
      expect(found, `${what}: ${spans.map((span) => `${span.name}/${span.kind}`).join(", ")}`).toHaveLength(
        1,
      );
      return found[0] as ReadableSpan;
    };
    const isClient = (span: ReadableSpan) => span.kind === SpanKind.CLIENT;
    const isServer = (span: ReadableSpan) => span.kind === SpanKind.SERVER;

    const webClient = only((span) => isClient(span) && parentOf(span) === undefined, "root client span");
    expect(webClient.parentSpanContext).toBeUndefined();
    const booksServer = only(
      (span) => isServer(span) && span.attributes["url.path"] === "/books",
      "books server span",
    );
    const handlerSpan = only((span) => span.name === "load books", "handler span");
    const booksClient = only((span) => isClient(span) && parentOf(span) === handlerSpan, "books client span");
    const webServer = only(
      (span) => isServer(span) && span.attributes["url.path"] === "/ping",
      "web server span",
    );

    // Server spans hang off the client span (or its attempt span), as propagated in traceparent.
    const callOf = (span: ReadableSpan) => {
      const parent = parentOf(span);
      return parent?.kind === SpanKind.INTERNAL ? parentOf(parent) : parent;
    };
    expect(callOf(booksServer)).toBe(webClient);
    expect(parentOf(handlerSpan)).toBe(booksServer);
    expect(booksClient.attributes["url.full"]).toMatch(
      /^http:\/\/web\.shop\.svc\.cluster\.local(:80)?\/ping$/,
    );
    expect(callOf(webServer)).toBe(booksClient);
    expect(spans.filter(isServer)).toHaveLength(2);
    expect(spans.filter(isClient)).toHaveLength(2);
  });
});
