import { Server } from "@grpc/grpc-js";
import { createMeshConnectionInjector } from "@inmesh/grpc";
import { createMesh } from "@inmesh/mesh";
import { Authors, authorsHandlers } from "./authors-proto.js"; // from protoc or @grpc/proto-loader

const mesh = createMesh();
const server = new Server();
server.addService(Authors.service, authorsHandlers); // handlers read the caller with meshPeer(call)

// The mesh accepts connections (mTLS, plaintext, sidecars) and hands HTTP/2 to grpc-js, whose calls the
// port's Linkerd policy authorizes before any handler runs.
const injector = createMeshConnectionInjector(server, {
  identity: mesh.identity,
  policy: mesh.policy,
  port: 50051,
});
await mesh.ready();
await mesh.createServer(undefined, { port: 50051, onHttp2Connection: injector.injectConnection }).listen();
