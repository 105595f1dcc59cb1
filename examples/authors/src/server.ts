// authors: a grpc-js service, meshed by inmesh. The mesh server accepts each connection (mesh TLS,
// plaintext, Linkerd sidecars without ALPN), and hands HTTP/2 connections to the grpc-js server, whose
// credentials check every call against the port's Linkerd policy before a handler runs.
import { fileURLToPath } from "node:url";
import {
  loadPackageDefinition,
  Server,
  type ServerUnaryCall,
  type ServiceDefinition,
  type sendUnaryData,
  status,
} from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import { createMeshConnectionInjector, meshPeer } from "@inmesh/grpc";
import { createMesh } from "@inmesh/mesh";
import { announceReady, listenAddress, onShutdown, podName } from "../../shared/runtime.js";

interface GetAuthorRequest {
  id: number;
}
interface Author {
  id: number;
  name: string;
  replica: string;
  caller: string;
}

const pod = podName("authors");
const authors = new Map<number, string>([
  [1, "Ursula K. Le Guin"],
  [2, "Octavia E. Butler"],
]);

// proto-loader reads the .proto at run time: no code generation step. dist/server.js sits one level
// below the package, next to authors.proto's folder.
const protoPath = fileURLToPath(new URL("../authors.proto", import.meta.url));
const proto = loadPackageDefinition(loadSync(protoPath, { keepCase: false, defaults: true })) as unknown as {
  bookshop: { authors: { v1: { Authors: { service: ServiceDefinition } } } };
};

const mesh = createMesh();
const { host, port } = listenAddress();

const grpcServer = new Server();
grpcServer.addService(proto.bookshop.authors.v1.Authors.service, {
  getAuthor(call: ServerUnaryCall<GetAuthorRequest, Author>, callback: sendUnaryData<Author>) {
    const name = authors.get(call.request.id);
    if (name === undefined) {
      callback({ code: status.NOT_FOUND, details: `no author ${call.request.id}` });
      return;
    }
    // meshPeer(call): the caller the mesh verified over mTLS, e.g. web's service account identity.
    const peer = meshPeer(call);
    callback(null, {
      id: call.request.id,
      name,
      replica: pod,
      caller: peer?.kind === "mesh" ? peer.name : "",
    });
  },
});

const injector = createMeshConnectionInjector(grpcServer, {
  identity: mesh.identity,
  policy: mesh.policy,
  port,
});
const server = mesh.createServer(undefined, { port, onHttp2Connection: injector.injectConnection });

onShutdown(async () => {
  injector.drain(1_000);
  await mesh.close();
  injector.destroy();
});

await mesh.ready({ signal: AbortSignal.timeout(30_000) });
await server.listen(port, host);
announceReady({ service: "authors", pod, host, port, mesh });
