/**
 * GRPCRoute routing through the mesh channel against the dev control plane, with real grpc-js servers:
 * route timeouts, traffic split and filters, the no-route answer, retries only from the route, and
 * failure accrual.
 */

import * as grpc from "@grpc/grpc-js";
import { type ClientReadableStream, Metadata, type ServiceError, status } from "@grpc/grpc-js";
import type { ControlPlane } from "@inmesh/control-plane";
import type { Discovery } from "@inmesh/destination";
import type { IdentityProvider } from "@inmesh/identity";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createMeshClientOptions, createMeshGrpcChannel, type MeshGrpcChannel } from "../../src/index.js";
import {
  controlPlaneDiscovery,
  EchoClient,
  files,
  type GrpcBackend,
  grpcRouteYaml,
  podIdentity,
  podYaml,
  serviceYaml,
  startGrpcBackend,
  startTestControlPlane,
} from "./support.js";

type Echo = InstanceType<typeof EchoClient>;
const CLIENT = { name: "client-0", sa: "client", app: "client", port: 1 };

/** Backend pods: name → app label (each serves one Service of the same name as its app). */
const PODS = [
  ["slow-0", "slow"],
  ["split-a-0", "split-a"],
  ["split-b-0", "split-b"],
  ["narrow-0", "narrow"],
  ["plain-0", "plain"],
  ["retrying-0", "retrying"],
  ["flaky-0", "flaky"],
  ["flaky-1", "flaky"],
  ["bounded-0", "bounded"],
  ["idle-0", "idle"],
  ["lonely-0", "lonely"],
  ["tardy-0", "tardy"],
] as const;

const ACCRUAL = {
  "balancer.linkerd.io/failure-accrual": "consecutive",
  "balancer.linkerd.io/failure-accrual-consecutive-max-failures": "3",
  "balancer.linkerd.io/failure-accrual-consecutive-min-penalty": "1s",
  "balancer.linkerd.io/failure-accrual-consecutive-max-penalty": "1s",
  "balancer.linkerd.io/failure-accrual-consecutive-jitter-ratio": "0",
};

function unary(client: Echo, request: Buffer, metadata = new Metadata()) {
  return new Promise<Buffer>((resolve, reject) => {
    client.unary(request, metadata, (error: ServiceError | null, response?: Buffer) =>
      error ? reject(error) : resolve(response as Buffer),
    );
  });
}

const failure = (promise: Promise<unknown>) =>
  promise.then(
    () => {
      throw new Error("the call succeeded");
    },
    (error: unknown) => error as ServiceError,
  );

function collect(stream: ClientReadableStream<Buffer>) {
  return new Promise<{ messages: string[]; error?: ServiceError }>((resolve) => {
    const messages: string[] = [];
    stream.on("data", (chunk: Buffer) => messages.push(chunk.toString()));
    stream.on("error", (error: ServiceError) => resolve({ messages, error }));
    stream.on("end", () => resolve({ messages }));
  });
}

