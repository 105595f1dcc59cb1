import type * as grpc from "@grpc/grpc-js";
import type { Discovery } from "@inmesh/destination";
import { createMeshGrpcChannel, meshClientArguments } from "@inmesh/grpc";
import type { IdentityProvider } from "@inmesh/identity";

/** Any generated client constructor works; `makeGenericClientConstructor` stands in for one here. */
export async function callEcho(
  identity: IdentityProvider,
  discovery: Discovery,
  EchoClient: new (
    address: string,
    credentials: grpc.ChannelCredentials,
    options: grpc.ClientOptions,
  ) => grpc.Client & {
    unary(request: Buffer, callback: (error: grpc.ServiceError | null, value?: Buffer) => void): unknown;
  },
): Promise<string> {
  // Discovery + P2C balancing + mTLS per endpoint identity, behind grpc-js's `channelOverride`.
  const channel = createMeshGrpcChannel({
    target: "echo.default.svc.cluster.local:8080",
    identity,
    discovery,
  });
  // Address, credentials and options for the client: calls go through the channel (mTLS per endpoint;
  // grpc-js's credentials argument is unused behind it), with retry and telemetry interceptors.
  const client = new EchoClient(...meshClientArguments(channel));
  try {
    return await new Promise<string>((resolve, reject) =>
      client.unary(Buffer.from("hi"), (error, value) => (error ? reject(error) : resolve(String(value)))),
    );
  } finally {
    client.close();
    channel.close();
  }
}
