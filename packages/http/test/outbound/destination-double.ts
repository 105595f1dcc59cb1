/** A destination-controller double: a real grpc-js server built from @inmesh/proto, answering what the test sets. */
import { credentials, Server, ServerCredentials, type ServerWritableStream, status } from "@grpc/grpc-js";
import { createDiscovery, type Discovery } from "@inmesh/destination";
import { destination, tcpAddressFromString } from "@inmesh/proto";

export interface DoubleEndpoint {
  readonly port: number;
  readonly identity?: string;
  readonly hint?: "h2" | "opaque";
  readonly opaqueTransportPort?: number;
  readonly labels?: Readonly<Record<string, string>>;
}

export function weightedAddr(endpoint: DoubleEndpoint): destination.WeightedAddr {
  return destination.WeightedAddr.fromPartial({
    addr: tcpAddressFromString("127.0.0.1", endpoint.port),
    weight: 10_000,
    metricLabels: { ...(endpoint.labels ?? {}) },
    ...(endpoint.identity
      ? {
          tlsIdentity: {
            strategy: { $case: "dnsLikeIdentity", value: { name: endpoint.identity } },
            serverName: { name: endpoint.identity },
          },
        }
      : {}),
    ...(endpoint.hint || endpoint.opaqueTransportPort
      ? {
          protocolHint: {
            protocol:
              endpoint.hint === "h2"
                ? { $case: "h2", value: {} }
                : endpoint.hint === "opaque"
                  ? { $case: "opaque", value: {} }
                  : undefined,
            opaqueTransport:
              endpoint.opaqueTransportPort !== undefined
                ? { inboundPort: endpoint.opaqueTransportPort }
                : undefined,
          },
        }
      : {}),
  });
}

export interface DestinationDouble {
  readonly address: string;
  /** Endpoints by authority (`svc.ns.svc.cluster.local:port`); unknown authorities get NOT_FOUND. */
  readonly services: Map<string, DoubleEndpoint[]>;
  readonly discovery: Discovery;
  close(): Promise<void>;
}

export async function startDestinationDouble(
  services: Record<string, DoubleEndpoint[]>,
): Promise<DestinationDouble> {
  const map = new Map(Object.entries(services));
  const server = new Server();
  const calls: ServerWritableStream<destination.GetDestination, destination.Update>[] = [];
  server.addService(destination.DestinationService, {
    get(call: ServerWritableStream<destination.GetDestination, destination.Update>) {
      const endpoints = map.get(call.request.path);
      if (!endpoints) {
        call.emit("error", { code: status.NOT_FOUND, details: `no service ${call.request.path}` });
        return;
      }
      calls.push(call);
      call.write(
        destination.Update.fromPartial({
          update: { $case: "add", value: { addrs: endpoints.map(weightedAddr), metricLabels: {} } },
        }),
      );
    },
    getProfile(call: ServerWritableStream<destination.GetDestination, destination.DestinationProfile>) {
      call.emit("error", { code: status.UNIMPLEMENTED, details: "no profiles here" });
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, bound) =>
      error ? reject(error) : resolve(bound),
    ),
  );
  const address = `127.0.0.1:${port}`;
  const client = new destination.DestinationClient(address, credentials.createInsecure());
  const discovery = createDiscovery({ destinationClient: client });
  return {
    address,
    services: map,
    discovery,
    async close() {
      await discovery.close();
      client.close();
      for (const call of calls) call.end();
      await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      server.forceShutdown();
    },
  };
}
