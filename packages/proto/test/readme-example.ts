import { credentials } from "@grpc/grpc-js";
import { decodeMessage, encodeTransportHeader, inbound, ipNetworkToString } from "@inmesh/proto";

// Decoding a policy received as bytes: malformed input becomes a typed MeshError, never a crash.
export function serverNetworks(bytes: Uint8Array): string[] {
  const server = decodeMessage(inbound.Server, bytes, { maxBytes: 1024 * 1024, name: "inbound.Server" });
  return server.authorizations.flatMap((authz) =>
    authz.networks.map((network) => ipNetworkToString(network.net) ?? "?"),
  );
}

// A grpc-js client for the policy controller, generated from inbound.proto.
export function policyClient(address: string) {
  return new inbound.InboundServerPoliciesClient(address, credentials.createInsecure());
}

// The header a meshed client writes after the TLS handshake on port 4143.
export const header = encodeTransportHeader({ port: 8080, name: "", sessionProtocol: "http2" });
