/** Fixtures for the gRPC client tests: a dev control plane, meshed grpc-js backends, a raw echo service. */

import {
  type CallOptions,
  type ChannelCredentials,
  type Client,
  type ClientDuplexStream,
  type ClientOptions,
  type ClientReadableStream,
  type ClientUnaryCall,
  type ClientWritableStream,
  credentials,
  type handleBidiStreamingCall,
  type handleClientStreamingCall,
  type handleServerStreamingCall,
  type handleUnaryCall,
  type Metadata,
  makeGenericClientConstructor,
  Server,
  type ServiceDefinition,
  type ServiceError,
} from "@grpc/grpc-js";
import { type ControlPlane, type ManifestFile, startControlPlane } from "@inmesh/control-plane";
import { peerIdentityName, serviceAccountIdentity } from "@inmesh/core";
import { createContextToken, createDiscovery, type Discovery } from "@inmesh/destination";
import { createMeshServer, createTransportHeaderListener, type MeshServer } from "@inmesh/http";
import { createIdentityProvider, type IdentityProvider } from "@inmesh/identity";
import { defaultServerPolicy } from "@inmesh/policy";
import { destination, outbound } from "@inmesh/proto";
import { createMeshConnectionInjector, meshPeer } from "../../src/index.js";

export const NS = "default";
export const identityOf = (sa: string) => serviceAccountIdentity(sa, NS);

const raw = {
  requestSerialize: (value: Buffer) => value,
  requestDeserialize: (value: Buffer) => value,
  responseSerialize: (value: Buffer) => value,
  responseDeserialize: (value: Buffer) => value,
};

/** An echo service over raw bytes, so tests control exact message sizes. */
export const EchoService = {
  unary: { path: "/test.Echo/Unary", requestStream: false, responseStream: false, ...raw },
  serverStream: { path: "/test.Echo/ServerStream", requestStream: false, responseStream: true, ...raw },
  clientStream: { path: "/test.Echo/ClientStream", requestStream: true, responseStream: false, ...raw },
  bidi: { path: "/test.Echo/Bidi", requestStream: true, responseStream: true, ...raw },
} satisfies ServiceDefinition;

type UnaryCallback = (error: ServiceError | null, value?: Buffer) => void;

export interface Echo extends Client {
  unary(request: Buffer, metadata: Metadata, options: CallOptions, callback: UnaryCallback): ClientUnaryCall;
  unary(request: Buffer, metadata: Metadata, callback: UnaryCallback): ClientUnaryCall;
  unary(request: Buffer, callback: UnaryCallback): ClientUnaryCall;
  serverStream(request: Buffer, metadata?: Metadata, options?: CallOptions): ClientReadableStream<Buffer>;
  clientStream(callback: UnaryCallback): ClientWritableStream<Buffer>;
  bidi(): ClientDuplexStream<Buffer, Buffer>;
}

export const EchoClient = makeGenericClientConstructor(EchoService, "Echo") as unknown as new (
  address: string,
  credentials: ChannelCredentials,
  options?: ClientOptions,
) => Echo;

export interface EchoHandlers {
  unary: handleUnaryCall<Buffer, Buffer>;
  serverStream: handleServerStreamingCall<Buffer, Buffer>;
  clientStream: handleClientStreamingCall<Buffer, Buffer>;
  bidi: handleBidiStreamingCall<Buffer, Buffer>;
}

export const defaultHandlers = (name: string): EchoHandlers => ({
  unary: (call, callback) => callback(null, Buffer.concat([Buffer.from(`${name}:`), call.request])),
  serverStream: (call) => {
    call.write(Buffer.from(`${name}:1`));
    call.write(Buffer.from(`${name}:2`));
    call.end();
  },
  clientStream: (call, callback) => {
    const chunks: Buffer[] = [];
    call.on("data", (chunk: Buffer) => chunks.push(chunk));
    call.on("end", () => callback(null, Buffer.concat(chunks)));
  },
  bidi: (call) => {
    call.on("data", (chunk: Buffer) => call.write(chunk));
    call.on("end", () => call.end());
  },
});

export interface GrpcBackend {
  readonly name: string;
  readonly port: number;
  handlers: EchoHandlers;
  /** Calls per method, in arrival order, with the request bytes when the method has a single request. */
  readonly calls: { method: keyof EchoHandlers; deadline: number | undefined; peer: string | undefined }[];
  close(): Promise<void>;
}

