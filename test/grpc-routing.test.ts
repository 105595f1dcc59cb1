// GRPCRoute routing through `mesh.grpcChannel` (issue 13, routing): a workload created from the dev control
// plane's pod environment calls a Service whose GRPCRoute splits traffic, times calls out and leaves a
// method unrouted; real grpc-js servers behind meshed inbound servers.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import * as grpc from "@grpc/grpc-js";
import { type ControlPlane, startControlPlane } from "@inmesh/control-plane";
import { createMeshClientOptions, createMeshConnectionInjector, meshPeer } from "@inmesh/grpc";
import { createMesh, type Mesh } from "@inmesh/mesh";
import { freeLoopbackPort } from "@inmesh/testing/ports";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const WEB_ID = "web.shelf.serviceaccount.identity.linkerd.cluster.local";

const raw = {
  requestSerialize: (value: Buffer) => value,
  requestDeserialize: (value: Buffer) => value,
  responseSerialize: (value: Buffer) => value,
  responseDeserialize: (value: Buffer) => value,
};
const whoService: grpc.ServiceDefinition = {
  whoAmI: { path: "/test.Who/WhoAmI", requestStream: false, responseStream: false, ...raw },
  slow: { path: "/test.Who/Slow", requestStream: false, responseStream: false, ...raw },
  other: { path: "/test.Who/Other", requestStream: false, responseStream: false, ...raw },
};
type Callback = (error: grpc.ServiceError | null, value?: Buffer) => void;
type WhoClient = grpc.Client & {
  whoAmI(request: Buffer, callback: Callback): unknown;
  slow(request: Buffer, callback: Callback): unknown;
  other(request: Buffer, callback: Callback): unknown;
};
const WhoClient = grpc.makeGenericClientConstructor(whoService, "Who") as unknown as new (
  address: string,
  credentials: grpc.ChannelCredentials,
  options: grpc.ClientOptions,
) => WhoClient;

const call = (client: WhoClient, method: "whoAmI" | "slow" | "other") =>
  new Promise<string>((resolve, reject) =>
    client[method](Buffer.from("?"), (error, value) => (error ? reject(error) : resolve(String(value)))),
  );

interface Ports {
  authors: number;
  authorsV2: number;
}

function manifests(ports: Ports) {
  const pod = (name: string, app: string, ip: string, port?: number) => `
apiVersion: v1
kind: Pod
metadata:
  name: ${name}
  namespace: shelf
  labels: { app: ${app}, linkerd.io/control-plane-ns: linkerd }
spec: { serviceAccountName: ${app}, containers: [{ name: app${port === undefined ? "" : `, ports: [{ name: grpc, containerPort: ${port} }]`} }] }
status: { podIP: ${ip} }
---`;
  const service = (name: string) => `
apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: shelf }
spec: { selector: { app: ${name} }, ports: [{ name: grpc, port: 50051, targetPort: grpc }] }
---`;
  return [
    {
      path: "grpc-routing.yaml",
      text: `
apiVersion: v1
kind: Namespace
metadata: { name: shelf }
---
${pod("web-0", "web", "127.0.0.71")}
${pod("authors-0", "authors", "127.0.0.72", ports.authors)}
${pod("authors-v2-0", "authors-v2", "127.0.0.73", ports.authorsV2)}
${service("authors")}
${service("authors-v2")}
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: authors-rpc
  namespace: shelf
  annotations: { timeout.linkerd.io/request: 300ms }
spec:
  parentRefs: [{ group: core, kind: Service, name: authors, port: 50051 }]
  rules:
    - matches: [{ method: { service: test.Who, method: Slow } }]
    - matches: [{ method: { service: test.Who, method: WhoAmI } }]
      backendRefs:
        - { name: authors, port: 50051, weight: 50 }
        - { name: authors-v2, port: 50051, weight: 50 }
`,
    },
  ];
}

