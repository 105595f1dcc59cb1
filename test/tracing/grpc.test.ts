import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import {
  type Client,
  makeGenericClientConstructor,
  Server,
  type ServiceDefinition,
  type ServiceError,
} from "@grpc/grpc-js";
import { type ControlPlane, startControlPlane } from "@inmesh/control-plane";
import { createMeshConnectionInjector, createMeshGrpcChannel, meshClientArguments } from "@inmesh/grpc";
import { createMesh, type Mesh } from "@inmesh/mesh";
import { freeLoopbackPort } from "@inmesh/testing/ports";
import { context, propagation, SpanKind, trace } from "@opentelemetry/api";
import { InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { NodeTracerProvider } from "@opentelemetry/sdk-trace-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

// gRPC too: a grpc-js client over a mesh channel calls a grpc-js server behind the mesh; the server span
// continues the client's trace (traceparent in metadata) and the handler runs inside it.

const WEB_IP = "127.0.15.11";
const AUTHORS_IP = "127.0.15.12";

const identityCodec = {
  requestSerialize: (value: Buffer) => value,
  requestDeserialize: (value: Buffer) => value,
  responseSerialize: (value: Buffer) => value,
  responseDeserialize: (value: Buffer) => value,
};
const AuthorsService: ServiceDefinition = {
  get: { path: "/shop.Authors/Get", requestStream: false, responseStream: false, ...identityCodec },
};
type AuthorsClient = Client & {
  get(request: Buffer, callback: (error: ServiceError | null, value?: Buffer) => void): unknown;
};
const Authors = makeGenericClientConstructor(AuthorsService, "Authors") as unknown as new (
  ...args: ReturnType<typeof meshClientArguments>
) => AuthorsClient;

function manifests(authorsPort: number) {
  return [
    {
      path: "shop.yaml",
      text: `apiVersion: v1
kind: Namespace
metadata: { name: shop }
---
apiVersion: v1
kind: Pod
metadata: { name: web-0, namespace: shop, labels: { app: web, linkerd.io/control-plane-ns: linkerd } }
spec: { serviceAccountName: web, containers: [{ name: app }] }
status: { podIP: ${WEB_IP} }
---
apiVersion: v1
kind: Pod
metadata: { name: authors-0, namespace: shop, labels: { app: authors, linkerd.io/control-plane-ns: linkerd } }
spec:
  serviceAccountName: authors
  containers: [{ name: app, ports: [{ name: grpc, containerPort: ${authorsPort} }] }]
status: { podIP: ${AUTHORS_IP} }
---
apiVersion: v1
kind: Service
metadata: { name: authors, namespace: shop }
spec:
  selector: { app: authors }
  ports: [{ name: grpc, port: 80, targetPort: grpc }]
`,
    },
  ];
}

describe("one trace across a gRPC call (OpenTelemetry SDK)", () => {
  let dir: string;
  let controlPlane: ControlPlane;
  let provider: NodeTracerProvider;
  const exporter = new InMemorySpanExporter();
  const meshes: Mesh[] = [];
  const grpcServer = new Server();

  beforeAll(async () => {
    provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
    provider.register();
    dir = await mkdtemp(path.join(tmpdir(), "inmesh-tracing-grpc-"));
    const authorsPort = await freeLoopbackPort(AUTHORS_IP);
    controlPlane = await startControlPlane({
      manifests: manifests(authorsPort),
      stateDir: dir,
      ports: { identity: 0, destination: 0, policy: 0 },
      watch: false,
    });
    const envOf = async (pod: string) => (await controlPlane.writeEnv(pod, { namespace: "shop" })).variables;
    const web = createMesh({ env: await envOf("web-0"), admin: false });
    const authors = createMesh({ env: await envOf("authors-0"), admin: false });
    meshes.push(web, authors);

    const tracer = trace.getTracer("authors-app");
    grpcServer.addService(AuthorsService, {
      get(_call: unknown, done: (error: null, value: Buffer) => void) {
        tracer.startActiveSpan("lookup author", (span) => {
          span.end();
          done(null, Buffer.from("Le Guin"));
        });
      },
    });
    const injector = createMeshConnectionInjector(grpcServer, {
      identity: authors.identity,
      policy: authors.policy,
      port: authorsPort,
    });
    await authors
      .createServer(undefined, { port: authorsPort, onHttp2Connection: injector.injectConnection })
      .listen(authorsPort, AUTHORS_IP);
    await Promise.all(meshes.map((mesh) => mesh.ready({ timeoutMs: 15_000 })));
  });

  afterAll(async () => {
    await Promise.allSettled(meshes.map((mesh) => mesh.close()));
    grpcServer.forceShutdown();
    await provider?.shutdown();
    await controlPlane?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
    context.disable();
    propagation.disable();
    trace.disable();
  });

  it("client span → server span (from metadata) → the handler's child span, each once", async () => {
    const web = meshes[0] as Mesh;
    const channel = createMeshGrpcChannel({
      target: "authors.shop.svc.cluster.local:80",
      identity: web.identity,
      discovery: web.discovery!,
    });
    const client = new Authors(...meshClientArguments(channel));
    try {
      const reply = await new Promise<Buffer | undefined>((resolve, reject) =>
        client.get(Buffer.from("1"), (error, value) => (error ? reject(error) : resolve(value))),
      );
      expect(String(reply)).toBe("Le Guin");
    } finally {
      client.close();
      channel.close();
    }
    await expect
      .poll(() => exporter.getFinishedSpans().filter((span) => span.kind === SpanKind.SERVER).length)
      .toBe(1);

    const spans = exporter.getFinishedSpans();
    const ids = spans.map((span) => span.spanContext().spanId);
    expect(new Set(ids).size).toBe(ids.length);
    expect(new Set(spans.map((span) => span.spanContext().traceId)).size).toBe(1);
    const byId = new Map(spans.map((span) => [span.spanContext().spanId, span]));
    const parentOf = (span: ReadableSpan) => byId.get(span.parentSpanContext?.spanId ?? "");
    const names = spans.map((span) => `${span.name}/${span.kind}`).join(", ");

    const clients = spans.filter((span) => span.kind === SpanKind.CLIENT);
    const servers = spans.filter((span) => span.kind === SpanKind.SERVER);
    const handler = spans.filter((span) => span.name === "lookup author");
    expect(clients, names).toHaveLength(1);
    expect(servers, names).toHaveLength(1);
    expect(handler, names).toHaveLength(1);
    const serverParent = parentOf(servers[0] as ReadableSpan);
    const call = serverParent?.kind === SpanKind.INTERNAL ? parentOf(serverParent) : serverParent;
    expect(call).toBe(clients[0]);
    expect(servers[0]?.attributes["rpc.method"]).toBe("Get");
    expect(parentOf(handler[0] as ReadableSpan)).toBe(servers[0]);
  });
});
