import { type ChannelCredentials, status } from "@grpc/grpc-js";
import { type ControlPlane, type ManifestFile, startControlPlane } from "@inmesh/control-plane";
import { destination, inbound, outbound, tcpAddressToString } from "@inmesh/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  CLIENT,
  plaintext,
  podYaml,
  readStream,
  serverYaml,
  serviceYaml,
  tlsClient,
  unary,
  WEB_1,
  WEB_2,
  WEB_AUTHORITY,
  workloadOf,
} from "./helpers.js";

const EPHEMERAL = { identity: 0, destination: 0, policy: 0 };

const baseManifests = (serverProtocol = "HTTP/1"): ManifestFile[] => [
  { path: "pods.yaml", text: [podYaml(WEB_1), podYaml(WEB_2), podYaml(CLIENT)].join("---\n") },
  { path: "service.yaml", text: serviceYaml("web", "web") },
  { path: "server.yaml", text: serverYaml("web-http", "web", "http", serverProtocol) },
];

const ROUTE = `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: web-timeout
  namespace: default
spec:
  parentRefs:
    - { group: core, kind: Service, name: web, port: 80 }
  rules:
    - backendRefs:
        - { name: web, port: 80 }
      timeouts:
        request: 5s
`;

const addresses = (update: destination.Update) =>
  update.update?.$case === "add"
    ? update.update.value.addrs.map((addr) => tcpAddressToString(addr.addr))
    : update.update?.$case === "remove"
      ? update.update.value.addrs.map((addr) => tcpAddressToString(addr))
      : [];

interface Clients {
  inbound: inbound.InboundServerPoliciesClient;
  outbound: outbound.OutboundPoliciesClient;
  destination: destination.DestinationClient;
  close(): void;
}

function clients(
  cp: ControlPlane,
  creds: ChannelCredentials,
  options: Record<string, string | number> = {},
): Clients {
  const result = {
    inbound: new inbound.InboundServerPoliciesClient(cp.addresses.policy, creds, options),
    outbound: new outbound.OutboundPoliciesClient(cp.addresses.policy, creds, options),
    destination: new destination.DestinationClient(cp.addresses.destination, creds, options),
    close() {
      result.inbound.close();
      result.outbound.close();
      result.destination.close();
    },
  };
  return result;
}

