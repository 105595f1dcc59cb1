import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { freeLoopbackPort, type ManifestObject, startTestMesh, type TestMesh } from "@inmesh/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const BOOKS_IP = "127.0.16.3";

function cluster(port: number, writer: string): ManifestObject[] {
  const pod = (name: string, app: string, ip: string, ports: object[] = []): ManifestObject => ({
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, namespace: "shop", labels: { app, "linkerd.io/control-plane-ns": "linkerd" } },
    spec: { serviceAccountName: app, containers: [{ name: "app", ports }] },
    status: { podIP: ip },
  });
  return [
    pod("books-0", "books", BOOKS_IP, [{ name: "http", containerPort: port }]),
    pod("web-0", "web", "127.0.16.2"),
    pod("stranger-0", "stranger", "127.0.16.4"),
    {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "books", namespace: "shop" },
      spec: { selector: { app: "books" }, ports: [{ port: 80, targetPort: "http" }] },
    },
    {
      apiVersion: "policy.linkerd.io/v1beta3",
      kind: "Server",
      metadata: { name: "books-http", namespace: "shop" },
      spec: { podSelector: { matchLabels: { app: "books" } }, port: "http" },
    },
    {
      apiVersion: "policy.linkerd.io/v1alpha1",
      kind: "MeshTLSAuthentication",
      metadata: { name: "writers", namespace: "shop" },
      spec: { identityRefs: [{ kind: "ServiceAccount", name: writer }] },
    },
    {
      apiVersion: "policy.linkerd.io/v1alpha1",
      kind: "AuthorizationPolicy",
      metadata: { name: "books-writers", namespace: "shop" },
      spec: {
        targetRef: { group: "policy.linkerd.io", kind: "Server", name: "books-http" },
        requiredAuthenticationRefs: [
          { group: "policy.linkerd.io", kind: "MeshTLSAuthentication", name: "writers" },
        ],
      },
    },
  ];
}

const BOOKS_URL = "http://books.shop.svc.cluster.local/books";

describe("@inmesh/testing", () => {
  let mesh: TestMesh;
  let port: number;

  beforeAll(async () => {
    port = await freeLoopbackPort(BOOKS_IP);
    mesh = await startTestMesh({ manifests: cluster(port, "web") });
  });

  afterAll(async () => {
    await mesh?.close();
  });

  it("serves a handler as a pod and calls it as another pod's identity: allowed and denied", async () => {
    const books = await mesh.serve("shop/books-0", (req, res) => {
      res.statusCode = req.method === "POST" ? 201 : 200;
      res.end(req.headers["l5d-client-id"]);
    });
    expect(books.url).toBe(`http://${BOOKS_IP}:${port}`);
    expect(books.identity).toBe("books.shop.serviceaccount.identity.linkerd.cluster.local");

    const allowed = await mesh.fetchAs("shop/web-0", BOOKS_URL, { method: "POST", body: "{}" });
    expect(allowed.status).toBe(201);
    expect(await allowed.text()).toBe("web.shop.serviceaccount.identity.linkerd.cluster.local");

    const denied = await mesh.fetchAs("shop/stranger-0", BOOKS_URL, { method: "POST", body: "{}" });
    expect(denied.status).toBe(403);
    expect(denied.headers.get("l5d-proxy-error")).toMatch(/unauthorized/);
    await denied.arrayBuffer();
  });

  it("applies a manifest change to running workloads", async () => {
    mesh.setManifests(cluster(port, "stranger"));
    await expect
      .poll(async () => {
        const response = await mesh.fetchAs("shop/stranger-0", BOOKS_URL, { method: "POST" });
        await response.arrayBuffer();
        return response.status;
      })
      .toBe(201);
    expect(() => mesh.setManifests([{ apiVersion: "v1", kind: "Pod", metadata: {} }])).toThrow(
      /invalid manifests/,
    );
  });

  it("gives a pod's environment for a child process, and refuses unmeshed pods", async () => {
    const env = await mesh.env("shop/web-0");
    expect(env.LINKERD2_PROXY_IDENTITY_LOCAL_NAME).toBe(
      "web.shop.serviceaccount.identity.linkerd.cluster.local",
    );
    expect(env.MESH_SDK_OUTBOUND_LOCAL_ADDRESS).toBe("127.0.16.2");
    expect(env.LINKERD2_PROXY_IDENTITY_SVC_ADDR).toBe(mesh.controlPlane.addresses.identity);
  });
});

