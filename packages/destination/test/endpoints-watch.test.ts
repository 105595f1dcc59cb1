import { isMeshError, type MeshError, MeshErrorCode } from "@inmesh/core";
import type { destination } from "@inmesh/proto";
import { afterEach, describe, expect, it } from "vitest";
import { createContextToken, createDiscovery, type EndpointSet, type Watch } from "../src/index.js";
import { fail, startControlPlane, status, testClients } from "./control-plane-double.js";
import { addUpdate, noEndpoints, removeUpdate, waitFor, weightedAddr } from "./helpers.js";

const AUTHORITY = "web.ns.svc.cluster.local:80";
const FAST = { backoff: { minMs: 10, maxMs: 100 } };

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(
  planeHandlers: Parameters<typeof startControlPlane>[0],
  options: Record<string, unknown> = {},
) {
  const plane = await startControlPlane(planeHandlers);
  cleanups.push(() => plane.kill());
  const clients = testClients(plane.address);
  cleanups.push(() => clients.close());
  const discovery = createDiscovery({
    destinationClient: clients.destinationClient,
    contextToken: createContextToken({ ns: "client-ns", nodeName: "node-1" }),
    ...FAST,
    ...options,
  });
  cleanups.push(() => discovery.close());
  return { plane, discovery };
}

function record<T>(watch: Watch<T>): { values: T[]; errors: MeshError[] } {
  const values: T[] = [];
  const errors: MeshError[] = [];
  watch.onUpdate((value) => values.push(value));
  watch.onError((error) => errors.push(error));
  return { values, errors };
}

const addresses = (set: EndpointSet | undefined) => set?.endpoints.map((e) => e.address);

