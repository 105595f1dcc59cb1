// books.policy.test.ts: "web may POST to books, stranger may not", run with `node --test` (any runner works).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { freeLoopbackPort, startTestMesh, type TestMesh } from "@inmesh/testing";

let mesh: TestMesh;

before(async () => {
  const port = await freeLoopbackPort("127.0.0.3");
  const pod = (name: string, app: string, ip: string, ports: object[] = []) => ({
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, namespace: "shop", labels: { app, "linkerd.io/control-plane-ns": "linkerd" } },
    spec: { serviceAccountName: app, containers: [{ name: "app", ports }] },
    status: { podIP: ip },
  });
  mesh = await startTestMesh({
    manifests: [
      pod("books-0", "books", "127.0.0.3", [{ name: "http", containerPort: port }]),
      pod("web-0", "web", "127.0.0.2"),
      pod("stranger-0", "stranger", "127.0.0.4"),
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
        metadata: { name: "web-only", namespace: "shop" },
        spec: { identityRefs: [{ kind: "ServiceAccount", name: "web" }] },
      },
      {
        apiVersion: "policy.linkerd.io/v1alpha1",
        kind: "AuthorizationPolicy",
        metadata: { name: "books-writers", namespace: "shop" },
        spec: {
          targetRef: { group: "policy.linkerd.io", kind: "Server", name: "books-http" },
          requiredAuthenticationRefs: [
            { group: "policy.linkerd.io", kind: "MeshTLSAuthentication", name: "web-only" },
          ],
        },
      },
    ],
  });
  // Your handler or app, served as pod shop/books-0 behind mTLS and the port's Linkerd policy.
  await mesh.serve("shop/books-0", (req, res) => {
    res.statusCode = req.method === "POST" ? 201 : 200;
    res.end(req.headers["l5d-client-id"]);
  });
});

after(() => mesh.close());

test("web may POST to books", async () => {
  const url = "http://books.shop.svc.cluster.local/books";
  const response = await mesh.fetchAs("shop/web-0", url, { method: "POST", body: "{}" });
  assert.equal(response.status, 201);
  assert.equal(await response.text(), "web.shop.serviceaccount.identity.linkerd.cluster.local");
});

test("stranger may not", async () => {
  const url = "http://books.shop.svc.cluster.local/books";
  const response = await mesh.fetchAs("shop/stranger-0", url, { method: "POST", body: "{}" });
  assert.equal(response.status, 403);
  await response.arrayBuffer();
});
