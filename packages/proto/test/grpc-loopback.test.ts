import {
  credentials,
  Server,
  ServerCredentials,
  type ServerUnaryCall,
  type ServerWritableStream,
  type sendUnaryData,
  status,
} from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { destination, identity, inbound, outbound } from "../src/index.js";

type Client = InstanceType<typeof identity.IdentityClient>;

function collect<T>(stream: NodeJS.ReadableStream & { cancel(): void }, count: number): Promise<T[]> {
  return new Promise((resolve, reject) => {
    const items: T[] = [];
    stream.on("data", (item: T) => {
      items.push(item);
      if (items.length === count) {
        stream.cancel();
        resolve(items);
      }
    });
    stream.on("error", (error: { code?: number }) => {
      if (items.length === count && error.code === status.CANCELLED) return;
      reject(error);
    });
  });
}

describe("grpc-js server and client built from @inmesh/proto", () => {
  const server = new Server();
  let address = "";
  let identityClient: Client;
  let destinationClient: InstanceType<typeof destination.DestinationClient>;
  let inboundClient: InstanceType<typeof inbound.InboundServerPoliciesClient>;
  let outboundClient: InstanceType<typeof outbound.OutboundPoliciesClient>;

  const sampleServer = inbound.Server.fromPartial({ labels: { group: "", kind: "default", name: "deny" } });
  const samplePolicy = outbound.OutboundPolicy.fromPartial({
    metadata: { kind: { $case: "default", value: "web" } },
  });

  beforeAll(async () => {
    server.addService(identity.IdentityService, {
      certify(
        call: ServerUnaryCall<identity.CertifyRequest, identity.CertifyResponse>,
        done: sendUnaryData<identity.CertifyResponse>,
      ) {
        if (call.request.token.length === 0) {
          done({ code: status.INVALID_ARGUMENT, details: "missing token" });
          return;
        }
        done(null, {
          leafCertificate: Buffer.from(`leaf-for-${call.request.identity}`),
          intermediateCertificates: [Buffer.from("issuer")],
          validUntil: { seconds: 42n, nanos: 7 },
        });
      },
    });
    server.addService(destination.DestinationService, {
      get(call: ServerWritableStream<destination.GetDestination, destination.Update>) {
        call.write({ update: { $case: "noEndpoints", value: { exists: true } } });
        call.write(
          destination.Update.fromPartial({
            update: {
              $case: "add",
              value: {
                addrs: [
                  {
                    addr: { ip: { ip: { $case: "ipv4", value: 0x7f000001 } }, port: 8080 },
                    weight: 1,
                    metricLabels: {},
                  },
                ],
                metricLabels: { path: call.request.path },
              },
            },
          }),
        );
      },
      getProfile(call: ServerWritableStream<destination.GetDestination, destination.DestinationProfile>) {
        for (let i = 0; i < 3; i += 1) {
          call.write(
            destination.DestinationProfile.fromPartial({ fullyQualifiedName: `${call.request.path}#${i}` }),
          );
        }
      },
    });
    server.addService(inbound.InboundServerPoliciesService, {
      getPort(_call: ServerUnaryCall<inbound.PortSpec, inbound.Server>, done: sendUnaryData<inbound.Server>) {
        done(null, sampleServer);
      },
      watchPort(call: ServerWritableStream<inbound.PortSpec, inbound.Server>) {
        call.write(sampleServer);
        call.write(inbound.Server.fromPartial({ labels: { name: `port-${call.request.port}` } }));
      },
    });
    server.addService(outbound.OutboundPoliciesService, {
      get(
        _call: ServerUnaryCall<outbound.TrafficSpec, outbound.OutboundPolicy>,
        done: sendUnaryData<outbound.OutboundPolicy>,
      ) {
        done(null, samplePolicy);
      },
      watch(call: ServerWritableStream<outbound.TrafficSpec, outbound.OutboundPolicy>) {
        call.write(samplePolicy);
        call.write(samplePolicy);
      },
    });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, bound) =>
        error ? reject(error) : resolve(bound),
      ),
    );
    address = `127.0.0.1:${port}`;
    const insecure = credentials.createInsecure();
    identityClient = new identity.IdentityClient(address, insecure);
    destinationClient = new destination.DestinationClient(address, insecure);
    inboundClient = new inbound.InboundServerPoliciesClient(address, insecure);
    outboundClient = new outbound.OutboundPoliciesClient(address, insecure);
  });

  afterAll(async () => {
    for (const client of [identityClient, destinationClient, inboundClient, outboundClient]) client?.close();
    await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
  });

  it("Identity.Certify, success and a typed gRPC error", async () => {
    const response = await new Promise<identity.CertifyResponse>((resolve, reject) =>
      identityClient.certify(
        { identity: "web.default", token: Buffer.from("t"), certificateSigningRequest: Buffer.from([0x30]) },
        (error, value) => (error ? reject(error) : resolve(value)),
      ),
    );
    expect(response.leafCertificate.toString()).toBe("leaf-for-web.default");
    expect(response.validUntil).toEqual({ seconds: 42n, nanos: 7 });
    const failure = await new Promise<{ code?: number }>((resolve) =>
      identityClient.certify(
        { identity: "x", token: Buffer.alloc(0), certificateSigningRequest: Buffer.alloc(0) },
        (error) => resolve(error ?? {}),
      ),
    );
    expect(failure.code).toBe(status.INVALID_ARGUMENT);
  });

  it("Destination.Get and GetProfile stream updates", async () => {
    const updates = await collect<destination.Update>(
      destinationClient.get({ scheme: "", path: "web.default.svc.cluster.local:80", contextToken: "" }),
      2,
    );
    expect(updates[0]?.update).toEqual({ $case: "noEndpoints", value: { exists: true } });
    expect(updates[1]?.update?.$case).toBe("add");
    const profiles = await collect<destination.DestinationProfile>(
      destinationClient.getProfile({ scheme: "", path: "p", contextToken: "" }),
      3,
    );
    expect(profiles.map((profile) => profile.fullyQualifiedName)).toEqual(["p#0", "p#1", "p#2"]);
  });

  it("InboundServerPolicies.GetPort and WatchPort", async () => {
    const server = await new Promise<inbound.Server>((resolve, reject) =>
      inboundClient.getPort({ workload: "default:web", port: 80 }, (error, value) =>
        error ? reject(error) : resolve(value),
      ),
    );
    expect(server.labels).toEqual({ group: "", kind: "default", name: "deny" });
    const watched = await collect<inbound.Server>(
      inboundClient.watchPort({ workload: "default:web", port: 8080 }),
      2,
    );
    expect(watched[1]?.labels).toEqual({ name: "port-8080" });
  });

  it("OutboundPolicies.Get and Watch", async () => {
    const policy = await new Promise<outbound.OutboundPolicy>((resolve, reject) =>
      outboundClient.get(
        {
          sourceWorkload: "default:web",
          target: { $case: "authority", value: "books.default.svc.cluster.local:80" },
        },
        (error, value) => (error ? reject(error) : resolve(value)),
      ),
    );
    expect(policy.metadata?.kind).toEqual({ $case: "default", value: "web" });
    const watched = await collect<outbound.OutboundPolicy>(
      outboundClient.watch({ sourceWorkload: "", target: { $case: "authority", value: "a:80" } }),
      2,
    );
    expect(watched).toHaveLength(2);
  });
});
