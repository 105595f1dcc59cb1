import { subscribe, unsubscribe } from "node:diagnostics_channel";
import { ConfigError, hasMeshErrorCode, MeshErrorCode } from "@inmesh/core";
import type { inbound } from "@inmesh/proto";
import { afterEach, describe, expect, it } from "vitest";
import {
  createPolicyWatcher,
  type PolicyWatchEvent,
  type PolicyWatcher,
  type PolicyWatcherOptions,
} from "../src/index.js";
import { authz, facts, MESH, PLAIN, request, SA, serverMsg } from "./builders.js";
import {
  type ControllerDouble,
  fail,
  policyClient,
  startController,
  status,
  type WatchCall,
} from "./controller-double.js";

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function until(condition: () => boolean, timeoutMs = 10_000, what = "condition"): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

async function controller(
  handler: (call: WatchCall, index: number) => void,
  port = 0,
): Promise<ControllerDouble> {
  const double = await startController(handler, port);
  cleanups.push(() => double.kill());
  return double;
}

function watcher(double: ControllerDouble, options: Partial<PolicyWatcherOptions> = {}): PolicyWatcher {
  const client = policyClient(double.address);
  const w = createPolicyWatcher({
    client,
    workload: '{"ns":"default","pod":"web-0"}',
    ports: [8080],
    backoff: { minMs: 20, maxMs: 200 },
    ...options,
  });
  cleanups.push(() => client.close());
  cleanups.push(() => w.close());
  return w;
}

const onlyA = serverMsg({
  name: "web",
  authorizations: [authz({ name: "a-only", authn: { identities: [SA("a")] } })],
});
const onlyB = serverMsg({
  name: "web",
  authorizations: [authz({ name: "b-only", authn: { identities: [SA("b")] } })],
});
const allowedFor = (w: PolicyWatcher, identity: string, port = 8080) =>
  w.policyFor(port).authorizeHttp(facts(request({ client: MESH("10.0.0.1", identity) }))).allowed;