describe("@inmesh/testing side by side", () => {
  // Two test files running at once (vitest workers, node --test) often describe the same pods: each
  // pod binds its transport-header port at its IP, so a fixed 4143 made the second one fail to start.
  it("runs two test meshes with the same pods at once, each pod on a transport-header port of its own", async () => {
    const [first, second] = await Promise.all([
      freeLoopbackPort(BOOKS_IP).then((port) => startTestMesh({ manifests: cluster(port, "web") })),
      freeLoopbackPort(BOOKS_IP).then((port) => startTestMesh({ manifests: cluster(port, "web") })),
    ]);
    try {
      const [a, b] = await Promise.all([first.workload("shop/books-0"), second.workload("shop/books-0")]);
      expect(a.mesh.isReady() && b.mesh.isReady()).toBe(true);
      const inbound = (env: Readonly<Record<string, string>>) => env.LINKERD2_PROXY_INBOUND_LISTEN_ADDR;
      expect(inbound(a.env)).toMatch(new RegExp(`^${BOOKS_IP.replaceAll(".", "\\.")}:\\d+$`));
      expect(inbound(a.env)).not.toBe(inbound(b.env));
      expect(inbound(a.env)).not.toBe(`${BOOKS_IP}:4143`);
      expect(a.mesh.transportHeader?.address()?.port).toBe(Number(inbound(a.env)?.split(":")[1]));
      expect(b.mesh.transportHeader?.address()?.port).toBe(Number(inbound(b.env)?.split(":")[1]));
    } finally {
      await Promise.all([first.close(), second.close()]);
    }
  });

  it("keeps a transport-header port the cluster options give", async () => {
    const inboundPort = await freeLoopbackPort("127.0.16.9");
    const mesh = await startTestMesh({
      manifests: cluster(await freeLoopbackPort(BOOKS_IP), "web"),
      cluster: { proxyInboundPort: inboundPort },
    });
    try {
      expect((await mesh.env("shop/web-0")).LINKERD2_PROXY_INBOUND_LISTEN_ADDR).toBe(
        `127.0.16.2:${inboundPort}`,
      );
    } finally {
      await mesh.close();
    }
  });
});

describe("@inmesh/testing from a folder of YAML", () => {
  it("starts from manifestsDir and closes everything", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "inmesh-testing-folder-"));
    try {
      await writeFile(
        path.join(dir, "pods.yaml"),
        `apiVersion: v1
kind: Pod
metadata: { name: lonely-0, namespace: default }
spec: { containers: [{ name: app }] }
---
apiVersion: v1
kind: Pod
metadata: { name: web-0, namespace: default, labels: { linkerd.io/control-plane-ns: linkerd } }
spec: { serviceAccountName: web, containers: [{ name: app }] }
status: { podIP: 127.0.16.9 }
`,
      );
      const mesh = await startTestMesh({ manifests: dir });
      const web = await mesh.workload("web-0");
      expect(web.mesh.isReady()).toBe(true);
      expect(web.identity).toBe("web.default.serviceaccount.identity.linkerd.cluster.local");
      await expect(mesh.workload("lonely-0")).rejects.toThrow(/not meshed/);
      await mesh.close();
      expect(web.mesh.state().status).toBe("closed");
      await expect(mesh.workload("web-0")).rejects.toMatchObject({ code: "MESH_ERR_CLOSED" });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
