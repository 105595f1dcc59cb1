import { createMeshGrpcChannel, meshClientArguments } from "@inmesh/grpc";
import { createMesh } from "@inmesh/mesh";
import { Authors } from "./authors-proto.js"; // any grpc-js client class (protoc or @grpc/proto-loader)

const mesh = createMesh();
await mesh.ready();

// A channel over Linkerd discovery: balancing, mTLS to each endpoint's identity, the route's retries.
const target = "authors.bookshop.svc.cluster.local:50051";
const channel = createMeshGrpcChannel({ target, identity: mesh.identity, discovery: mesh.discovery! });
// The client's address, credentials and options: every call goes through the channel, whose connections
// are mTLS to each endpoint's identity (grpc-js's own credentials argument is unused behind it).
const authors = new Authors(...meshClientArguments(channel));
authors.getAuthor({ id: 1 }, (error, author) => console.log(error ?? author));