/** A grpc-js server meshed by our inbound side (TLS terminated by `createMeshServer`, no ALPN needed). */
export async function startGrpcBackend(
  name: string,
  identity: IdentityProvider,
  options: { port?: number; transportHeaderPort?: number } = {},
): Promise<GrpcBackend> {
  const policy = defaultServerPolicy("all-unauthenticated");
  const grpcServer = new Server();
  const state = {
    name,
    handlers: defaultHandlers(name),
    calls: [] as GrpcBackend["calls"],
  };
  const record = (
    method: keyof EchoHandlers,
    call: { getDeadline(): Date | number; readonly metadata: Metadata },
  ) => {
    const deadline = call.getDeadline();
    const at = deadline instanceof Date ? deadline.getTime() : deadline;
    state.calls.push({
      method,
      deadline: Number.isFinite(at) ? at : undefined,
      peer: peerIdentityName(meshPeer(call)),
    });
  };
  grpcServer.addService(EchoService, {
    unary: (call: Parameters<EchoHandlers["unary"]>[0], callback: Parameters<EchoHandlers["unary"]>[1]) => {
      record("unary", call);
      state.handlers.unary(call, callback);
    },
    serverStream: (call: Parameters<EchoHandlers["serverStream"]>[0]) => {
      record("serverStream", call);
      state.handlers.serverStream(call);
    },
    clientStream: (
      call: Parameters<EchoHandlers["clientStream"]>[0],
      callback: Parameters<EchoHandlers["clientStream"]>[1],
    ) => {
      record("clientStream", call);
      state.handlers.clientStream(call, callback);
    },
    bidi: (call: Parameters<EchoHandlers["bidi"]>[0]) => {
      record("bidi", call);
      state.handlers.bidi(call);
    },
  });
  const port = options.port ?? 8080;
  const injector = createMeshConnectionInjector(grpcServer, { identity, policy, port });
  const mesh: MeshServer = createMeshServer({
    identity,
    policy,
    port,
    onHttp2Connection: (socket, info) => injector.injectConnection(socket, info),
    drainTimeoutMs: 1000,
    ...(options.transportHeaderPort !== undefined
      ? { transportHeaderPort: options.transportHeaderPort }
      : {}),
  });
  const address = await mesh.listen(options.port ?? 0, "127.0.0.1");
  // The pod's shared transport-header port (the control plane defaults to transport-header mode).
  const direct = createTransportHeaderListener({ identity });
  direct.route(address.port, mesh);
  const inbound = await direct.listen(0, "127.0.0.1");
  inboundPorts.set(address.port, inbound.port);
  return Object.assign(state, {
    port: address.port,
    inboundPort: inbound.port,
    async close() {
      inboundPorts.delete(address.port);
      injector.drain(500);
      await direct.close();
      await mesh.close();
      injector.destroy();
      grpcServer.forceShutdown();
    },
  });
}

/** App port → the transport-header port of the backend serving it (all pods share 127.0.0.1). */
const inboundPorts = new Map<number, number>();

export function podYaml(pod: { name: string; sa: string; app: string; port: number }): string {
  const inboundPort = inboundPorts.get(pod.port);
  return `apiVersion: v1
kind: Pod
metadata:
  name: ${pod.name}
  namespace: ${NS}
${inboundPort === undefined ? "" : `  annotations: { inmesh.dev/inbound-port: "${inboundPort}" }\n`}  labels:
    app: ${pod.app}
    linkerd.io/control-plane-ns: linkerd
spec:
  serviceAccountName: ${pod.sa}
  containers:
    - name: main
      image: app
      ports:
        - name: grpc
          containerPort: ${pod.port}
status:
  podIP: 127.0.0.1
`;
}

export function serviceYaml(name: string, app: string, annotations: Record<string, string> = {}): string {
  const notes = Object.entries(annotations)
    .map(([key, value]) => `    ${key}: ${JSON.stringify(value)}`)
    .join("\n");
  return `apiVersion: v1
kind: Service
metadata:
  name: ${name}
  namespace: ${NS}
${notes ? `  annotations:\n${notes}` : ""}
spec:
  selector:
    app: ${app}
  ports:
    - name: grpc
      port: 8080
      targetPort: grpc
`;
}

export const files = (...documents: string[]): ManifestFile[] => [
  { path: "cluster.yaml", text: documents.join("\n---\n") },
];

export async function startTestControlPlane(manifests: readonly ManifestFile[]): Promise<ControlPlane> {
  return startControlPlane({ manifests, ports: { identity: 0, destination: 0, policy: 0 }, watch: false });
}

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

export function controlPlaneDiscovery(cp: ControlPlane, pod: string): Discovery {
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

export function patternBytes(size: number, seed = 5): Buffer {
  const bytes = Buffer.alloc(size);
  for (let i = 0; i < size; i += 1) bytes[i] = (i * 13 + seed) & 0xff;
  return bytes;
}

/** A GRPCRoute on a Service port: `rules` in YAML flow style, annotations as Linkerd reads them. */
export function grpcRouteYaml(
  name: string,
  service: string,
  options: { annotations?: Record<string, string>; rules?: string } = {},
): string {
  const notes = Object.entries(options.annotations ?? {})
    .map(([key, value]) => `    ${key}: ${JSON.stringify(value)}`)
    .join("\n");
  return `apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: ${name}
  namespace: ${NS}
${notes ? `  annotations:\n${notes}\n` : ""}spec:
  parentRefs:
    - { group: core, kind: Service, name: ${service}, port: 8080 }
  rules:
${options.rules ?? "    - matches: [{ method: { service: test.Echo } }]"}
`;
}
