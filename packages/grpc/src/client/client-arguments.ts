import type { Interceptor } from "@grpc/grpc-js";
import { type ChannelCredentials, type ClientOptions, credentials } from "@grpc/grpc-js";
import type { MeshGrpcChannel } from "./channel.js";
import { createMeshClientOptions, type MeshClientInterceptorOptions } from "./interceptors.js";

/**
 * The three constructor arguments of a grpc-js client that calls through a mesh channel:
 * `new AuthorsClient(...meshClientArguments(channel))`.
 *
 * grpc-js insists on channel credentials even when `channelOverride` replaces its channel, and never uses
 * them then: each endpoint of the mesh channel has its own mTLS credentials for that endpoint's identity
 * (or plaintext only when discovery says the endpoint is not meshed). The placeholder given here is
 * therefore inert, and never what secures a call.
 */
export function meshClientArguments(
  channel: MeshGrpcChannel,
  options: MeshClientInterceptorOptions & { interceptors?: Interceptor[] } = {},
): [address: string, unusedCredentials: ChannelCredentials, options: ClientOptions] {
  return [channel.authority, credentials.createInsecure(), createMeshClientOptions(channel, options)];
}