describe("GRPCRoute routing through mesh.grpcChannel", () => {
  let stateDir: string;
  let controlPlane: ControlPlane;
  const meshes: Mesh[] = [];
  const cleanups: (() => Promise<void> | void)[] = [];
  const timers = new Set<NodeJS.Timeout>();
  let client: WhoClient;

  async function meshFor(pod: string): Promise<Mesh> {
    const { variables } = await controlPlane.writeEnv(pod, { namespace: "shelf" });
    const mesh = createMesh({ env: variables, admin: false, tracing: false });
    meshes.push(mesh);
    return mesh;
  }

  async function serve(pod: string, ip: string, port: number): Promise<void> {
    const mesh = await meshFor(pod);
    const server = new grpc.Server();
    server.addService(whoService, {
      whoAmI(call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) {
        const peer = meshPeer(call);
        callback(null, Buffer.from(`${pod}|${peer?.kind === "mesh" ? peer.name : "-"}`));
      },
      slow(_call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) {
        const timer = setTimeout(() => {
          timers.delete(timer);
          callback(null, Buffer.from("late"));
        }, 5000);
        timers.add(timer);
      },
      other(_call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) {
        callback(null, Buffer.from(pod));
      },
    });
    const injector = createMeshConnectionInjector(server, {
      identity: mesh.identity,
      policy: mesh.policy,
      port,
    });
    const inbound = mesh.createServer(undefined, { port, onHttp2Connection: injector.injectConnection });
    await inbound.listen(port, ip);
    cleanups.push(() => {
      injector.destroy();
      server.forceShutdown();
    });
  }

  beforeAll(async () => {
    stateDir = await mkdtemp(path.join(tmpdir(), "inmesh-grpc-routing-"));
    const ports = {
      authors: await freeLoopbackPort("127.0.0.72"),
      authorsV2: await freeLoopbackPort("127.0.0.73"),
    };
    controlPlane = await startControlPlane({
      manifests: manifests(ports),
      stateDir,
      ports: { identity: 0, destination: 0, policy: 0 },
      watch: false,
    });
    await serve("authors-0", "127.0.0.72", ports.authors);
    await serve("authors-v2-0", "127.0.0.73", ports.authorsV2);
    const web = await meshFor("web-0");
    await Promise.all(meshes.map((mesh) => mesh.ready({ signal: AbortSignal.timeout(20_000) })));
    const channel = await web.grpcChannel("authors:50051");
    client = new WhoClient(
      channel.authority,
      grpc.credentials.createInsecure(),
      createMeshClientOptions(channel),
    );
    cleanups.push(() => client.close());
  });

  afterAll(async () => {
    for (const timer of timers) clearTimeout(timer);
    for (const cleanup of cleanups) await cleanup();
    await Promise.allSettled(meshes.map((mesh) => mesh.close()));
    await controlPlane?.close();
    await rm(stateDir, { recursive: true, force: true });
  });

  it("splits WhoAmI across the route's two backends, each called over mTLS as web", async () => {
    const answers: string[] = [];
    for (let i = 0; i < 40; i += 1) answers.push(await call(client, "whoAmI"));
    const pods = answers.map((answer) => answer.split("|")[0]);
    const toV2 = pods.filter((pod) => pod === "authors-v2-0").length;
    console.log(`mesh.grpcChannel 50/50 split over 40 calls: authors ${40 - toV2}, authors-v2 ${toV2}`);
    // Both backends take calls (all 40 on one side has probability 2^-39 at 50/50).
    expect(toV2).toBeGreaterThan(0);
    expect(toV2).toBeLessThan(40);
    for (const answer of answers) expect(answer.split("|")[1]).toBe(WEB_ID);
  });

  it("ends Slow at the route's 300 ms request timeout with DEADLINE_EXCEEDED", async () => {
    const error = (await call(client, "slow").catch((e: unknown) => e)) as grpc.ServiceError;
    expect(error.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect(error.details).toContain("request timeout: 300ms");
  });

  it("answers a method no rule matches with NOT_FOUND", async () => {
    const error = (await call(client, "other").catch((e: unknown) => e)) as grpc.ServiceError;
    expect(error.code).toBe(grpc.status.NOT_FOUND);
    expect(error.details).toContain("no route");
  });
});
