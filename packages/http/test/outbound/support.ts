/** Test fixtures for the outbound side: a dev control plane, meshed and plain servers, mesh clients. */
import { createHash } from "node:crypto";
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from "node:http";
import type { AddressInfo } from "node:net";
import { credentials } from "@grpc/grpc-js";
import { type ControlPlane, type ManifestFile, startControlPlane } from "@inmesh/control-plane";
import { serviceAccountIdentity } from "@inmesh/core";
import { createContextToken, createDiscovery, type Discovery } from "@inmesh/destination";
import { createIdentityProvider, type IdentityProvider } from "@inmesh/identity";
import { defaultServerPolicy } from "@inmesh/policy";
import { destination, outbound } from "@inmesh/proto";
import { createMeshServer, createTransportHeaderListener, type MeshServer } from "../../src/index.js";

export const NS = "default";
export const identityOf = (sa: string) => serviceAccountIdentity(sa, NS);

export interface PodSpec {
  readonly name: string;
  readonly sa: string;
  readonly app: string;
  /** Container port named `http`; the Service's targetPort points at it. */
  readonly port: number;
  /** Without the control-plane label the pod is unmeshed: plaintext, no identity, no hints. */
  readonly meshed?: boolean;
  readonly annotations?: Readonly<Record<string, string>>;
}

function yamlMap(entries: Readonly<Record<string, string>>, indent: string): string {
  return Object.entries(entries)
    .map(([key, value]) => `${indent}${key}: ${JSON.stringify(value)}`)
    .join("\n");
}

/**
 * App port → the transport-header port of the meshed backend serving it: every pod shares 127.0.0.1, so
 * each states its own inbound port (the control plane defaults to Linkerd's transport-header mode).
 */
const inboundPorts = new Map<number, number>();

export function podYaml(pod: PodSpec): string {
  const labels: Record<string, string> = { app: pod.app };
  if (pod.meshed !== false) labels["linkerd.io/control-plane-ns"] = "linkerd";
  const inboundPort = inboundPorts.get(pod.port);
  const annotations = {
    ...(inboundPort === undefined ? {} : { "inmesh.dev/inbound-port": String(inboundPort) }),
    ...pod.annotations,
  };
  return `apiVersion: v1
kind: Pod
metadata:
  name: ${pod.name}
  namespace: ${NS}
  labels:
${yamlMap(labels, "    ")}
${Object.keys(annotations).length > 0 ? `  annotations:\n${yamlMap(annotations, "    ")}` : ""}
spec:
  serviceAccountName: ${pod.sa}
  containers:
    - name: main
      image: app
      ports:
        - name: http
          containerPort: ${pod.port}
status:
  podIP: 127.0.0.1
`;
}

export function serviceYaml(
  name: string,
  app: string,
  annotations: Readonly<Record<string, string>> = {},
): string {
  return `apiVersion: v1
kind: Service
metadata:
  name: ${name}
  namespace: ${NS}
${Object.keys(annotations).length > 0 ? `  annotations:\n${yamlMap(annotations, "    ")}` : ""}
spec:
  selector:
    app: ${app}
  ports:
    - name: http
      port: 80
      targetPort: http
`;
}

export function manifests(...documents: string[]): ManifestFile[] {
  return [{ path: "cluster.yaml", text: documents.join("\n---\n") }];
}

export const CLIENT_POD: PodSpec = { name: "client-0", sa: "client", app: "client", port: 1 };

export async function startTestControlPlane(files: readonly ManifestFile[]): Promise<ControlPlane> {
  return startControlPlane({
    manifests: files,
    ports: { identity: 0, destination: 0, policy: 0 },
    cluster: { clusterNetworks: ["10.0.0.0/8", "127.0.0.0/8"] },
    watch: false,
  });
}

/** A real identity for a pod of the manifests, certified by the control plane's identity service. */
export async function podIdentity(cp: ControlPlane, pod: string, sa: string): Promise<IdentityProvider> {
  const identity = createIdentityProvider({
    localName: identityOf(sa),
    trustAnchorsPem: cp.trustAnchorsPem,
    identityServiceAddress: cp.addresses.identity,
    identityServiceName: cp.serverNames.identity,
    readToken: () => cp.tokenFor(NS, pod),
  });
  await identity.ready({ signal: AbortSignal.timeout(10_000) });
  return identity;
}

/** Discovery against the dev control plane (plaintext: it is on loopback, as linkerd2-proxy would talk to it). */
export function controlPlaneDiscovery(cp: ControlPlane, pod = CLIENT_POD.name): Discovery {
  const destinationClient = new destination.DestinationClient(
    cp.addresses.destination,
    credentials.createInsecure(),
  );
  const policyClient = new outbound.OutboundPoliciesClient(cp.addresses.policy, credentials.createInsecure());
  const discovery = createDiscovery({
    destinationClient,
    policyClient,
    contextToken: createContextToken({ ns: NS, pod }),
    sourceWorkload: JSON.stringify({ ns: NS, pod }),
  });
  const close = discovery.close;
  return Object.assign(discovery, {
    close: async () => {
      await close();
      destinationClient.close();
      policyClient.close();
    },
  });
}

