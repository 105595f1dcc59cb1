import * as grpc from "@grpc/grpc-js";
import type { Discovery } from "@inmesh/destination";
import { createMeshClientOptions, createMeshGrpcChannel } from "@inmesh/grpc";
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
  // Retries (route conditions, else UNAVAILABLE; 64 KiB replay limit; budget) and telemetry interceptors.
  const client = new EchoClient(
    channel.authority,
    grpc.credentials.createInsecure(),
    createMeshClientOptions(channel),
  );
  try {
    return await new Promise<string>((resolve, reject) =>
      client.unary(Buffer.from("hi"), (error, value) => (error ? reject(error) : resolve(String(value)))),
    );
  } finally {
    client.close();
    channel.close();
  }
}