describe("GRPCRoute routing through the mesh channel", () => {
  let cp: ControlPlane;
  let clientIdentity: IdentityProvider;
  const identities: IdentityProvider[] = [];
  const backends = new Map<string, GrpcBackend>();
  let discovery: Discovery;
  const channels: MeshGrpcChannel[] = [];
  const clients: Echo[] = [];

  const cluster = (splitWeights: readonly [number, number] = [80, 20]) =>
    files(
      podYaml(CLIENT),
      ...PODS.map(([name, app]) => podYaml({ name, sa: app, app, port: backends.get(name)?.port ?? 1 })),
      serviceYaml("slow", "slow"),
      grpcRouteYaml("slow-rpc", "slow", { annotations: { "timeout.linkerd.io/request": "300ms" } }),
      serviceYaml("split", "split-nobody"),
      serviceYaml("split-a", "split-a"),
      serviceYaml("split-b", "split-b"),
      grpcRouteYaml("split-rpc", "split", {
        rules: `    - matches: [{ method: { service: test.Echo } }]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{ name: x-route, value: split-rpc }]
            remove: [x-secret]
      backendRefs:
        - { name: split-a, port: 8080, weight: ${splitWeights[0]} }
        - name: split-b
          port: 8080
          weight: ${splitWeights[1]}
          filters:
            - type: RequestHeaderModifier
              requestHeaderModifier: { add: [{ name: x-backend, value: b }] }`,
      }),
      serviceYaml("narrow", "narrow"),
      grpcRouteYaml("narrow-rpc", "narrow", {
        rules: "    - matches: [{ method: { service: test.Echo, method: Unary } }]",
      }),
      serviceYaml("plain", "plain"),
      serviceYaml("retrying", "retrying"),
      grpcRouteYaml("retrying-rpc", "retrying", {
        annotations: { "retry.linkerd.io/grpc": "unavailable", "retry.linkerd.io/limit": "1" },
      }),
      serviceYaml("flaky", "flaky", ACCRUAL),
      serviceYaml("bounded", "bounded"),
      grpcRouteYaml("bounded-rpc", "bounded", {
        annotations: {
          "timeout.linkerd.io/request": "1s",
          "retry.linkerd.io/grpc": "unavailable",
          "retry.linkerd.io/limit": "20",
        },
      }),
      serviceYaml("idle", "idle"),
      grpcRouteYaml("idle-rpc", "idle", { annotations: { "timeout.linkerd.io/idle": "300ms" } }),
      serviceYaml("tardy", "tardy"),
      grpcRouteYaml("tardy-rpc", "tardy", { annotations: { "timeout.linkerd.io/response": "300ms" } }),
      serviceYaml("lonely", "lonely", {
        ...ACCRUAL,
        "balancer.linkerd.io/failure-accrual-consecutive-max-failures": "1",
        "balancer.linkerd.io/failure-accrual-consecutive-min-penalty": "500ms",
        "balancer.linkerd.io/failure-accrual-consecutive-max-penalty": "500ms",
      }),
    );

  const clientFor = (service: string): Echo => {
    const channel = createMeshGrpcChannel({
      target: `${service}.default.svc.cluster.local:8080`,
      identity: clientIdentity,
      discovery,
    });
    channels.push(channel);
    const client = new EchoClient(
      channel.authority,
      grpc.credentials.createInsecure(),
      createMeshClientOptions(channel),
    );
    clients.push(client);
    return client;
  };
  const backend = (name: string) => backends.get(name) as GrpcBackend;

  beforeAll(async () => {
    cp = await startTestControlPlane(cluster());
    clientIdentity = await podIdentity(cp, CLIENT.name, CLIENT.sa);
    for (const [name, app] of PODS) {
      const identity = await podIdentity(cp, name, app);
      identities.push(identity);
      backends.set(name, await startGrpcBackend(name, identity));
    }
    cp.setManifests(cluster());
    discovery = controlPlaneDiscovery(cp, CLIENT.name);
  });

  afterAll(async () => {
    for (const client of clients) client.close();
    for (const channel of channels) channel.close();
    await discovery?.close();
    await Promise.all([...backends.values()].map((b) => b.close()));
    await Promise.all([clientIdentity, ...identities].map((identity) => identity?.close()));
    await cp?.close();
  });

  it("ends a call past the route's request timeout with DEADLINE_EXCEEDED naming the timeout", async () => {
    const timers: NodeJS.Timeout[] = [];
    backend("slow-0").handlers.unary = (_call, callback) => {
      timers.push(setTimeout(() => callback(null, Buffer.from("late")), 5000));
    };
    const client = clientFor("slow");
    const started = performance.now();
    const error = await failure(unary(client, Buffer.from("x")));
    const elapsedMs = performance.now() - started;
    for (const timer of timers) clearTimeout(timer);
    expect(error.code).toBe(status.DEADLINE_EXCEEDED);
    expect(error.details).toContain("timed out waiting for response headers: request timeout: 300ms");
    expect(error.metadata.get("l5d-proxy-error")[0]).toContain("request timeout: 300ms");
    // The server got the call (the timeout is the route's, not a failure to connect), and the call
    // ended at the route's bound, well before the server's answer.
    expect(backend("slow-0").calls).toHaveLength(1);
    expect(elapsedMs).toBeGreaterThanOrEqual(290);
    expect(elapsedMs).toBeLessThan(4000);
  });

  it("splits traffic across the route's backends by weight and applies the rule's and the backend's header filters", async () => {
    const seen: { backend: string; route: unknown; secret: unknown; backendHeader: unknown }[] = [];
    for (const name of ["split-a-0", "split-b-0"]) {
      backend(name).handlers.unary = (call, callback) => {
        seen.push({
          backend: name,
          route: call.metadata.get("x-route")[0],
          secret: call.metadata.get("x-secret")[0],
          backendHeader: call.metadata.get("x-backend")[0],
        });
        callback(null, Buffer.from(name));
      };
    }
    const client = clientFor("split");
    const total = 200;
    for (let i = 0; i < total; i += 10) {
      await Promise.all(
        Array.from({ length: 10 }, () => {
          const metadata = new Metadata();
          metadata.set("x-secret", "hunter2");
          return unary(client, Buffer.from("s"), metadata);
        }),
      );
    }
    const toA = seen.filter((s) => s.backend === "split-a-0").length;
    const toB = seen.filter((s) => s.backend === "split-b-0").length;
    console.log(`traffic split 80/20 over ${total} calls: split-a ${toA}, split-b ${toB}`);
    expect(toA + toB).toBe(total);
    // 80/20 by weight: 160 ± 5.7 (one standard deviation) go to split-a; these bounds are > 4 sd wide.
    expect(toA).toBeGreaterThanOrEqual(135);
    expect(toA).toBeLessThanOrEqual(184);
    expect(toB).toBeGreaterThan(0);
    for (const call of seen) {
      expect(call.route).toBe("split-rpc");
      expect(call.secret).toBeUndefined();
      // split-b's backendRef has a filter of its own.
      expect(call.backendHeader).toBe(call.backend === "split-b-0" ? "b" : undefined);
    }
  });

  it("answers a method no GRPCRoute matches with NOT_FOUND, as Linkerd does, and routes the others", async () => {
    const client = clientFor("narrow");
    expect((await unary(client, Buffer.from("in"))).toString()).toBe("narrow-0:in");
    const result = await collect(client.serverStream(Buffer.from("out")));
    expect(result.messages).toEqual([]);
    expect(result.error?.code).toBe(status.NOT_FOUND);
    expect(result.error?.details).toContain("no route");
    expect(result.error?.metadata.get("l5d-proxy-error")[0]).toContain("no route");
    // Refused by the client side: the server never saw the unrouted call.
    expect(backend("narrow-0").calls.map((c) => c.method)).toEqual(["unary"]);
  });

  it("does not retry UNAVAILABLE unless the route says so", async () => {
    const failOnce = (name: string) => {
      let calls = 0;
      backend(name).handlers.unary = (_call, callback) => {
        calls += 1;
        if (calls === 1) callback({ code: status.UNAVAILABLE, details: "try again" });
        else callback(null, Buffer.from(`${name}:ok`));
      };
    };
    failOnce("plain-0");
    failOnce("retrying-0");
    const plain = await failure(unary(clientFor("plain"), Buffer.from("p")));
    expect(plain.code).toBe(status.UNAVAILABLE);
    expect(plain.details).toBe("try again");
    expect(backend("plain-0").calls).toHaveLength(1);

    const retried = await unary(clientFor("retrying"), Buffer.from("r"));
    expect(retried.toString()).toBe("retrying-0:ok");
    expect(backend("retrying-0").calls).toHaveLength(2);
  });

  it("ejects an endpoint after consecutive failures (failure accrual) and probes it back", async () => {
    let failing = true;
    // flaky-0 is slow and flaky-1 fails fast, so the balancer (peak-EWMA P2C, with calls pending on
    // flaky-0) keeps choosing flaky-1 unless its breaker takes it out.
    backend("flaky-0").handlers.unary = (_call, callback) => {
      setTimeout(() => callback(null, Buffer.from("flaky-0")), 20);
    };
    backend("flaky-1").handlers.unary = (_call, callback) => {
      if (failing) callback({ code: status.INTERNAL, details: "broken" });
      else callback(null, Buffer.from("flaky-1"));
    };
    const client = clientFor("flaky");
    const toFlaky1 = () => backend("flaky-1").calls.length;
    const batch = () =>
      Promise.all(Array.from({ length: 10 }, () => unary(client, Buffer.from("f")).catch(() => undefined)));
    const started = performance.now();
    for (let i = 0; i < 30 && toFlaky1() < 3; i += 1) await batch();
    // Three consecutive failures close flaky-1's gate (calls already sent to it still arrive).
    const beforeEjection = toFlaky1();
    expect(beforeEjection).toBeGreaterThanOrEqual(3);
    const ejectedAt = performance.now();
    for (let i = 0; i < 4; i += 1) await batch();
    const ejectedForMs = performance.now() - ejectedAt;
    const probes = toFlaky1() - beforeEjection;
    console.log(
      `failure accrual: flaky-1 ejected after ${beforeEjection} failures in ${Math.round(ejectedAt - started)} ms; ` +
        `${probes} probe(s) during the next 40 calls (${Math.round(ejectedForMs)} ms)`,
    );
    // Ejected for its penalty (1 s): at most one probe per penalty reaches it (and fails again).
    expect(probes).toBeLessThanOrEqual(Math.floor(ejectedForMs / 1000) + 1);

    // Healthy again: after the penalty a probe succeeds and flaky-1 takes calls again.
    failing = false;
    await new Promise((resolve) => setTimeout(resolve, 1200));
    const before = toFlaky1();
    for (let i = 0; i < 4; i += 1) await batch();
    console.log(`failure accrual: flaky-1 back, ${toFlaky1() - before} of the next 40 calls`);
    expect(toFlaky1() - before).toBeGreaterThan(1);
  });

  it("bounds retries by the route's request timeout", async () => {
    backend("bounded-0").handlers.unary = (_call, callback) => {
      setTimeout(() => callback({ code: status.UNAVAILABLE, details: "still down" }), 100);
    };
    const client = clientFor("bounded");
    // Connected first (a server-streaming call the default handler answers), so the attempts below are
    // not slowed by the TLS handshake.
    expect((await collect(client.serverStream(Buffer.from("warm")))).error).toBeUndefined();
    const started = performance.now();
    const error = await failure(unary(client, Buffer.from("b")));
    const elapsedMs = performance.now() - started;
    const attempts = backend("bounded-0").calls.filter((c) => c.method === "unary").length;
    console.log(
      `request timeout 1s with retries: ${attempts} attempts, ended after ${Math.round(elapsedMs)} ms`,
    );
    expect(error.code).toBe(status.DEADLINE_EXCEEDED);
    expect(error.details).toContain("request timeout: 1s");
    // Retried (the route allows 20; each attempt takes 100 ms plus a 25-250 ms backoff), but never past
    // the route's 1 s.
    expect(attempts).toBeGreaterThanOrEqual(2);
    expect(attempts).toBeLessThan(20);
    expect(elapsedMs).toBeGreaterThanOrEqual(990);
  });

  it("ends a stream idle for longer than the route's idle timeout, after what it delivered", async () => {
    const timers: NodeJS.Timeout[] = [];
    backend("idle-0").handlers.serverStream = (call) => {
      call.write(Buffer.from("first"));
      timers.push(
        setTimeout(() => {
          call.write(Buffer.from("too late"));
          call.end();
        }, 3000),
      );
    };
    const client = clientFor("idle");
    // Connected first, so the 300 ms are not spent on the TLS handshake.
    await unary(client, Buffer.from("warm"));
    const result = await collect(client.serverStream(Buffer.from("go")));
    for (const timer of timers) clearTimeout(timer);
    expect(result.messages).toEqual(["first"]);
    expect(result.error?.code).toBe(status.DEADLINE_EXCEEDED);
    expect(result.error?.details).toContain("timed out processing response stream: idle timeout: 300ms");
  });

  it("ends a response still streaming past the route's response timeout, though never idle", async () => {
    const timers: NodeJS.Timeout[] = [];
    backend("tardy-0").handlers.serverStream = (call) => {
      let sent = 0;
      const tick = () => {
        call.write(Buffer.from(`m${sent}`));
        sent += 1;
        if (sent < 15) timers.push(setTimeout(tick, 100));
        else call.end();
      };
      tick();
    };
    const client = clientFor("tardy");
    await unary(client, Buffer.from("warm"));
    const result = await collect(client.serverStream(Buffer.from("go")));
    for (const timer of timers) clearTimeout(timer);
    expect(result.error?.code).toBe(status.DEADLINE_EXCEEDED);
    expect(result.error?.details).toContain(
      "timed out processing response stream: response stream timeout: 300ms",
    );
    // What arrived before the timeout was delivered; the 1.5 s stream was cut short.
    expect(result.messages.length).toBeGreaterThanOrEqual(1);
    expect(result.messages.length).toBeLessThan(15);
  });

  it("holds a call while the only endpoint is ejected, and sends it as the probe once the penalty passed", async () => {
    let calls = 0;
    backend("lonely-0").handlers.unary = (_call, callback) => {
      calls += 1;
      if (calls === 1) callback({ code: status.INTERNAL, details: "broken once" });
      else callback(null, Buffer.from("recovered"));
    };
    const client = clientFor("lonely");
    expect((await failure(unary(client, Buffer.from("1")))).code).toBe(status.INTERNAL);
    const started = performance.now();
    expect((await unary(client, Buffer.from("2"))).toString()).toBe("recovered");
    const heldMs = performance.now() - started;
    console.log(
      `failure accrual: the call after the ejection was held ${Math.round(heldMs)} ms (penalty 500 ms)`,
    );
    // One failure ejects it for 500 ms; the next call waits for the probe rather than failing at once.
    expect(heldMs).toBeGreaterThanOrEqual(400);
    expect(calls).toBe(2);
  });

  it("follows a live GRPCRoute change: a backend weighted to 0 stops taking calls", async () => {
    const served: string[] = [];
    for (const name of ["split-a-0", "split-b-0"]) {
      backend(name).handlers.unary = (_call, callback) => {
        served.push(name);
        callback(null, Buffer.from(name));
      };
    }
    const client = clientFor("split");
    for (let i = 0; i < 20; i += 1) await unary(client, Buffer.from("before"));
    expect(served).toContain("split-b-0");
    cp.setManifests(cluster([100, 0]));
    // The policy update reaches the channel within a watch round trip; then split-b gets nothing.
    let onlyA = 0;
    const deadline = performance.now() + 10_000;
    while (onlyA < 100 && performance.now() < deadline) {
      served.length = 0;
      await unary(client, Buffer.from("after"));
      onlyA = served[0] === "split-a-0" ? onlyA + 1 : 0;
    }
    expect(onlyA).toBe(100);
  });

  it("routes on the channel alone too (a client without the mesh interceptors)", async () => {
    const timers: NodeJS.Timeout[] = [];
    backend("slow-0").handlers.unary = (_call, callback) => {
      timers.push(setTimeout(() => callback(null, Buffer.from("late")), 5000));
    };
    const bare = (service: string) => {
      const channel = createMeshGrpcChannel({
        target: `${service}.default.svc.cluster.local:8080`,
        identity: clientIdentity,
        discovery,
      });
      channels.push(channel);
      const client = new EchoClient(channel.authority, grpc.credentials.createInsecure(), {
        channelOverride: channel,
      });
      clients.push(client);
      return client;
    };
    const slow = await failure(unary(bare("slow"), Buffer.from("x")));
    for (const timer of timers) clearTimeout(timer);
    expect(slow.code).toBe(status.DEADLINE_EXCEEDED);
    expect(slow.details).toContain("request timeout: 300ms");
    const narrow = await collect(bare("narrow").serverStream(Buffer.from("out")));
    expect(narrow.error?.code).toBe(status.NOT_FOUND);
  });
});
