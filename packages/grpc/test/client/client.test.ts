import { subscribe, unsubscribe } from "node:diagnostics_channel";
import * as grpc from "@grpc/grpc-js";
import { type ClientReadableStream, Metadata, type ServiceError, status } from "@grpc/grpc-js";
import type { ControlPlane } from "@inmesh/control-plane";
import { MeshChannel, type OutboundAttemptMessage, type OutboundCallMessage } from "@inmesh/core";
import type { Discovery } from "@inmesh/destination";
import type { IdentityProvider } from "@inmesh/identity";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  createMeshClientOptions,
  createMeshGrpcChannel,
  MESH_ERROR_METADATA_KEY,
  type MeshGrpcChannel,
} from "../../src/index.js";
import {
  controlPlaneDiscovery,
  defaultHandlers,
  EchoClient,
  files,
  type GrpcBackend,
  grpcRouteYaml,
  identityOf,
  patternBytes,
  podIdentity,
  podYaml,
  serviceYaml,
  startGrpcBackend,
  startTestControlPlane,
} from "./support.js";

type Echo = InstanceType<typeof EchoClient>;
const KIB64 = 64 * 1024;
const CLIENT = { name: "client-0", sa: "client", app: "client", port: 1 };

function unary(client: Echo, request: Buffer, options: { deadline?: number; metadata?: Metadata } = {}) {
  return new Promise<Buffer>((resolve, reject) => {
    const done = (error: ServiceError | null, response?: Buffer) =>
      error ? reject(error) : resolve(response as Buffer);
    if (options.deadline !== undefined)
      client.unary(request, options.metadata ?? new Metadata(), { deadline: options.deadline }, done);
    else client.unary(request, options.metadata ?? new Metadata(), done);
  });
}

function collect(stream: ClientReadableStream<Buffer>) {
  return new Promise<{ messages: string[]; error?: ServiceError }>((resolve) => {
    const messages: string[] = [];
    stream.on("data", (chunk: Buffer) => messages.push(chunk.toString()));
    stream.on("error", (error: ServiceError) => resolve({ messages, error }));
    stream.on("end", () => resolve({ messages }));
  });
}