export interface RecordedRequest {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingMessage["headers"];
  readonly httpVersion: string;
  readonly bodyBytes: number;
  readonly bodySha256: string;
  readonly clientId: string | undefined;
}

export type TestHandler = (
  request: RecordedRequest,
  response: ServerResponse,
  index: number,
  raw: IncomingMessage,
) => void | Promise<void>;

export interface TestBackend {
  readonly name: string;
  readonly port: number;
  /** The transport-header port of a meshed backend. */
  readonly inboundPort?: number;
  /** Requests whose body ended, in that order. */
  readonly requests: RecordedRequest[];
  /** Requests whose headers arrived. */
  arrivals: number;
  /** Replaced per test; receives every request after its body was read (unless `streaming`). */
  handler: TestHandler;
  /** When set, the handler runs as soon as headers arrive; the body is read in the background. */
  streaming: boolean;
  close(): Promise<void>;
}

export const sha256 = (data: Uint8Array | string) => createHash("sha256").update(data).digest("hex");

const ok: TestHandler = (_request, response) => {
  response.end("ok");
};

function recordRequest(backend: BackendState, req: IncomingMessage, res: ServerResponse): void {
  const index = backend.arrivals;
  backend.arrivals += 1;
  const hash = createHash("sha256");
  let bytes = 0;
  const base = {
    method: req.method ?? "",
    url: req.url ?? "",
    headers: req.headers,
    httpVersion: req.httpVersion,
    clientId: typeof req.headers["l5d-client-id"] === "string" ? req.headers["l5d-client-id"] : undefined,
  };
  const run = (recorded: RecordedRequest) =>
    Promise.resolve(backend.handler(recorded, res, index, req)).catch((error: unknown) => {
      res.destroy(error as Error);
    });
  req.on("data", (chunk: Buffer) => {
    bytes += chunk.byteLength;
    hash.update(chunk);
  });
  req.on("end", () => {
    const recorded: RecordedRequest = { ...base, bodyBytes: bytes, bodySha256: hash.digest("hex") };
    backend.requests.push(recorded);
    if (!backend.streaming) void run(recorded);
  });
  req.on("error", () => undefined);
  if (backend.streaming) void run({ ...base, bodyBytes: -1, bodySha256: "" });
}

interface BackendState {
  requests: RecordedRequest[];
  arrivals: number;
  handler: TestHandler;
  streaming: boolean;
}

const newState = (): BackendState => ({ requests: [], arrivals: 0, handler: ok, streaming: false });

/** A backend meshed by our inbound side: `createMeshServer` with the pod's identity, all traffic allowed. */
export async function startMeshedBackend(
  name: string,
  identity: IdentityProvider,
  options: { port?: number; transportHeaderPort?: number; http2IdleTimeoutMs?: number } = {},
): Promise<TestBackend> {
  const state = newState();
  const server: MeshServer = createMeshServer({
    ...(options.http2IdleTimeoutMs !== undefined ? { http2IdleTimeoutMs: options.http2IdleTimeoutMs } : {}),
    identity,
    policy: defaultServerPolicy("all-unauthenticated"),
    port: options.port ?? 8080,
    handler: (req, res) => recordRequest(state, req, res),
    drainTimeoutMs: 2000,
    ...(options.transportHeaderPort !== undefined
      ? { transportHeaderPort: options.transportHeaderPort }
      : {}),
  });
  const address = await server.listen(options.port ?? 0, "127.0.0.1");
  // The pod's inbound port, where meshed clients connect with a transport header naming `port`.
  const direct = createTransportHeaderListener({ identity });
  direct.route(address.port, server);
  const inbound = await direct.listen(0, "127.0.0.1");
  inboundPorts.set(address.port, inbound.port);
  return Object.assign(state, {
    name,
    port: address.port,
    inboundPort: inbound.port,
    close: async () => {
      inboundPorts.delete(address.port);
      await direct.close();
      await server.close();
    },
  });
}

/** A plain node:http backend (an unmeshed pod). */
export async function startPlainBackend(name: string): Promise<TestBackend> {
  const state = newState();
  const server: Server = createHttpServer((req, res) => recordRequest(state, req, res));
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return Object.assign(state, {
    name,
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
        setTimeout(() => server.closeAllConnections(), 1000).unref();
      }),
  });
}

/** Polls until `check` holds (bounded). */
export async function eventually(
  check: () => boolean | Promise<boolean>,
  timeoutMs = 5000,
  what = "condition",
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`${what} not reached within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Deterministic bytes (no randomness needed): a counter pattern of the given size. */
export function patternBytes(size: number, seed = 7): Buffer {
  const bytes = Buffer.alloc(size);
  for (let i = 0; i < size; i += 1) bytes[i] = (i * 31 + seed) & 0xff;
  return bytes;
}