describe("createPolicyWatcher against a real grpc-js controller", () => {
  it("loads every port, reports state and publishes updates", async () => {
    const seen: inbound.PortSpec[] = [];
    const double = await controller((call) => {
      seen.push(call.request);
      call.write(call.request.port === 8080 ? onlyA : onlyB);
    });
    const published: unknown[] = [];
    const onPublish = (message: unknown) => published.push(message);
    subscribe("mesh:policy:updated", onPublish);
    cleanups.push(() => unsubscribe("mesh:policy:updated", onPublish));

    const w = watcher(double, { ports: [8080, 9090] });
    const events: PolicyWatchEvent[] = [];
    w.subscribe((event) => events.push(event));
    await w.ready();

    expect(seen.map((s) => s.port).sort()).toEqual([8080, 9090]);
    expect(seen[0]?.workload).toBe('{"ns":"default","pod":"web-0"}');
    expect(w.policyFor(8080)).toMatchObject({ status: "loaded", port: 8080 });
    expect(allowedFor(w, SA("a"))).toBe(true);
    expect(allowedFor(w, SA("b"), 9090)).toBe(true);
    expect(allowedFor(w, SA("b"))).toBe(false);
    const state = w.state().find((s) => s.port === 8080);
    expect(state).toMatchObject({
      loaded: true,
      connected: true,
      retrying: true,
      updates: 1,
      status: "loaded",
    });
    expect(state?.lastUpdateMs).toEqual(expect.any(Number));
    expect(events.filter((e) => e.type === "updated")).toHaveLength(2);
    expect(published).toHaveLength(2);
  });

  it("applies updates as they stream in", async () => {
    const double = await controller((call) => call.write(onlyA));
    const w = watcher(double);
    await w.ready();
    expect(allowedFor(w, SA("a"))).toBe(true);
    double.calls[0]?.write(onlyB);
    await until(() => allowedFor(w, SA("b")), 5000, "update");
    expect(allowedFor(w, SA("a"))).toBe(false);
    expect(w.state()[0]?.updates).toBe(2);
  });

  it("keeps the last policy while the controller is down, then picks up the new one", async () => {
    const first = await controller((call) => call.write(onlyA));
    const w = watcher(first);
    await w.ready();
    const errors: PolicyWatchEvent[] = [];
    w.subscribe((e) => e.type === "error" && errors.push(e));

    first.kill();
    await until(() => errors.length > 0, 5000, "stream error");
    // A denied identity stays denied, an allowed one stays allowed.
    expect(allowedFor(w, SA("a"))).toBe(true);
    expect(allowedFor(w, SA("b"))).toBe(false);
    expect(w.state()[0]).toMatchObject({ loaded: true, connected: false, retrying: true });
    expect(errors[0]).toMatchObject({ fatal: false });

    await controller((call) => call.write(onlyB), first.port);
    await until(() => allowedFor(w, SA("b")), 15_000, "reconnect");
    expect(allowedFor(w, SA("a"))).toBe(false);
    expect(w.state()[0]?.reconnects).toBeGreaterThan(0);
  });

  it("stops retrying on InvalidArgument and keeps the last value", async () => {
    const warnings: Error[] = [];
    const onWarning = (warning: Error) => warnings.push(warning);
    process.on("warning", onWarning);
    cleanups.push(() => process.off("warning", onWarning));
    const double = await controller((call, index) => {
      if (index === 0) call.write(onlyA);
      else fail(call, status.INVALID_ARGUMENT, "bad workload");
    });
    const w = watcher(double);
    await w.ready();
    fail(double.calls[0] as WatchCall, status.UNAVAILABLE, "restarting");
    await until(() => w.state()[0]?.retrying === false, 5000, "refusal");
    const calls = double.calls.length;
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(double.calls.length).toBe(calls);
    expect(allowedFor(w, SA("a"))).toBe(true);
    expect(w.state()[0]?.lastError).toMatch(/bad workload/);
    await until(() => warnings.some((x) => /refused WatchPort/.test(x.message)), 2000, "warning");
  });

  it("rejects ready() when a port is refused before it ever loaded; FailedPrecondition too", async () => {
    const double = await controller((call) => fail(call, status.FAILED_PRECONDITION, "not meshed"));
    const w = watcher(double);
    await expect(w.ready()).rejects.toSatisfy((e) => hasMeshErrorCode(e, MeshErrorCode.CP_REJECTED));
    expect(w.policyFor(8080).status).toBe("not-loaded");
    await expect(w.waitForPolicy(8080)).resolves.toMatchObject({ status: "not-loaded" });
  });

  it("keeps retrying on NotFound with backoff, one attempt per step", async () => {
    const double = await controller((call, index) => {
      if (index < 4) fail(call, status.NOT_FOUND, "unknown server");
      else call.write(onlyA);
    });
    const w = watcher(double, { backoff: { minMs: 50, maxMs: 1000, jitterRatio: 0 } });
    const started = Date.now();
    await w.ready();
    // 50 + 100 + 200 + 400 ms of backoff before the fifth attempt.
    expect(Date.now() - started).toBeGreaterThanOrEqual(700);
    expect(double.calls).toHaveLength(5);
    expect(w.state()[0]).toMatchObject({ reconnects: 4, loaded: true });
  });

  it("an update that does not convert becomes the invalid policy; the next valid one takes over", async () => {
    const double = await controller((call) => call.write(onlyA));
    const w = watcher(double);
    await w.ready();
    const invalid = { ...onlyA, protocol: undefined };
    double.calls[0]?.write(invalid);
    await until(() => w.policyFor(8080).status === "invalid", 5000, "invalid policy");
    expect(w.state()[0]?.invalidReason).toMatch(/protocol/);
    const local = w.policyFor(8080).authorizeHttp(facts(request({ client: PLAIN("127.0.0.1") })));
    expect(local).toMatchObject({ allowed: false, reason: "invalid-policy" });
    double.calls[0]?.write(onlyB);
    await until(() => allowedFor(w, SA("b")), 5000, "recovery");
  });

  it("treats undecodable or oversized messages as a broken stream: last policy kept, reconnects", async () => {
    const big = serverMsg({ name: "x".repeat(4096), authorizations: [] });
    const double = await controller((call, index) => {
      if (index === 0) {
        call.write(onlyA);
        call.write(Buffer.from([0xff, 0xff, 0xff]));
      } else if (index === 1) {
        call.write(big);
      } else {
        call.write(onlyB);
      }
    });
    const w = watcher(double, { maxMessageBytes: 1024 });
    const errors: string[] = [];
    w.subscribe((e) => e.type === "error" && errors.push(e.error.code));
    await until(() => allowedFor(w, SA("b")), 10_000, "recovery");
    expect(errors).toEqual([MeshErrorCode.PROTO_DECODE, MeshErrorCode.PROTO_TOO_LARGE]);
    expect(double.calls.length).toBe(3);
  });

  it("strict mode: holds a request up to initialWaitMs, then refuses it as not-loaded", async () => {
    let release: (() => void) | undefined;
    const double = await controller((call) => {
      release = () => call.write(onlyA);
    });
    const w = watcher(double, { initialWaitMs: 200 });
    expect(w.policyFor(8080).status).toBe("not-loaded");
    const held = await w.waitForPolicy(8080);
    expect(held.status).toBe("not-loaded");
    expect(held.authorizeHttp(facts(request({ client: MESH("10.0.0.1", SA("a")) })))).toMatchObject({
      allowed: false,
      reason: "not-loaded",
      httpStatus: 403,
      grpcStatus: 7,
    });
    expect(held.authorizeConnection(facts(request({})).client)).toMatchObject({
      allowed: false,
      reason: "not-loaded",
    });
    // A request that arrives before the answer is released as soon as it comes.
    await until(() => release !== undefined, 5000, "stream");
    const waiting = w.waitForPolicy(8080, { timeoutMs: 5000 });
    release?.();
    await expect(waiting).resolves.toMatchObject({ status: "loaded" });
    expect(allowedFor(w, SA("a"))).toBe(true);
  });

  it("Linkerd mode: serves the configured default until the controller answers", async () => {
    const double = await controller(() => {});
    const w = watcher(double, {
      serveDefaultUntilLoaded: true,
      defaultPolicy: "all-authenticated",
      ports: [8080, 5432],
      opaquePorts: [5432],
    });
    await expect(w.waitForPolicy(8080)).resolves.toMatchObject({
      status: "default",
      protocol: "detect",
      port: 8080,
    });
    expect(allowedFor(w, SA("b"))).toBe(true);
    expect(w.policyFor(8080).authorizeHttp(facts(request({ client: PLAIN("10.0.0.1") }))).allowed).toBe(
      false,
    );
    expect(w.policyFor(5432)).toMatchObject({ status: "default", protocol: "opaque" });
    // Ports nobody watches get the default too.
    expect(w.policyFor(1234)).toMatchObject({ status: "default", port: undefined });
    const deny = watcher(double, { serveDefaultUntilLoaded: true, defaultPolicy: "deny" });
    expect(
      deny.policyFor(8080).authorizeConnection(facts(request({ client: PLAIN("127.0.0.1") })).client).allowed,
    ).toBe(false);
  });

  it("waitForPolicy honours an abort signal", async () => {
    const double = await controller(() => {});
    const w = watcher(double);
    const controllerAbort = new AbortController();
    const waiting = w.waitForPolicy(8080, { signal: controllerAbort.signal, timeoutMs: 10_000 });
    controllerAbort.abort();
    await expect(waiting).rejects.toSatisfy((e) => hasMeshErrorCode(e, MeshErrorCode.CANCELED));
  });

  it("close() cancels the streams, rejects ready() and is idempotent", async () => {
    const double = await controller(() => {});
    const w = watcher(double);
    await until(() => double.calls.length === 1, 5000, "stream");
    const ready = w.ready();
    await Promise.all([w.close(), w.close()]);
    await expect(ready).rejects.toSatisfy((e) => hasMeshErrorCode(e, MeshErrorCode.CLOSED));
    await until(() => double.open().length === 0, 5000, "cancellation");
    await expect(w.ready()).rejects.toSatisfy((e) => hasMeshErrorCode(e, MeshErrorCode.CLOSED));
  });

  it("validates its options at construction", async () => {
    const double = await controller(() => {});
    const client = policyClient(double.address);
    cleanups.push(() => client.close());
    const base = { client, workload: "w", ports: [8080] };
    const invalid: Partial<PolicyWatcherOptions>[] = [
      { ports: [] },
      { ports: [0] },
      { ports: [8080, 8080] },
      { ports: [1.5] },
      { workload: "" },
      { initialWaitMs: -1 },
      { maxMessageBytes: 0 },
      { client: {} as never },
      { opaquePorts: [70000] },
    ];
    for (const override of invalid) {
      expect(() => createPolicyWatcher({ ...base, ...override })).toThrow(
        expect.objectContaining({ code: MeshErrorCode.INVALID_ARG }),
      );
    }
    expect(() => createPolicyWatcher({ ...base, defaultPolicy: "cluster-authenticated" })).toThrow(
      ConfigError,
    );
    expect(() => createPolicyWatcher({ ...base, backoff: { minMs: -1 } })).toThrow(ConfigError);
    expect(double.calls).toHaveLength(0);
  });
});
