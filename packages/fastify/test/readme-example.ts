import type { Server } from "node:http";
import { fastifyMeshPlugin } from "@inmesh/fastify";
import { createMeshServer, type MeshServer } from "@inmesh/http";
import type { IdentityProvider } from "@inmesh/identity";
import type { PolicyWatcher } from "@inmesh/policy";
import Fastify, { type FastifyInstance } from "fastify";

export async function orders(identity: IdentityProvider, policy: PolicyWatcher): Promise<FastifyInstance> {
  let mesh: MeshServer | undefined;
  const app = Fastify({
    serverFactory: (handler) => {
      mesh = createMeshServer({ identity, policy, port: 8080, handler });
      return mesh.server as unknown as Server; // a net.Server that serves through the mesh
    },
  });
  await app.register(fastifyMeshPlugin);
  app.get("/orders", async (request) => ({ caller: request.meshPeer, route: request.mesh?.route.name }));
  await app.listen({ port: 0, host: "127.0.0.1" }); // in a pod: { port: 8080, host: "0.0.0.0" }
  return app; // app.close() drains in-flight requests
}
