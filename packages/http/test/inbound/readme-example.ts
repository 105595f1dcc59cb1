import { createMeshServer, type MeshServer, meshContext } from "@inmesh/http";
import type { IdentityProvider } from "@inmesh/identity";
import type { PolicyWatcher } from "@inmesh/policy";

/** `identity`: createIdentityProvider(); `policy`: createPolicyWatcher({ client, workload, ports: [8080] }). */
export async function startOrders(identity: IdentityProvider, policy: PolicyWatcher): Promise<MeshServer> {
  const server = createMeshServer({
    identity,
    policy,
    port: 8080, // the container port the policy controller knows
    handler(req, res) {
      const mesh = meshContext(req); // also req.mesh; req.meshPeer is the verified caller
      res.end(`hello ${mesh?.clientIdentity ?? "anonymous"} from route ${mesh?.route.name}`);
    },
  });
  await server.listen(0, "127.0.0.1"); // in a pod: server.listen() binds 8080 on every interface
  return server; // on SIGTERM: await server.close() drains in-flight requests
}
