/**
 * Outbound routing end to end through `mesh.fetch` (createMesh from a pod's environment) against the dev
 * control plane run with `--allow-l5d-request-headers`: a route timeout answers 504 as linkerd2-proxy
 * does, redirect and response-header filters apply, a ServiceProfile's dstOverrides split traffic by
 * weight, and `l5d-*` request headers change what happens to one request.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { type ControlPlane, startControlPlane } from "@inmesh/control-plane";
import { createMesh, type Mesh } from "@inmesh/mesh";
import { freeLoopbackPort } from "@inmesh/testing/ports";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const IPS = { web: "127.0.23.2", books: "127.0.23.3", "books-v2": "127.0.23.4" } as const;

function manifests(ports: { books: number; "books-v2": number }) {
  const pod = (app: keyof typeof IPS, port?: number) => `
apiVersion: v1
kind: Pod
metadata:
  name: ${app}-0
  namespace: shop
  labels: { app: ${app}, linkerd.io/control-plane-ns: linkerd }
spec: { serviceAccountName: ${app}, containers: [{ name: app${port ? `, ports: [{ name: http, containerPort: ${port} }]` : ""} }] }
status: { podIP: ${IPS[app]} }
---`;
  const service = (name: string, app: string) => `
apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: shop }
spec: { selector: { app: ${app} }, ports: [{ name: http, port: 80, targetPort: http }] }
---`;
  return [
    {
      path: "routing.yaml",
      text: `
apiVersion: v1
kind: Namespace
metadata: { name: shop }
---
${pod("web")}
${pod("books", ports.books)}
${pod("books-v2", ports["books-v2"])}
${service("books", "books")}
${service("books-v2", "books-v2")}
${service("catalog", "books")}
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: books-slow
  namespace: shop
  annotations: { timeout.linkerd.io/request: 300ms }
spec:
  parentRefs: [{ group: core, kind: Service, name: books, port: 80 }]
  rules:
    - matches: [{ path: { type: PathPrefix, value: /slow } }]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: books-main, namespace: shop }
spec:
  parentRefs: [{ group: core, kind: Service, name: books, port: 80 }]
  rules:
    - matches: [{ path: { type: PathPrefix, value: /v1 } }]
      filters:
        - type: RequestRedirect
          requestRedirect: { path: { type: ReplacePrefixMatch, replacePrefixMatch: /v2 }, statusCode: 301 }
    - matches: [{ path: { type: PathPrefix, value: / } }]
      filters:
        - type: ResponseHeaderModifier
          responseHeaderModifier:
            set: [{ name: x-route, value: books-main }]
            remove: [x-powered-by]
---
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: { name: catalog.shop.svc.cluster.local, namespace: shop }
spec:
  dstOverrides:
    - { authority: books.shop.svc.cluster.local:80, weight: 500m }
    - { authority: books-v2.shop.svc.cluster.local:80, weight: 500m }
`,
    },
  ];
}

describe("outbound routing through mesh.fetch", () => {
  let stateDir: string;
  let controlPlane: ControlPlane;
  const meshes: Mesh[] = [];
  const served: Record<string, number> = { books: 0, "books-v2": 0 };
  const seenHeaders: Record<string, string | string[] | undefined>[] = [];
  let flaky = 0;
  let web: Mesh;

  async function meshFor(pod: string): Promise<Mesh> {
    const { variables } = await controlPlane.writeEnv(pod, { namespace: "shop" });
    const mesh = createMesh({ env: variables, admin: false, tracing: false });
    meshes.push(mesh);
    return mesh;
  }

  beforeAll(async () => {
    stateDir = await mkdtemp(path.join(tmpdir(), "inmesh-routing-"));
    const ports = {
      books: await freeLoopbackPort(IPS.books),
      "books-v2": await freeLoopbackPort(IPS["books-v2"]),
    };
    controlPlane = await startControlPlane({
      manifests: manifests(ports),
      stateDir,
      ports: { identity: 0, destination: 0, policy: 0 },
      cluster: { allowL5dRequestHeaders: true },
      watch: false,
    });
    for (const app of ["books", "books-v2"] as const) {
      const mesh = await meshFor(`${app}-0`);
      const server = mesh.createServer(
        async (req, res) => {
          served[app] = (served[app] ?? 0) + 1;
          seenHeaders.push(req.headers);
          if (req.url?.startsWith("/slow")) await new Promise((resolve) => setTimeout(resolve, 3000));
          if (req.url?.startsWith("/flaky") && flaky++ === 0) {
            res.statusCode = 503;
            res.end("try again");
            return;
          }
          res.setHeader("x-powered-by", "node");
          if (!res.destroyed) res.end(JSON.stringify({ app, path: req.url }));
        },
        { port: ports[app] },
      );
      await server.listen(ports[app], IPS[app]);
    }
    web = await meshFor("web-0");
    await Promise.all(meshes.map((mesh) => mesh.ready({ signal: AbortSignal.timeout(20_000) })));
  });

  afterAll(async () => {
    await Promise.allSettled(meshes.map((mesh) => mesh.close()));
    await controlPlane?.close();
    if (stateDir) await rm(stateDir, { recursive: true, force: true });
  });

  it("a slow route answers 504 with l5d-proxy-error within its timeout", async () => {
    const started = performance.now();
    const response = await web.fetch("http://books.shop.svc.cluster.local/slow/report");
    const elapsed = performance.now() - started;
    expect(response.status).toBe(504);
    expect(response.headers.get("l5d-proxy-error")).toBe(
      "timed out waiting for response headers: request timeout: 300ms",
    );
    expect(await response.text()).toBe("");
    expect(elapsed).toBeLessThan(2500);
  });

  it("redirect and response-header filters apply", async () => {
    const redirected = await web.fetch("http://books.shop.svc.cluster.local/v1/books?x=1", {
      redirect: "manual",
    });
    expect(redirected.status).toBe(301);
    expect(redirected.headers.get("location")).toBe("http://books.shop.svc.cluster.local/v2/books?x=1");
    await redirected.arrayBuffer();
    const plain = await web.fetch("http://books.shop.svc.cluster.local/books");
    expect(plain.status).toBe(200);
    expect(plain.headers.get("x-route")).toBe("books-main");
    expect(plain.headers.get("x-powered-by")).toBeNull();
    expect(await plain.json()).toEqual({ app: "books", path: "/books" });
  });

  it("a ServiceProfile's dstOverrides split traffic by weight", async () => {
    served.books = 0;
    served["books-v2"] = 0;
    const total = 100;
    for (let i = 0; i < total; i += 1) {
      const response = await web.fetch(`http://catalog.shop.svc.cluster.local/item/${i}`);
      expect(response.status).toBe(200);
      await response.arrayBuffer();
    }
    console.log(`dstOverrides 50/50 over ${total}: books ${served.books}, books-v2 ${served["books-v2"]}`);
    expect((served.books ?? 0) + (served["books-v2"] ?? 0)).toBe(total);
    // Binomial(100, 0.5): sd 5; both sides well away from 0 and 100.
    expect(served["books-v2"]).toBeGreaterThanOrEqual(25);
    expect(served["books-v2"]).toBeLessThanOrEqual(75);
  });

  it("l5d-* request headers change behaviour and never reach the server", async () => {
    seenHeaders.length = 0;
    const fast = await web.fetch("http://books.shop.svc.cluster.local/slow/x", {
      headers: { "l5d-timeout": "100ms" },
    });
    expect(fast.status).toBe(504);
    expect(fast.headers.get("l5d-proxy-error")).toBe(
      "timed out waiting for response headers: request timeout: 100ms",
    );
    await fast.arrayBuffer();

    flaky = 0;
    const retried = await web.fetch("http://books.shop.svc.cluster.local/flaky", {
      headers: { "l5d-retry-http": "503", "l5d-retry-limit": "2" },
    });
    expect(retried.status).toBe(200);
    await retried.arrayBuffer();
    expect(flaky).toBe(2);
    for (const headers of seenHeaders)
      expect(
        Object.keys(headers).filter((name) => name.startsWith("l5d-") && name !== "l5d-client-id"),
      ).toEqual([]);
  });
});