for (const transport of ["plaintext loopback", "mTLS"] as const) {
  describe(`policy and destination services over ${transport}`, () => {
    let cp: ControlPlane;
    let c: Clients;

    beforeAll(async () => {
      cp = await startControlPlane({ manifests: baseManifests(), ports: EPHEMERAL });
      if (transport === "plaintext loopback") {
        c = clients(cp, plaintext());
      } else {
        const tls = await tlsClient(
          cp,
          cp.serverNames.policy,
          "client.default.serviceaccount.identity.linkerd.cluster.local",
        );
        c = clients(cp, tls.credentials, tls.options);
      }
    });
    afterAll(async () => {
      c?.close();
      await cp?.close();
    });

    it("GetPort answers with the pod's Server, NotFound for an unknown pod, InvalidArgument for a bad workload", async () => {
      const found = await unary<inbound.Server>((callback) =>
        c.inbound.getPort({ workload: workloadOf("web-1"), port: 8080 }, callback),
      );
      expect(found.error).toBeUndefined();
      expect(found.response?.protocol?.kind?.$case).toBe("http1");
      expect(found.response?.labels).toMatchObject({ kind: "server", name: "web-http" });

      const unknown = await unary<inbound.Server>((callback) =>
        c.inbound.getPort({ workload: workloadOf("nope"), port: 8080 }, callback),
      );
      expect(unknown.error?.code).toBe(status.NOT_FOUND);

      const bad = await unary<inbound.Server>((callback) =>
        c.inbound.getPort({ workload: "not a workload", port: 8080 }, callback),
      );
      expect(bad.error?.code).toBe(status.INVALID_ARGUMENT);
    });

    it("WatchPort sends the Server at once and pushes a change of the manifests", async () => {
      const watch = readStream(c.inbound.watchPort({ workload: `${workloadOf("web-1")}\n`, port: 8080 }));
      try {
        expect((await watch.next()).protocol?.kind?.$case).toBe("http1");
        expect(cp.setManifests(baseManifests("HTTP/2")).ok).toBe(true);
        expect((await watch.next()).protocol?.kind?.$case).toBe("http2");
        // An unchanged state sends nothing; the next message must be the next real change.
        expect(cp.setManifests(baseManifests("HTTP/2")).ok).toBe(true);
        expect(cp.setManifests(baseManifests("HTTP/1")).ok).toBe(true);
        expect((await watch.next()).protocol?.kind?.$case).toBe("http1");
      } finally {
        watch.cancel();
      }
    });

    it("OutboundPolicies Get and Watch describe the Service", async () => {
      const spec = outbound.TrafficSpec.fromPartial({
        sourceWorkload: workloadOf("client-1"),
        target: { $case: "authority", value: WEB_AUTHORITY },
      });
      const got = await unary<outbound.OutboundPolicy>((callback) => c.outbound.get(spec, callback));
      expect(got.error).toBeUndefined();
      expect(got.response?.metadata?.kind?.$case).toBe("resource");

      const watch = readStream(c.outbound.watch(spec));
      try {
        const first = await watch.next();
        expect(outbound.OutboundPolicy.encode(first).finish()).toEqual(
          outbound.OutboundPolicy.encode(got.response as outbound.OutboundPolicy).finish(),
        );
        // A route attached to the Service changes the policy; the open Watch receives it.
        expect(cp.setManifests([...baseManifests(), { path: "route.yaml", text: ROUTE }]).ok).toBe(true);
        const routed = await watch.next();
        expect(Buffer.from(outbound.OutboundPolicy.encode(routed).finish()).includes("web-timeout")).toBe(
          true,
        );
        expect(cp.setManifests(baseManifests()).ok).toBe(true);
        const unrouted = await watch.next();
        expect(outbound.OutboundPolicy.encode(unrouted).finish()).toEqual(
          outbound.OutboundPolicy.encode(first).finish(),
        );
      } finally {
        watch.cancel();
      }
    });

    it("Get streams the endpoints, pushes add and remove as pods come and go, and refuses unknown names", async () => {
      const get = readStream(
        c.destination.get(
          destination.GetDestination.fromPartial({ path: WEB_AUTHORITY, contextToken: '{"ns":"default"}' }),
        ),
      );
      try {
        const first = await get.next();
        expect(first.update?.$case).toBe("add");
        expect(addresses(first).sort()).toEqual(["10.1.0.1:8080", "10.1.0.2:8080"]);

        const withoutWeb2 = baseManifests();
        withoutWeb2[0] = { path: "pods.yaml", text: [podYaml(WEB_1), podYaml(CLIENT)].join("---\n") };
        expect(cp.setManifests(withoutWeb2).ok).toBe(true);
        const removed = await get.next();
        expect(removed.update?.$case).toBe("remove");
        expect(addresses(removed)).toEqual(["10.1.0.2:8080"]);

        expect(cp.setManifests(baseManifests()).ok).toBe(true);
        const added = await get.next();
        expect(added.update?.$case).toBe("add");
        expect(addresses(added)).toEqual(["10.1.0.2:8080"]);
      } finally {
        get.cancel();
      }

      const unknown = readStream(
        c.destination.get(
          destination.GetDestination.fromPartial({
            path: "nope.default.svc.cluster.local:80",
            contextToken: "",
          }),
        ),
      );
      expect((await unknown.ended())?.code).toBe(status.NOT_FOUND);
      const ip = readStream(
        c.destination.get(
          destination.GetDestination.fromPartial({ path: "10.1.0.1:8080", contextToken: "" }),
        ),
      );
      expect((await ip.ended())?.code).toBe(status.INVALID_ARGUMENT);
    });

    it("GetProfile sends the profile at once", async () => {
      const profile = readStream(
        c.destination.getProfile(
          destination.GetDestination.fromPartial({ path: WEB_AUTHORITY, contextToken: '{"ns":"default"}' }),
        ),
      );
      try {
        const first = await profile.next();
        expect(first.fullyQualifiedName).toBe("web.default.svc.cluster.local");
      } finally {
        profile.cancel();
      }
    });
  });
}

describe("invalid in-memory manifests", () => {
  it("are rejected with file, document and field while the last good state stays in force", async () => {
    await using cp = await startControlPlane({ manifests: baseManifests(), ports: EPHEMERAL });
    const rejected: unknown[] = [];
    cp.on("manifest-rejected", (event) => rejected.push(event));
    const broken = [
      ...baseManifests(),
      {
        path: "broken.yaml",
        text: "kind: Pod\napiVersion: v1\nmetadata:\n  name: x\n---\nkind: Server\napiVersion: policy.linkerd.io/v1beta3\nmetadata:\n  name: s\n  namespace: default\nspec:\n  port: 99999\n",
      },
    ];
    const result = cp.setManifests(broken);
    expect(result.ok).toBe(false);
    expect(rejected).toHaveLength(1);
    expect(
      cp.rejected?.problems.some(
        (p) => p.file === "broken.yaml" && p.document === 1 && p.field?.includes("port"),
      ),
    ).toBe(true);
    expect(cp.state.findPod("default", "web-2")).toBeDefined();
    const c = clients(cp, plaintext());
    const still = await unary<inbound.Server>((callback) =>
      c.inbound.getPort({ workload: workloadOf("web-1"), port: 8080 }, callback),
    );
    c.close();
    expect(still.error).toBeUndefined();
  });
});

describe("close", () => {
  it("ends open streams with OK, stops serving, and is idempotent", async () => {
    const cp = await startControlPlane({ manifests: baseManifests(), ports: EPHEMERAL });
    const c = clients(cp, plaintext());
    const watch = readStream(c.inbound.watchPort({ workload: workloadOf("web-1"), port: 8080 }));
    const get = readStream(
      c.destination.get(destination.GetDestination.fromPartial({ path: WEB_AUTHORITY })),
    );
    await watch.next();
    await get.next();
    await Promise.all([cp.close(), cp.close()]);
    expect(await watch.ended()).toBeUndefined();
    expect(await get.ended()).toBeUndefined();
    const after = await unary<inbound.Server>((callback) =>
      c.inbound.getPort({ workload: workloadOf("web-1"), port: 8080 }, callback),
    );
    expect(after.error?.code).toBe(status.UNAVAILABLE);
    c.close();
    await cp.close();
  });
});