describe("watchEndpoints over Destination.Get", () => {
  it("tracks add, remove and no_endpoints; ignores empty adds and redundant messages", async () => {
    const { plane, discovery } = await setup({});
    const watch = discovery.watchEndpoints(AUTHORITY);
    const { values } = record(watch);
    await waitFor(() => plane.getCalls.length === 1);
    const call = plane.getCalls[0] as NonNullable<(typeof plane.getCalls)[0]>;
    expect(call.request).toEqual({
      scheme: "",
      path: AUTHORITY,
      contextToken: '{"ns":"client-ns","nodeName":"node-1"}',
    });

    const meshed = weightedAddr("10.1.0.1:8080", {
      metricLabels: { pod: "web-1", zone_locality: "local" },
      tlsIdentity: {
        strategy: {
          $case: "dnsLikeIdentity",
          value: { name: "web.ns.serviceaccount.identity.linkerd.cluster.local" },
        },
        serverName: { name: "web.ns.serviceaccount.identity.linkerd.cluster.local" },
      },
      protocolHint: { protocol: { $case: "h2", value: {} }, opaqueTransport: { inboundPort: 4143 } },
      authorityOverride: { authorityOverride: "web.ns.svc.cluster.local:80" },
      http2: {
        keepAlive: {
          interval: { seconds: 10n, nanos: 0 },
          timeout: { seconds: 3n, nanos: 0 },
          whileIdle: true,
        },
        flowControl: undefined,
        internals: undefined,
      },
    } as Partial<destination.WeightedAddr>);
    const plain = weightedAddr("[fd00::2]:8080", { weight: 7 });
    call.write(addUpdate([meshed, plain], { service: "web", namespace: "ns", pod: "set-level" }));
    const first = await watch.ready({ timeoutMs: 5000 });
    expect(addresses(first)).toEqual(["10.1.0.1:8080", "[fd00::2]:8080"]);
    expect(first.exists).toBe(true);
    expect(first.get("10.1.0.1:8080")).toEqual({
      address: "10.1.0.1:8080",
      host: "10.1.0.1",
      port: 8080,
      weight: 10000,
      metricLabels: { service: "web", namespace: "ns", pod: "web-1", zone_locality: "local" },
      tlsIdentity: {
        kind: "dns",
        name: "web.ns.serviceaccount.identity.linkerd.cluster.local",
        serverName: "web.ns.serviceaccount.identity.linkerd.cluster.local",
      },
      protocolHint: "h2",
      opaqueTransportPort: 4143,
      authorityOverride: "web.ns.svc.cluster.local:80",
      http2: { keepAliveIntervalMs: 10_000, keepAliveTimeoutMs: 3000, keepAliveWhileIdle: true },
    });
    expect(first.get("[fd00::2]:8080")).toEqual({
      address: "[fd00::2]:8080",
      host: "fd00::2",
      port: 8080,
      weight: 7,
      metricLabels: { service: "web", namespace: "ns", pod: "set-level" },
      protocolHint: undefined,
    });

    // An add whose only address is invalid is ignored; a redundant add publishes nothing.
    call.write(addUpdate([weightedAddr("10.1.0.9:0")]));
    call.write(addUpdate([plain], { service: "web", namespace: "ns", pod: "set-level" }));
    call.write(removeUpdate(["10.1.0.1:8080"]));
    await waitFor(() => values.length === 2, 5000, "remove");
    expect(addresses(values[1])).toEqual(["[fd00::2]:8080"]);

    call.write(removeUpdate(["[fd00::2]:8080"]));
    await waitFor(() => values.length === 3, 5000, "last remove");
    expect(values[2]).toMatchObject({ exists: true, endpoints: [] });

    call.write(noEndpoints(false));
    await waitFor(() => values.length === 4, 5000, "does not exist");
    expect(values[3]).toMatchObject({ exists: false, endpoints: [] });

    call.write(addUpdate([weightedAddr("10.1.0.3:80")]));
    await waitFor(() => values.length === 5, 5000, "add after no_endpoints");
    expect(values[4]?.exists).toBe(true);
    expect(addresses(values[4])).toEqual(["10.1.0.3:80"]);

    // A reordered remove of an unknown address changes nothing.
    call.write(removeUpdate(["10.9.9.9:80"]));
    call.write(noEndpoints(true));
    await waitFor(() => values.length === 6, 5000, "no endpoints");
    expect(values[5]).toMatchObject({ exists: true, endpoints: [] });
    expect(watch.current()).toBe(values[5]);
    expect(watch.state()).toMatchObject({ connected: true, hasValue: true, updates: 6, reconnects: 0 });
  });

  it("drops endpoints whose identity cannot be verified rather than using plaintext", async () => {
    const { plane, discovery } = await setup({
      get(call) {
        call.write(
          addUpdate([
            weightedAddr("10.0.0.1:80", {
              tlsIdentity: {
                strategy: { $case: "dnsLikeIdentity", value: { name: "Not A DNS name" } },
                serverName: undefined,
              },
            } as Partial<destination.WeightedAddr>),
            weightedAddr("10.0.0.2:80", {
              tlsIdentity: {
                strategy: { $case: "uriLikeIdentity", value: { uri: "spiffe://td/ns/x" } },
                serverName: undefined,
              },
            } as Partial<destination.WeightedAddr>),
            weightedAddr("10.0.0.3:80", {
              tlsIdentity: {
                strategy: { $case: "uriLikeIdentity", value: { uri: "spiffe://td/ns/x" } },
                serverName: { name: "x.ns.external.identity.linkerd.cluster.local" },
              },
            } as Partial<destination.WeightedAddr>),
          ]),
        );
      },
    });
    const set = await discovery.watchEndpoints(AUTHORITY).ready({ timeoutMs: 5000 });
    expect(addresses(set)).toEqual(["10.0.0.3:80"]);
    expect(set.endpoints[0]?.tlsIdentity).toEqual({
      kind: "uri",
      name: "spiffe://td/ns/x",
      serverName: "x.ns.external.identity.linkerd.cluster.local",
    });
    expect(plane.getCalls).toHaveLength(1);
  });

  it("keeps the last state across a control-plane restart until the new stream's first message", async () => {
    const first = await startControlPlane({
      get(call) {
        call.write(addUpdate([weightedAddr("10.0.0.1:80"), weightedAddr("10.0.0.2:80")]));
      },
    });
    cleanups.push(() => first.kill());
    const clients = testClients(first.address);
    cleanups.push(() => clients.close());
    const discovery = createDiscovery({ destinationClient: clients.destinationClient, ...FAST });
    cleanups.push(() => discovery.close());
    const watch = discovery.watchEndpoints(AUTHORITY);
    const { values, errors } = record(watch);
    await watch.ready({ timeoutMs: 5000 });

    first.kill();
    await waitFor(() => !watch.state().connected && errors.length > 0, 5000, "disconnect");
    expect(errors[0]?.code).toBe(MeshErrorCode.DESTINATION_UNREACHABLE);
    expect(addresses(watch.current())).toEqual(["10.0.0.1:80", "10.0.0.2:80"]);

    const second = await startControlPlane({}, first.port);
    cleanups.push(() => second.kill());
    await waitFor(() => second.getCalls.length > 0, 15_000, "re-subscribe");
    // Connected again, but nothing received yet: the old endpoints still serve.
    expect(addresses(watch.current())).toEqual(["10.0.0.1:80", "10.0.0.2:80"]);
    const before = values.length;
    second.getCalls[second.getCalls.length - 1]?.write(
      addUpdate([weightedAddr("10.0.0.2:80"), weightedAddr("10.0.0.3:80")]),
    );
    await waitFor(() => values.length > before, 5000, "first message after restart");
    // The first message of the new stream replaces the state: 10.0.0.1 went away while disconnected.
    expect(addresses(watch.current())).toEqual(["10.0.0.2:80", "10.0.0.3:80"]);
    expect(watch.state().reconnects).toBeGreaterThanOrEqual(1);
    expect(watch.state().connected).toBe(true);
  });

  it.each([
    [status.NOT_FOUND, "NotFound"],
    [status.INVALID_ARGUMENT, "InvalidArgument"],
  ])("stops on %s with DestinationError MESH_ERR_DESTINATION_NOT_FOUND (%s)", async (code) => {
    const { plane, discovery } = await setup({
      get(call) {
        fail(call, code, "unknown service");
      },
    });
    const watch = discovery.watchEndpoints(AUTHORITY);
    const { errors } = record(watch);
    const error = await watch.ready({ timeoutMs: 5000 }).catch((e: unknown) => e);
    expect(isMeshError(error) && error.code).toBe(MeshErrorCode.DESTINATION_NOT_FOUND);
    expect((error as Error).name).toBe("DestinationError");
    expect((error as Error).message).toContain("unknown service");
    expect(errors).toEqual([error]);
    expect(watch.state().terminated).toBe(true);
    // Several backoff periods later there is still only the one call.
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(plane.getCalls).toHaveLength(1);
    await expect(watch.ready()).rejects.toBe(error);
  });

  it("retries other errors with backoff and re-subscribes after a clean end of stream", async () => {
    const { plane, discovery } = await setup({
      get(call, index) {
        if (index === 0) fail(call, status.UNAVAILABLE, "controller restarting");
        else if (index === 1) {
          call.write(addUpdate([weightedAddr("10.0.0.1:80")]));
          call.end();
        } else call.write(addUpdate([weightedAddr("10.0.0.9:80")]));
      },
    });
    const watch = discovery.watchEndpoints(AUTHORITY);
    const { errors } = record(watch);
    await waitFor(() => addresses(watch.current())?.[0] === "10.0.0.9:80", 5000, "third stream");
    expect(plane.getCalls).toHaveLength(3);
    expect(errors[0]?.code).toBe(MeshErrorCode.DESTINATION_UNREACHABLE);
    expect(errors[0]?.details).toMatchObject({ grpcCode: status.UNAVAILABLE });
    expect(watch.state().reconnects).toBe(2);
  });

  it("restarts a stream whose first message does not arrive within initialTimeoutMs", async () => {
    let cancelled = false;
    const { plane, discovery } = await setup(
      {
        get(call, index) {
          if (index === 0) call.on("cancelled", () => (cancelled = true));
          else call.write(addUpdate([weightedAddr("10.0.0.1:80")]));
        },
      },
      { initialTimeoutMs: 100 },
    );
    const watch = discovery.watchEndpoints(AUTHORITY);
    await watch.ready({ timeoutMs: 5000 });
    // On a loaded machine a later stream may time out too; what matters is that the silent one was dropped.
    expect(plane.getCalls.length).toBeGreaterThanOrEqual(2);
    await waitFor(() => cancelled, 5000, "first stream cancelled");
  });

  it("refuses messages above maxMessageBytes and reconnects", async () => {
    const many = Array.from({ length: 50 }, (_, i) =>
      weightedAddr(`10.0.${i}.1:8080`, { metricLabels: { pod: `pod-${i}` } }),
    );
    const { plane, discovery } = await setup(
      {
        get(call, index) {
          call.write(index === 0 ? addUpdate(many) : addUpdate([weightedAddr("10.0.0.1:80")]));
        },
      },
      { maxMessageBytes: 256 },
    );
    const watch = discovery.watchEndpoints(AUTHORITY);
    const { errors } = record(watch);
    const set = await watch.ready({ timeoutMs: 5000 });
    expect(addresses(set)).toEqual(["10.0.0.1:80"]);
    expect(errors[0]?.code).toBe(MeshErrorCode.PROTO_TOO_LARGE);
    expect(plane.getCalls).toHaveLength(2);
  });

  it("shares one stream per target and cancels it when the last handle closes", async () => {
    let cancelled = 0;
    const { plane, discovery } = await setup({
      get(call) {
        call.on("cancelled", () => (cancelled += 1));
        call.write(addUpdate([weightedAddr("10.0.0.1:80")]));
      },
    });
    const a = discovery.watchEndpoints(AUTHORITY);
    const b = discovery.watchEndpoints("WEB.ns.svc.cluster.local:80");
    const seenByB: EndpointSet[] = [];
    b.onUpdate((set) => seenByB.push(set));
    await Promise.all([a.ready({ timeoutMs: 5000 }), b.ready({ timeoutMs: 5000 })]);
    expect(plane.getCalls).toHaveLength(1);
    expect(discovery.activeWatches()).toBe(1);
    await a.close();
    await a.close(); // idempotent
    await expect(a.ready()).rejects.toMatchObject({ code: MeshErrorCode.CLOSED });
    expect(b.current()).toBeDefined();
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(cancelled).toBe(0);
    await b[Symbol.asyncDispose]();
    await waitFor(() => cancelled === 1, 5000, "stream cancelled");
    expect(discovery.activeWatches()).toBe(0);
    expect(seenByB).toHaveLength(1);
  });

  it("ready() honours timeoutMs, an abort signal and close()", async () => {
    const { discovery } = await setup({ get() {} }, { initialTimeoutMs: 60_000 });
    const watch = discovery.watchEndpoints(AUTHORITY);
    await expect(watch.ready({ timeoutMs: 30 })).rejects.toMatchObject({ code: MeshErrorCode.DEADLINE });
    const controller = new AbortController();
    const aborted = watch.ready({ signal: controller.signal });
    controller.abort();
    await expect(aborted).rejects.toMatchObject({ code: MeshErrorCode.CANCELED });
    const pending = watch.ready();
    await discovery.close();
    await expect(pending).rejects.toMatchObject({ code: MeshErrorCode.CLOSED });
    expect(() => discovery.watchEndpoints(AUTHORITY)).toThrow(/closed/);
  });

  it("validates targets and caps the number of watches", async () => {
    const { discovery } = await setup({ get() {} }, { maxWatches: 2 });
    for (const bad of ["", "web ns", "web:0", "web:70000", "-web:80", "10.0.0.1:80/x"]) {
      expect(() => discovery.watchEndpoints(bad)).toThrow(
        expect.objectContaining({ code: MeshErrorCode.INVALID_ARG }),
      );
    }
    discovery.watchEndpoints("a.ns.svc.cluster.local:80");
    discovery.watchEndpoints("b.ns.svc.cluster.local:80");
    expect(() => discovery.watchEndpoints("c.ns.svc.cluster.local:80")).toThrow(
      expect.objectContaining({ code: MeshErrorCode.DESTINATION_WATCH_LIMIT }),
    );
    expect(() => createDiscovery({})).toThrow(
      expect.objectContaining({ code: MeshErrorCode.INVALID_CONFIG }),
    );
    expect(() => discovery.watchOutboundPolicy("web:80")).toThrow(
      expect.objectContaining({ code: MeshErrorCode.INVALID_CONFIG }),
    );
  });
});
