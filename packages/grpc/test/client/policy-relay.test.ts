/**
 * Through a policy relay over the dev control plane (a real grpc-js server built from @inmesh/proto):
 * a GRPCRoute failure injector, which Gateway API cannot express (so the dev control plane never sends
 * one), added to one route; and a controller that has not answered yet (the relay holds the watch).
 */

import { subscribe, unsubscribe } from "node:diagnostics_channel";
import * as grpc from "@grpc/grpc-js";
import { type ServerWritableStream, type ServiceError, status } from "@grpc/grpc-js";
import type { ControlPlane } from "@inmesh/control-plane";
import { MeshChannel, type OutboundCallMessage } from "@inmesh/core";
import { createContextToken, createDiscovery, type Discovery } from "@inmesh/destination";
import type { IdentityProvider } from "@inmesh/identity";
import { destination, outbound } from "@inmesh/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createMeshClientOptions, createMeshGrpcChannel, type MeshGrpcChannel } from "../../src/index.js";
import {
  EchoClient,
  files,
  type GrpcBackend,
  grpcRouteYaml,
  NS,
  podIdentity,
  podYaml,
  serviceYaml,
  startGrpcBackend,
  startTestControlPlane,
} from "./support.js";

const CLIENT = { name: "client-0", sa: "client", app: "client", port: 1 };
type WatchCall = ServerWritableStream<outbound.TrafficSpec, outbound.OutboundPolicy>;

/** Adds a failure injector (every call, RESOURCE_EXHAUSTED) to the rules of the route named `route`. */
function withInjector(policy: outbound.OutboundPolicy, route: string): outbound.OutboundPolicy {
  const kind = policy.protocol?.kind;
  if (kind?.$case !== "grpc") return policy;
  for (const grpcRoute of kind.value.routes) {
    const meta = grpcRoute.metadata?.kind;
    if (meta?.$case !== "resource" || meta.value.name !== route) continue;
    for (const rule of grpcRoute.rules) {
      rule.filters.push({
        kind: {
          $case: "failureInjector",
          value: {
            code: status.RESOURCE_EXHAUSTED,
            message: "injected by test",
            ratio: { numerator: 1, denominator: 1 },
          },
        },
      });
    }
  }
  return policy;
}

