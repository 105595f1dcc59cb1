import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { startControlPlane } from "@inmesh/control-plane";
import { expect, it } from "vitest";
import { callBooks, startBooks } from "./readme-example.js";

it("the README example serves and calls through the mesh", async () => {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, "127.0.0.3", resolve));
  const port = (probe.address() as { port: number }).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  const inboundProbe = createServer();
  await new Promise<void>((resolve) => inboundProbe.listen(0, "127.0.0.3", resolve));
  const inboundPort = (inboundProbe.address() as { port: number }).port;
  await new Promise<void>((resolve) => inboundProbe.close(() => resolve()));
  const stateDir = await mkdtemp(path.join(tmpdir(), "inmesh-mesh-readme-"));
  const pod = (name: string, sa: string, ip: string, ports = "") => `
apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: bookshop, labels: { app: ${sa}, linkerd.io/control-plane-ns: linkerd } }
spec: { serviceAccountName: ${sa}, containers: [{ name: app${ports} }] }
status: { podIP: ${ip} }
---`;
  const controlPlane = await startControlPlane({
    manifests: [
      {
        path: "app.yaml",
        text: `${pod("books-0", "books", "127.0.0.3", `, ports: [{ name: http, containerPort: ${port} }]`)}
${pod("web-0", "web", "127.0.0.2")}
apiVersion: v1
kind: Service
metadata: { name: books, namespace: bookshop }
spec: { selector: { app: books }, ports: [{ port: 80, targetPort: http }] }
`,
      },
    ],
    // Pods' transport-header ports (Linkerd's default transport mode): a free one on each pod address.
    cluster: { proxyInboundPort: inboundPort },
    stateDir,
    ports: { identity: 0, destination: 0, policy: 0 },
    watch: false,
  });
  try {
    const books = await startBooks(
      { ...(await controlPlane.writeEnv("books-0", { namespace: "bookshop" })).variables },
      port,
      "127.0.0.3",
    );
    try {
      const answer = await callBooks({
        ...(await controlPlane.writeEnv("web-0", { namespace: "bookshop" })).variables,
      });
      expect(answer).toBe("200 hello web.bookshop.serviceaccount.identity.linkerd.cluster.local\n");
    } finally {
      await books.close();
    }
  } finally {
    await controlPlane.close();
    await rm(stateDir, { recursive: true, force: true });
  }
});
