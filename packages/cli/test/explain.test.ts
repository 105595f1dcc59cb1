import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { main } from "@inmesh/cli";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { captureIo } from "./helpers.js";

const id = (sa: string, ns = "shop") => `${sa}.${ns}.serviceaccount.identity.linkerd.cluster.local`;

// /admin: bar from the cluster network (route level); the whole Server: identities of the ops namespace.
const MANIFESTS = `apiVersion: v1
kind: Pod
metadata: { name: web-1, namespace: shop, labels: { app: web, linkerd.io/control-plane-ns: linkerd } }
spec:
  serviceAccountName: web
  containers: [{ name: main, image: app, ports: [{ containerPort: 8080 }] }]
status: { podIP: 10.2.0.7 }
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: { name: web-http, namespace: shop }
spec: { podSelector: { matchLabels: { app: web } }, port: 8080 }
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: admin, namespace: shop }
spec:
  parentRefs: [{ group: policy.linkerd.io, kind: Server, name: web-http }]
  rules:
    - matches: [{ path: { type: PathPrefix, value: /admin }, headers: [{ name: x-tenant, value: blue }] }]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata: { name: cluster, namespace: shop }
spec: { networks: [{ cidr: 10.0.0.0/8 }] }
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: { name: bar, namespace: shop }
spec: { identities: ["${id("bar")}"] }
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: { name: ops, namespace: shop }
spec: { identityRefs: [{ kind: Namespace, name: ops }] }
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: { name: admin-from-bar, namespace: shop }
spec:
  targetRef: { group: gateway.networking.k8s.io, kind: HTTPRoute, name: admin }
  requiredAuthenticationRefs:
    - { group: policy.linkerd.io, kind: MeshTLSAuthentication, name: bar }
    - { group: policy.linkerd.io, kind: NetworkAuthentication, name: cluster }
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: { name: web-from-ops, namespace: shop }
spec:
  targetRef: { group: policy.linkerd.io, kind: Server, name: web-http }
  requiredAuthenticationRefs: [{ group: policy.linkerd.io, kind: MeshTLSAuthentication, name: ops }]
`;

describe("inmesh explain", () => {
  let dir: string;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "inmesh-explain-"));
    await writeFile(path.join(dir, "web.yaml"), MANIFESTS);
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function explain(...args: string[]): Promise<{ code: number; out: string; err: string }> {
    const io = captureIo(dir);
    const code = await main(
      ["explain", "web-1", "--manifests", ".", "--namespace", "shop", "--port", "8080", ...args],
      io,
    );
    return { code, out: io.out(), err: io.err() };
  }

  it("prints the decision, the route and every authorization tried with why it did not admit the caller", async () => {
    const plaintext = await explain("--path", "/admin/users", "-H", "x-tenant: red", "-H", "X-Tenant: blue");
    expect(plaintext.code).toBe(0);
    expect(plaintext.out).toBe(
      [
        "pod:      shop/web-1 port 8080 (proxyProtocol detect)",
        "request:  GET /admin/users",
        "decision: denied (unauthorized)",
        "client:   plaintext from 10.0.0.1",
        "server:   server/web-http",
        "route:    HTTPRoute/admin",
        "authorizations tried:",
        "  - authorizationpolicy/admin-from-bar [authentication]: requires mesh TLS; the connection is plaintext",
        "  - authorizationpolicy/web-from-ops [authentication]: requires mesh TLS; the connection is plaintext",
        "  - default:localhost [network]: client address 10.0.0.1 is not in 127.0.0.1/32, ::1/128",
        "answer:   403 (gRPC status 7)",
        "",
      ].join("\n"),
    );

    const wrongIdentity = await explain("--path", "/admin", "-H", "x-tenant: blue", "--identity", id("baz"));
    expect(wrongIdentity.out).toContain(
      `  - authorizationpolicy/admin-from-bar [identity]: client identity ${id("baz")} is not among ${id("bar")}\n`,
    );
    expect(wrongIdentity.out).toContain(
      `  - authorizationpolicy/web-from-ops [identity]: client identity ${id("baz")} is not among *.ops.serviceaccount.identity.linkerd.cluster.local\n`,
    );

    const outside = await explain(
      "--path",
      "/admin",
      "-H",
      "x-tenant: blue",
      "--identity",
      id("bar"),
      "--address",
      "192.168.1.9",
    );
    expect(outside.out).toContain(
      "  - authorizationpolicy/admin-from-bar [network]: client address 192.168.1.9 is not in 10.0.0.0/8\n",
    );

    const admitted = await explain("--path", "/admin", "-H", "x-tenant: blue", "--identity", id("bar"));
    expect(admitted.out).toContain("decision: allowed\n");
    expect(admitted.out).toContain("authz:    authorizationpolicy/admin-from-bar\n");
    expect(admitted.out).toContain("  + authorizationpolicy/admin-from-bar: admits the client\n");
  });

  it("says when no route matches, and explains connection-level decisions", async () => {
    const noRoute = await explain("--path", "/admin", "--identity", id("bar"));
    expect(noRoute.out).toContain("decision: denied (route-not-found)\n");
    expect(noRoute.out).toContain("no route matched the request; routes: HTTPRoute/admin\n");
    expect(noRoute.out).toContain("answer:   404 (gRPC status 5)\n");

    const connection = await explain("--connection", "--identity", id("api", "ops"));
    expect(connection.out).toContain("request:  a connection");
    expect(connection.out).toContain("decision: allowed\n");
    expect(connection.out).toContain("  + authorizationpolicy/web-from-ops: admits the client\n");
  });

  it("refuses bad arguments with a usage error", async () => {
    expect((await explain("--identity", id("bar"), "--tls")).code).toBe(2);
    expect((await explain("--address", "not-an-ip")).code).toBe(2);
    const io = captureIo(dir);
    expect(await main(["explain", "web-1", "--manifests", ".", "--port", "8080", "-n", "nowhere"], io)).toBe(
      1,
    );
    expect(io.err()).toContain("pod nowhere/web-1 is not in the manifests");
  });
});