describe("gRPC client through the mesh", () => {
  let cp: ControlPlane;
  let clientIdentity: IdentityProvider;
  const identities: IdentityProvider[] = [];
  const backends: GrpcBackend[] = [];
  let discovery: Discovery;
  let channel: MeshGrpcChannel;
  let client: Echo;

  const cluster = (ports: number[]) =>
    files(
      podYaml(CLIENT),
      ...ports.map((port, i) => podYaml({ name: `echo-${i}`, sa: "echo", app: "echo", port })),
      serviceYaml("echo", "echo"),
      // Linkerd retries only what a route asks for: UNAVAILABLE, twice.
      grpcRouteYaml("echo-rpc", "echo", {
        annotations: { "retry.linkerd.io/grpc": "unavailable", "retry.linkerd.io/limit": "2" },
      }),
    );
  const totalCalls = () => backends.reduce((sum, b) => sum + b.calls.length, 0);
  /** One counter across backends: the retry may land on another endpoint. */
  const everywhere = (make: (index: () => number) => Partial<GrpcBackendHandlers>) => {
    let count = 0;
    const index = () => count++;
    const handlers = make(index);
    for (const backend of backends) backend.handlers = { ...defaultHandlers(backend.name), ...handlers };
  };
  type GrpcBackendHandlers = GrpcBackend["handlers"];

  beforeAll(async () => {
    cp = await startTestControlPlane(cluster([1, 2, 3]));
    clientIdentity = await podIdentity(cp, CLIENT.name, CLIENT.sa);
    for (let i = 0; i < 3; i += 1) {
      const identity = await podIdentity(cp, `echo-${i}`, "echo");
      identities.push(identity);
      backends.push(await startGrpcBackend(`echo-${i}`, identity));
    }
    cp.setManifests(cluster(backends.map((b) => b.port)));
    discovery = controlPlaneDiscovery(cp, CLIENT.name);
    channel = createMeshGrpcChannel({
      target: "echo.default.svc.cluster.local:8080",
      identity: clientIdentity,
      discovery,
    });
    client = new EchoClient(
      channel.authority,
      grpc.credentials.createInsecure(),
      createMeshClientOptions(channel),
    );
  });

  afterEach(() => {
    for (const backend of backends) {
      backend.calls.length = 0;
      backend.handlers = defaultHandlers(backend.name);
    }
  });

  afterAll(async () => {
    client?.close();
    channel?.close();
    await discovery?.close();
    await Promise.all(backends.map((backend) => backend.close()));
    await Promise.all([clientIdentity, ...identities].map((identity) => identity?.close()));
    await cp?.close();
  });

  it("makes a unary call over mTLS, seen by the server as the client's identity", async () => {
    const response = await unary(client, Buffer.from("hello"));
    expect(response.toString()).toMatch(/^echo-\d:hello$/);
    expect(totalCalls()).toBe(1);
    expect(backends.flatMap((b) => b.calls)[0]?.peer).toBe(identityOf("client"));
  });

  it("balances calls across the endpoints", async () => {
    everywhere(() => ({
      unary: (call, callback) => setTimeout(() => callback(null, call.request), 20),
    }));
    await Promise.all(Array.from({ length: 45 }, (_, i) => unary(client, Buffer.from(String(i)))));
    for (const backend of backends) expect(backend.calls.length).toBeGreaterThan(0);
    expect(totalCalls()).toBe(45);
  });

  it("retries a unary call with a 64 KiB message on UNAVAILABLE; the server gets the same bytes", async () => {
    const seen: Buffer[] = [];
    everywhere((index) => ({
      unary: (call, callback) => {
        seen.push(call.request);
        if (index() === 0) callback({ code: status.UNAVAILABLE, details: "try again" });
        else callback(null, Buffer.from("ok"));
      },
    }));
    const message = patternBytes(KIB64 - 16);
    const response = await unary(client, message);
    expect(response.toString()).toBe("ok");
    expect(seen).toHaveLength(2);
    for (const request of seen) expect(request.equals(message)).toBe(true);
  });

  it("does not retry a call whose messages exceed 64 KiB", async () => {
    const seen: Buffer[] = [];
    everywhere(() => ({
      unary: (call, callback) => {
        seen.push(call.request);
        callback({ code: status.UNAVAILABLE, details: "still down" });
      },
    }));
    const message = patternBytes(KIB64 + 1);
    const error = (await unary(client, message).catch((e: unknown) => e)) as ServiceError;
    expect(error.code).toBe(status.UNAVAILABLE);
    expect(seen).toHaveLength(1);
    expect(seen[0]?.equals(message)).toBe(true);
  });

  it("retries a server-streaming call that failed before its first message", async () => {
    everywhere((index) => ({
      serverStream: (call) => {
        if (index() === 0) {
          call.emit("error", { code: status.UNAVAILABLE, details: "not yet" });
          return;
        }
        call.write(Buffer.from("a"));
        call.write(Buffer.from("b"));
        call.end();
      },
    }));
    const result = await collect(client.serverStream(Buffer.from("go")));
    expect(result.error).toBeUndefined();
    expect(result.messages).toEqual(["a", "b"]);
    expect(totalCalls()).toBe(2);
  });

  it("does not retry a stream that already delivered a message", async () => {
    everywhere(() => ({
      serverStream: (call) => {
        call.write(Buffer.from("first"));
        setTimeout(() => call.emit("error", { code: status.UNAVAILABLE, details: "gone" }), 50);
      },
    }));
    const result = await collect(client.serverStream(Buffer.from("go")));
    expect(result.messages).toEqual(["first"]);
    expect(result.error?.code).toBe(status.UNAVAILABLE);
    expect(totalCalls()).toBe(1);
  });

  it("retries client-streaming and bidi calls with every message replayed", async () => {
    const received: string[][] = [];
    everywhere((index) => ({
      clientStream: (call, callback) => {
        const attempt = index();
        const chunks: string[] = [];
        call.on("data", (chunk: Buffer) => chunks.push(chunk.toString()));
        call.on("end", () => {
          received.push(chunks);
          if (attempt === 0) callback({ code: status.UNAVAILABLE, details: "retry me" });
          else callback(null, Buffer.from(chunks.join("+")));
        });
      },
    }));
    const response = await new Promise<Buffer>((resolve, reject) => {
      const call = client.clientStream((error: ServiceError | null, value?: Buffer) =>
        error ? reject(error) : resolve(value as Buffer),
      );
      call.write(Buffer.from("one"));
      call.write(Buffer.from("two"));
      call.end();
    });
    expect(response.toString()).toBe("one+two");
    expect(received).toEqual([
      ["one", "two"],
      ["one", "two"],
    ]);

    let bidiAttempts = 0;
    for (const backend of backends) {
      backend.handlers.bidi = (call) => {
        bidiAttempts += 1;
        const first = bidiAttempts === 1;
        const chunks: Buffer[] = [];
        call.on("data", (chunk: Buffer) => chunks.push(chunk));
        call.on("end", () => {
          if (first) {
            call.emit("error", { code: status.UNAVAILABLE, details: "again" });
            return;
          }
          for (const chunk of chunks) call.write(chunk);
          call.end();
        });
      };
    }
    const bidi = client.bidi();
    const echoed = collect(bidi as unknown as ClientReadableStream<Buffer>);
    bidi.write(Buffer.from("x"));
    bidi.write(Buffer.from("y"));
    bidi.end();
    const result = await echoed;
    expect(result.error).toBeUndefined();
    expect(result.messages).toEqual(["x", "y"]);
    expect(bidiAttempts).toBe(2);
  });

  it("keeps the caller's deadline across retries (grpc-timeout carries the time left)", async () => {
    everywhere((index) => ({
      unary: (_call, callback) => {
        if (index() === 0)
          setTimeout(() => callback({ code: status.UNAVAILABLE, details: "slowly down" }), 200);
        else callback(null, Buffer.from("ok"));
      },
    }));
    const deadline = Date.now() + 5000;
    await unary(client, Buffer.from("d"), { deadline });
    const calls = backends.flatMap((b) => b.calls).sort((a, b) => (a.deadline ?? 0) - (b.deadline ?? 0));
    expect(calls).toHaveLength(2);
    for (const call of calls) {
      expect(call.deadline).toBeDefined();
      // Both attempts end at the caller's deadline, not 5 s after their own start (small clock slack).
      expect(Math.abs((call.deadline as number) - deadline)).toBeLessThan(150);
    }
  });

  it("respects the retry budget when every call fails", async () => {
    everywhere(() => ({
      unary: (_call, callback) => callback({ code: status.UNAVAILABLE, details: "down" }),
    }));
    // A fresh channel: the budget is per target and channel, and earlier tests deposited into the shared one.
    const fresh = createMeshGrpcChannel({
      target: "echo.default.svc.cluster.local:8080",
      identity: clientIdentity,
      discovery,
    });
    const freshClient = new EchoClient(
      fresh.authority,
      grpc.credentials.createInsecure(),
      createMeshClientOptions(fresh),
    );
    try {
      const total = 100;
      const started = performance.now();
      let next = 0;
      const worker = async () => {
        while (next < total) {
          next += 1;
          await unary(freshClient, Buffer.from("b")).catch(() => undefined);
        }
      };
      await Promise.all(Array.from({ length: 5 }, worker));
      const retries = totalCalls() - total;
      expect(retries).toBeGreaterThan(0);
      // Default budget: 0.2 per request plus 10 per second (a reserve of 100 over its 10 s window).
      const seconds = Math.max(10, Math.ceil((performance.now() - started) / 1000));
      expect(retries).toBeLessThanOrEqual(0.2 * total + 10 * seconds + 1);
      expect(retries).toBeLessThan(2 * total);
    } finally {
      freshClient.close();
      fresh.close();
    }
  });

  it("publishes call and attempt diagnostics with the endpoint identity and injects trace metadata", async () => {
    const calls: OutboundCallMessage[] = [];
    const attempts: OutboundAttemptMessage[] = [];
    const onStart = (message: unknown) => {
      const call = message as OutboundCallMessage;
      call.setHeader("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
      calls.push(call);
    };
    const onAttempt = (message: unknown) => attempts.push(message as OutboundAttemptMessage);
    let traceparent: unknown;
    everywhere(() => ({
      unary: (call, callback) => {
        traceparent = call.metadata.get("traceparent")[0];
        callback(null, Buffer.from("t"));
      },
    }));
    subscribe(MeshChannel.outboundCallStart, onStart);
    subscribe(MeshChannel.outboundAttemptEnd, onAttempt);
    try {
      await unary(client, Buffer.from("trace"));
    } finally {
      unsubscribe(MeshChannel.outboundCallStart, onStart);
      unsubscribe(MeshChannel.outboundAttemptEnd, onAttempt);
    }
    expect(traceparent).toBe("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    expect(calls).toHaveLength(1);
    expect(calls[0]).toMatchObject({
      protocol: "grpc",
      path: "/test.Echo/Unary",
      grpcStatus: 0,
      attempts: 1,
    });
    expect(attempts).toHaveLength(1);
    expect(attempts[0]?.serverIdentity).toBe(identityOf("echo"));
    expect(attempts[0]?.call).toBe(calls[0]);
  });

  it("fails fast with UNAVAILABLE and a mesh error code when a service has no endpoints", async () => {
    const empty = createMeshGrpcChannel({
      target: "nothing.default.svc.cluster.local:8080",
      identity: clientIdentity,
      discovery,
      failFastTimeoutMs: 300,
    });
    const emptyClient = new EchoClient(
      empty.authority,
      grpc.credentials.createInsecure(),
      createMeshClientOptions(empty),
    );
    try {
      const error = (await unary(emptyClient, Buffer.from("x")).catch((e: unknown) => e)) as ServiceError;
      expect(error.code).toBe(status.UNAVAILABLE);
      expect(error.metadata.get(MESH_ERROR_METADATA_KEY)[0]).toMatch(/^MESH_ERR_DESTINATION_/);
    } finally {
      emptyClient.close();
      empty.close();
    }
  });
});
