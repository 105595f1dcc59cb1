import { subscribe, unsubscribe } from "node:diagnostics_channel";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { type ControlPlane, startControlPlane } from "@inmesh/control-plane";
import { MeshChannel } from "@inmesh/core";
import { meshContext } from "@inmesh/http";
import { freeLoopbackPort } from "@inmesh/testing/ports";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createMesh, type Mesh } from "../src/index.js";

function manifests(booksPort: number, writer: string) {
  return [
    {
      path: "app.yaml",
      text: `
apiVersion: v1
kind: Namespace
metadata: { name: bookshop }
---
apiVersion: v1
kind: Pod
metadata: { name: books-0, namespace: bookshop, labels: { app: books, linkerd.io/control-plane-ns: linkerd } }
spec:
  serviceAccountName: books
  containers: [{ name: app, ports: [{ name: http, containerPort: ${booksPort} }] }]
status: { podIP: 127.0.0.3 }
---
apiVersion: v1
kind: Pod
metadata: { name: web-0, namespace: bookshop, labels: { app: web, linkerd.io/control-plane-ns: linkerd } }
spec: { serviceAccountName: web, containers: [{ name: app }] }
status: { podIP: 127.0.0.2 }
---
apiVersion: v1
kind: Pod
metadata: { name: stranger-0, namespace: bookshop, labels: { app: stranger, linkerd.io/control-plane-ns: linkerd } }
spec: { serviceAccountName: stranger, containers: [{ name: app }] }
status: { podIP: 127.0.0.6 }
---
apiVersion: v1
kind: Service
metadata: { name: books, namespace: bookshop }
spec:
  selector: { app: books }
  ports: [{ name: http, port: 80, targetPort: http }]
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: { name: books-http, namespace: bookshop }
spec:
  podSelector: { matchLabels: { app: books } }
  port: http
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: { name: writers, namespace: bookshop }
spec:
  identityRefs: [{ kind: ServiceAccount, name: ${writer} }]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: { name: books-writers, namespace: bookshop }
spec:
  targetRef: { group: policy.linkerd.io, kind: Server, name: books-http }
  requiredAuthenticationRefs: [{ group: policy.linkerd.io, kind: MeshTLSAuthentication, name: writers }]
`,
    },
  ];
}

describe("createMesh against the dev control plane", () => {
  let stateDir: string;
  let controlPlane: ControlPlane;
  let booksPort: number;
  const meshes: Mesh[] = [];

  async function meshFor(pod: string): Promise<Mesh> {
    const { variables } = await controlPlane.writeEnv(pod, { namespace: "bookshop" });
    const mesh = createMesh({ env: variables, admin: false, tracing: false });
    meshes.push(mesh);
    return mesh;
  }

  beforeAll(async () => {
    stateDir = await mkdtemp(path.join(tmpdir(), "inmesh-mesh-"));
    booksPort = await freeLoopbackPort("127.0.0.3");
    controlPlane = await startControlPlane({
      manifests: manifests(booksPort, "web"),
      // Each pod's transport-header port on its own address: a free one, so parallel runs never collide.
      cluster: { proxyInboundPort: await freeLoopbackPort("127.0.0.3") },
      stateDir,
      ports: { identity: 0, destination: 0, policy: 0 },
      watch: false,
    });
  });

  afterAll(async () => {
    await Promise.allSettled(meshes.map((mesh) => mesh.close()));
    await controlPlane?.close();
    await rm(stateDir, { recursive: true, force: true });
  });

  it("issues identities, serves by policy and calls by service name with mTLS", async () => {
    const books = await meshFor("books-0");
    const server = books.createServer(
      (req, res) => {
        const context = meshContext(req);
        res.setHeader("content-type", "application/json");
        res.end(
          JSON.stringify({ clientId: req.headers["l5d-client-id"] ?? null, peer: context?.peer ?? null }),
        );
      },
      { port: booksPort },
    );
    await server.listen(booksPort, "127.0.0.3");
    const statuses: string[] = [];
    const onStatus = (message: unknown) => statuses.push((message as { status: string }).status);
    subscribe(MeshChannel.meshStatusChanged, onStatus);
    await books.ready({ signal: AbortSignal.timeout(15_000) });
    unsubscribe(MeshChannel.meshStatusChanged, onStatus);
    expect(books.isReady()).toBe(true);
    expect(statuses).toContain("ready");
    expect(books.identity.state().localName).toBe(
      "books.bookshop.serviceaccount.identity.linkerd.cluster.local",
    );
    const expiry = /^control_identity_cert_expiration_timestamp_seconds (\d+(?:\.\d+)?)$/m.exec(
      books.metrics?.render() ?? "",
    );
    expect(Number(expiry?.[1]) * 1000).toBeGreaterThan(Date.now());

    const web = await meshFor("web-0");
    await web.ready({ signal: AbortSignal.timeout(15_000) });
    const allowed = await web.fetch("http://books.bookshop.svc.cluster.local/hello", {
      headers: { "l5d-client-id": "spoofed.identity" },
    });
    expect(allowed.status).toBe(200);
    const body = (await allowed.json()) as { clientId: string; peer: { kind: string; name: string } };
    expect(body.clientId).toBe("web.bookshop.serviceaccount.identity.linkerd.cluster.local");
    expect(body.peer).toMatchObject({
      kind: "mesh",
      name: "web.bookshop.serviceaccount.identity.linkerd.cluster.local",
    });

    const stranger = await meshFor("stranger-0");
    await stranger.ready({ signal: AbortSignal.timeout(15_000) });
    const denied = await stranger.fetch("http://books.bookshop.svc.cluster.local/hello");
    expect(denied.status).toBe(403);
    await denied.arrayBuffer();
  });

  it("binds the admin server to a free port when LINKERD2_PROXY_ADMIN_LISTEN_ADDR asks for port 0", async () => {
    // A second process of pod web-0: its own admin server, not the pod's transport-header port.
    const { variables } = await controlPlane.writeEnv("web-0", { namespace: "bookshop" });
    const mesh = createMesh({
      env: { ...variables, LINKERD2_PROXY_ADMIN_LISTEN_ADDR: "127.0.0.1:0" },
      tracing: false,
      transportHeader: false,
    });
    meshes.push(mesh);
    await mesh.ready();
    const admin = mesh.admin();
    expect(admin?.host).toBe("127.0.0.1");
    expect(admin?.port).toBeGreaterThan(0);
    const live = await fetch(`http://127.0.0.1:${admin?.port}/live`);
    expect(live.status).toBe(200);
    expect(await live.text()).toBe("live\n");
  });

  it("refuses to serve a port whose policy is not watched", async () => {
    const books = meshes[0] as Mesh;
    expect(() => books.createServer(() => {}, { port: booksPort + 1 })).toThrow(/not an inbound port/);
  });

  it("applies a policy change to new requests on a live server", async () => {
    const [, web] = meshes as [Mesh, Mesh, Mesh];
    const stranger = meshes[2] as Mesh;
    const result = controlPlane.setManifests(manifests(booksPort, "stranger"));
    expect(result.ok).toBe(true);
    const deadline = Date.now() + 5_000;
    let strangerStatus = 0;
    while (Date.now() < deadline) {
      const response = await stranger.fetch("http://books.bookshop.svc.cluster.local/hello");
      strangerStatus = response.status;
      await response.arrayBuffer();
      if (strangerStatus === 200) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(strangerStatus).toBe(200);
    const webResponse = await web.fetch("http://books.bookshop.svc.cluster.local/hello");
    expect(webResponse.status).toBe(403);
    await webResponse.arrayBuffer();
  });
});
