import type { Discovery } from "@inmesh/destination";
import { createMeshGrpcChannel } from "@inmesh/grpc";
import type { IdentityProvider } from "@inmesh/identity";

// Where workloads share a host (the dev control plane gives each pod its own 127.0.0.x), connections must
// leave from the pod's address: from 127.0.0.1, Linkerd's implicit localhost rule would admit any call.
// createMesh does this for you: `await mesh.grpcChannel("echo:8080")`.
export function echoChannelFrom(identity: IdentityProvider, discovery: Discovery, podAddress: string) {
  return createMeshGrpcChannel({
    target: "echo.default.svc.cluster.local:8080",
    identity,
    discovery,
    localAddress: podAddress,
  });
}