describe("gRPC routing through a policy relay", () => {
  let cp: ControlPlane;
  let relay: grpc.Server;
  let upstream: InstanceType<typeof outbound.OutboundPoliciesClient>;
  let destinationClient: InstanceType<typeof destination.DestinationClient>;
  let policyClient: InstanceType<typeof outbound.OutboundPoliciesClient>;
  let clientIdentity: IdentityProvider;
  let serverIdentity: IdentityProvider;
  let backend: GrpcBackend;
  let discovery: Discovery;
  let channel: MeshGrpcChannel;
  let client: InstanceType<typeof EchoClient>;
  let relayPort = 0;
  /** While set, the relay answers no policy watch (a controller that has not answered yet). */
  let hold = false;
  const held: WatchCall[] = [];

  const cluster = (port: number) =>
    files(
      podYaml(CLIENT),
      podYaml({ name: "faulty-0", sa: "faulty", app: "faulty", port }),
      serviceYaml("faulty", "faulty"),
      grpcRouteYaml("faulty-rpc", "faulty", {
        // Linkerd does not retry an injected failure, whatever the route's conditions say.
        annotations: { "retry.linkerd.io/grpc": "resource-exhausted", "retry.linkerd.io/limit": "3" },
      }),
    );

  beforeAll(async () => {
    cp = await startTestControlPlane(cluster(1));
    clientIdentity = await podIdentity(cp, CLIENT.name, CLIENT.sa);
    serverIdentity = await podIdentity(cp, "faulty-0", "faulty");
    backend = await startGrpcBackend("faulty-0", serverIdentity);
    cp.setManifests(cluster(backend.port));

    upstream = new outbound.OutboundPoliciesClient(cp.addresses.policy, grpc.credentials.createInsecure());
    relay = new grpc.Server();
    relay.addService(outbound.OutboundPoliciesService, {
      get(_call: unknown, done: grpc.sendUnaryData<outbound.OutboundPolicy>) {
        done({ code: status.UNIMPLEMENTED, details: "not used" });
      },
      watch(call: WatchCall) {
        if (hold) {
          held.push(call);
          return;
        }
        const stream = upstream.watch(call.request);
        stream.on("data", (policy: outbound.OutboundPolicy) =>
          call.write(withInjector(policy, "faulty-rpc")),
        );
        stream.on("error", (error: ServiceError) => {
          if (!call.cancelled) call.emit("error", { code: error.code, details: error.details });
        });
        call.on("cancelled", () => stream.cancel());
      },
    });
    const port = await new Promise<number>((resolve, reject) =>
      relay.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, p) =>
        error ? reject(error) : resolve(p),
      ),
    );
    relayPort = port;
    destinationClient = new destination.DestinationClient(
      cp.addresses.destination,
      grpc.credentials.createInsecure(),
    );
    policyClient = new outbound.OutboundPoliciesClient(
      `127.0.0.1:${port}`,
      grpc.credentials.createInsecure(),
    );
    discovery = createDiscovery({
      destinationClient,
      policyClient,
      contextToken: createContextToken({ ns: NS, pod: CLIENT.name }),
      sourceWorkload: JSON.stringify({ ns: NS, pod: CLIENT.name }),
    });
    channel = createMeshGrpcChannel({
      target: "faulty.default.svc.cluster.local:8080",
      identity: clientIdentity,
      discovery,
    });
    client = new EchoClient(
      channel.authority,
      grpc.credentials.createInsecure(),
      createMeshClientOptions(channel),
    );
  });

  afterAll(async () => {
    client?.close();
    channel?.close();
    await discovery?.close();
    destinationClient?.close();
    policyClient?.close();
    upstream?.close();
    for (const call of held) call.end();
    relay?.forceShutdown();
    await backend?.close();
    await Promise.all([clientIdentity, serverIdentity].map((identity) => identity?.close()));
    await cp?.close();
  });

  it("answers with the injector's code and message, sends nothing to the server, and does not retry", async () => {
    const ended: OutboundCallMessage[] = [];
    const onEnd = (message: unknown) => ended.push(message as OutboundCallMessage);
    subscribe(MeshChannel.outboundCallEnd, onEnd);
    let error: ServiceError;
    try {
      error = await new Promise<ServiceError>((resolve, reject) =>
        client.unary(Buffer.from("x"), (e: ServiceError | null) =>
          e ? resolve(e) : reject(new Error("the call succeeded")),
        ),
      );
    } finally {
      unsubscribe(MeshChannel.outboundCallEnd, onEnd);
    }
    expect(error.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(error.details).toBe("injected by test");
    expect(error.metadata.get("l5d-proxy-error")[0]).toBe("injected by test");
    expect(backend.calls).toHaveLength(0);
    // The route retries RESOURCE_EXHAUSTED from servers (up to 3 times), never an injected one.
    expect(ended).toHaveLength(1);
    expect(ended[0]?.attempts).toBe(1);
  });

  it("reports a cancel at once while the call still waits for the target's routes", async () => {
    hold = true;
    const heldPolicies = new outbound.OutboundPoliciesClient(
      `127.0.0.1:${relayPort}`,
      grpc.credentials.createInsecure(),
    );
    const heldDiscovery = createDiscovery({
      destinationClient,
      policyClient: heldPolicies,
      contextToken: createContextToken({ ns: NS, pod: CLIENT.name }),
      sourceWorkload: JSON.stringify({ ns: NS, pod: CLIENT.name }),
    });
    const heldChannel = createMeshGrpcChannel({
      target: "faulty.default.svc.cluster.local:8080",
      identity: clientIdentity,
      discovery: heldDiscovery,
      failFastTimeoutMs: 10_000,
    });
    const heldClient = new EchoClient(
      heldChannel.authority,
      grpc.credentials.createInsecure(),
      createMeshClientOptions(heldChannel),
    );
    try {
      const started = performance.now();
      const error = await new Promise<ServiceError>((resolve, reject) => {
        const call = heldClient.unary(Buffer.from("x"), (e: ServiceError | null) =>
          e ? resolve(e) : reject(new Error("the call succeeded")),
        );
        // Cancel once the policy watch is open and unanswered, so the call is waiting for it.
        const cancelWhenHeld = () => {
          if (held.length > 0) call.cancel();
          else setTimeout(cancelWhenHeld, 20);
        };
        cancelWhenHeld();
      });
      const elapsedMs = performance.now() - started;
      expect(error.code).toBe(status.CANCELLED);
      // Not after the 10 s wait for routes: the cancel is reported when it happens.
      expect(elapsedMs).toBeLessThan(5000);
      expect(backend.calls).toHaveLength(0);
    } finally {
      hold = false;
      heldClient.close();
      heldChannel.close();
      await heldDiscovery.close();
      heldPolicies.close();
    }
  });

  it("ends a call at the caller's deadline while it waits for the target's routes, with or without the interceptors", async () => {
    hold = true;
    const heldPolicies = new outbound.OutboundPoliciesClient(
      `127.0.0.1:${relayPort}`,
      grpc.credentials.createInsecure(),
    );
    const heldDiscovery = createDiscovery({
      destinationClient,
      policyClient: heldPolicies,
      contextToken: createContextToken({ ns: NS, pod: CLIENT.name }),
      sourceWorkload: JSON.stringify({ ns: NS, pod: CLIENT.name }),
    });
    const heldChannel = createMeshGrpcChannel({
      target: "faulty.default.svc.cluster.local:8080",
      identity: clientIdentity,
      discovery: heldDiscovery,
      failFastTimeoutMs: 10_000,
    });
    const withInterceptors = new EchoClient(
      heldChannel.authority,
      grpc.credentials.createInsecure(),
      createMeshClientOptions(heldChannel),
    );
    const bare = new EchoClient(heldChannel.authority, grpc.credentials.createInsecure(), {
      channelOverride: heldChannel,
    });
    const callWithDeadline = (client: InstanceType<typeof EchoClient>) =>
      new Promise<ServiceError>((resolve, reject) =>
        client.unary(
          Buffer.from("x"),
          new grpc.Metadata(),
          { deadline: Date.now() + 300 },
          (e: ServiceError | null) => (e ? resolve(e) : reject(new Error("the call succeeded"))),
        ),
      );
    try {
      for (const client of [withInterceptors, bare]) {
        const started = performance.now();
        const error = await callWithDeadline(client);
        const elapsedMs = performance.now() - started;
        expect(error.code).toBe(status.DEADLINE_EXCEEDED);
        // At the caller's 300 ms, not after the 10 s wait for routes.
        expect(elapsedMs).toBeLessThan(5000);
      }
      expect(held.length).toBeGreaterThan(0);
      expect(backend.calls).toHaveLength(0);
    } finally {
      hold = false;
      withInterceptors.close();
      bare.close();
      heldChannel.close();
      await heldDiscovery.close();
      heldPolicies.close();
    }
  });
});
