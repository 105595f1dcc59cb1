import { createMesh } from "@inmesh/mesh";

// A books service: configured by LINKERD2_PROXY_* exactly as a sidecar would be.
export async function startBooks(env: Record<string, string>, port: number, host: string) {
  const mesh = createMesh({ env, admin: false });
  const server = mesh.createServer(
    (req, res) => {
      // l5d-client-id is the caller's verified identity; anything the client sent is gone.
      res.end(`hello ${req.headers["l5d-client-id"] ?? "anonymous"}\n`);
    },
    { port },
  );
  await server.listen(port, host);
  await mesh.ready({ signal: AbortSignal.timeout(15_000) }); // identity issued, policy loaded
  return mesh;
}

// A caller: service names resolve through Linkerd's destination API, with mTLS to each endpoint.
export async function callBooks(env: Record<string, string>) {
  await using mesh = createMesh({ env, admin: false });
  await mesh.ready({ signal: AbortSignal.timeout(15_000) });
  const response = await mesh.fetch("http://books.bookshop.svc.cluster.local/");
  return `${response.status} ${await response.text()}`;
}
