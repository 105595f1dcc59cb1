// Runs inside `unshare -rn` (a private network namespace, loopback only) whose lo also carries pod and
// external addresses, so addresses that are not 127/8 can be meshed as in a cluster. Uses the built
// packages. Prints one JSON line with what each call saw.
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { startControlPlane } from "@inmesh/control-plane";
import { createMesh } from "@inmesh/mesh";

const MANIFESTS = `
apiVersion: v1
kind: Namespace
metadata: { name: bookshop }
---
apiVersion: v1
kind: Pod
metadata: { name: web-0, namespace: bookshop, labels: { app: web, linkerd.io/control-plane-ns: linkerd } }
spec: { serviceAccountName: web, containers: [{ name: app }] }
status: { podIP: 10.1.2.2 }
---
apiVersion: v1
kind: Pod
metadata: { name: books-0, namespace: bookshop, labels: { app: books, linkerd.io/control-plane-ns: linkerd } }
spec: { serviceAccountName: books, containers: [{ name: app, ports: [{ name: http, containerPort: 8080 }] }] }
status: { podIP: 10.1.2.3 }
---
apiVersion: v1
kind: Service
metadata: { name: books, namespace: bookshop }
spec: { selector: { app: books }, ports: [{ port: 80, targetPort: http }] }
---
apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata: { name: partners, namespace: bookshop }
spec: { trafficPolicy: Allow, networks: [{ cidr: 203.0.113.0/24 }] }
`;

async function external(host, port) {
  const server = createServer((req, res) => {
    res.end(JSON.stringify({ from: req.socket.remoteAddress, host: req.headers.host }));
  });
  await new Promise((resolve) => server.listen(port, host, resolve));
  return server;
}

const stateDir = await mkdtemp(path.join(tmpdir(), "inmesh-netns-"));
const controlPlane = await startControlPlane({
  manifests: [{ path: "netns.yaml", text: MANIFESTS }],
  stateDir,
  ports: { identity: 0, destination: 0, policy: 0 },
  watch: false,
});
const meshes = [];
const servers = [];
try {
  const env = async (pod) => (await controlPlane.writeEnv(pod, { namespace: "bookshop" })).variables;
  const books = createMesh({ env: await env("books-0"), admin: false, tracing: false });
  meshes.push(books);
  const booksServer = books.createServer(
    (req, res) => res.end(JSON.stringify({ clientId: req.headers["l5d-client-id"] ?? null })),
    { port: 8080 },
  );
  await booksServer.listen(8080, "10.1.2.3");
  const web = createMesh({ env: await env("web-0"), admin: false, tracing: false });
  meshes.push(web);
  await Promise.all(meshes.map((mesh) => mesh.ready({ signal: AbortSignal.timeout(20_000) })));
  servers.push(await external("203.0.113.50", 8081), await external("198.51.100.7", 8082));

  const json = async (url) => {
    const response = await web.fetch(url);
    return { status: response.status, body: JSON.parse(await response.text()) };
  };
  const result = {
    podIp: await json("http://10.1.2.3:8080/"),
    allowedEgress: await json("http://203.0.113.50:8081/"),
    fallbackEgress: await json("http://198.51.100.7:8082/"),
    egressMetrics: (web.metrics?.render() ?? "")
      .split("\n")
      .filter((line) => line.startsWith("request_total{") && line.includes("203.0.113.50")),
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
} finally {
  for (const server of servers) server.close();
  await Promise.allSettled(meshes.map((mesh) => mesh.close()));
  await controlPlane.close();
  await rm(stateDir, { recursive: true, force: true });
}
