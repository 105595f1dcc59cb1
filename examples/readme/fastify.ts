import { fastifyMeshPlugin } from "@inmesh/fastify";
import { createMesh } from "@inmesh/mesh";
import Fastify from "fastify";

const mesh = createMesh();
// The mesh server accepts connections (mTLS, Linkerd policy) and hands Fastify the allowed requests.
const app = Fastify({ serverFactory: mesh.serverFactory({ port: 3000 }) });
await app.register(fastifyMeshPlugin); // request.mesh: the verified caller and the policy decision
app.get("/whoami", async (request) => ({ caller: request.mesh?.clientIdentity }));

await mesh.ready();
await app.listen({ port: 3000, host: "0.0.0.0" });
