/**
 * Client identities at the wire, against the dev control plane's policy: a SPIFFE URI identity (an
 * ExternalWorkload, Linkerd 2.15+) admitted by a MeshTLSAuthentication next to DNS identities. Certificates come from the dev control plane's CA; clients connect from 127.0.0.2.
 */
import type { ControlPlane } from "@inmesh/control-plane";
import type { IdentityProvider } from "@inmesh/identity";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createMeshServer, type MeshServer, meshContext } from "../../src/index.js";
import {
  type ClientCredentials,
  clientCredentials,
  identityOf,
  meshTlsSocket,
  NS,
  podIdentity,
  podYaml,
  rawHttp1,
  startTestControlPlane,
  watchPodPolicy,
} from "./support.js";

const FOO = identityOf("foo");
const BAR = identityOf("bar");
const VM = "spiffe://root.linkerd.cluster.local/proxy/vm-1";
const OTHER_VM = "spiffe://root.linkerd.cluster.local/proxy/vm-2";
const QUX = identityOf("qux");

const policy = `apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: { name: foo-http, namespace: ${NS} }
spec:
  podSelector: { matchLabels: { app: foo } }
  port: 8080
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: { name: vm-and-bar, namespace: ${NS} }
spec:
  identities: ["${VM}", "${BAR}", "${QUX}"]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: { name: foo-from-vm-and-bar, namespace: ${NS} }
spec:
  targetRef: { group: policy.linkerd.io, kind: Server, name: foo-http }
  requiredAuthenticationRefs: [{ group: policy.linkerd.io, kind: MeshTLSAuthentication, name: vm-and-bar }]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: HTTPLocalRateLimitPolicy
metadata: { name: foo-limits, namespace: ${NS} }
spec:
  targetRef: { group: policy.linkerd.io, kind: Server, name: foo-http }
  total: { requestsPerSecond: 1000 }
  identity: { requestsPerSecond: 1000 }
  overrides: [{ requestsPerSecond: 1, clientRefs: [{ kind: ServiceAccount, name: qux }] }]
---
# Dangling: names a MeshTLSAuthentication that does not exist. Ignored alone (fail closed).
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: { name: foo-from-ghosts, namespace: ${NS} }
spec:
  targetRef: { group: policy.linkerd.io, kind: Server, name: foo-http }
  requiredAuthenticationRefs: [{ group: policy.linkerd.io, kind: MeshTLSAuthentication, name: ghosts }]
---
# Its parent Server is in another namespace: the whole route is ignored, so the default route stays.
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: elsewhere, namespace: ${NS} }
spec:
  parentRefs: [{ group: policy.linkerd.io, kind: Server, name: foo-http, namespace: other }]
  rules: [{ matches: [{ path: { type: PathPrefix, value: /only-here } }] }]
`;

describe("client identities (SPIFFE URIs, DNS names) against MeshTLSAuthentication", () => {
  let cp: ControlPlane;
  let identity: IdentityProvider;
  let server: MeshServer;
  let port: number;
  let close: () => Promise<void>;
  const clients: Record<string, ClientCredentials> = {};

  beforeAll(async () => {
    cp = await startTestControlPlane([
      { path: "pods.yaml", text: podYaml({ name: "foo", sa: "foo", ip: "10.1.0.1" }) },
      { path: "policy.yaml", text: policy },
    ]);
    identity = await podIdentity(cp, "foo", "foo");
    clients.bar = await clientCredentials(cp, "bar");
    clients.baz = await clientCredentials(cp, "baz");
    clients.qux = await clientCredentials(cp, "qux");
    for (const [name, id] of [
      ["vm", VM],
      ["otherVm", OTHER_VM],
    ] as const) {
      const issued = await cp.certificateAuthority.issueCredentials(id);
      clients[name] = { key: issued.privateKeyPem, cert: issued.certificateChainPem, ca: cp.trustAnchorsPem };
    }
    const watch = watchPodPolicy(cp, "foo");
    close = watch.close;
    await watch.watcher.ready({ signal: AbortSignal.timeout(5000) });
    server = createMeshServer({
      identity,
      policy: watch.watcher,
      port: 8080,
      handler: (req, res) =>
        res.end(
          JSON.stringify({
            clientId: req.headers["l5d-client-id"] ?? null,
            peer: meshContext(req)?.peer,
            authz: meshContext(req)?.authz.name,
          }),
        ),
    });
    port = (await server.listen(0, "127.0.0.1")).port;
  });
  afterAll(async () => {
    await server?.close();
    await close?.();
    await identity?.close();
    await cp?.close();
  });

  const get = (client: string) =>
    rawHttp1(
      meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, clients[client]),
      "GET / HTTP/1.1\r\nHost: foo\r\nConnection: close\r\n\r\n",
    );

  it("accepts a SPIFFE client certificate in the handshake and admits it by its URI identity", async () => {
    const response = await get("vm");
    expect(response.status).toBe(200);
    expect(JSON.parse(response.body)).toEqual({
      clientId: VM,
      peer: { kind: "mesh", name: VM, tls: "established" },
      authz: "foo-from-vm-and-bar",
    });
    // Another SPIFFE ID verifies (same trust anchors) but is not in the MeshTLSAuthentication.
    const other = await get("otherVm");
    expect(other.status).toBe(403);
  });

  it("admits a DNS identity next to a SPIFFE one in the same MeshTLSAuthentication", async () => {
    // (An upper-case DNS SAN is lower-cased by the verifier: the hostile certificate suite covers it
    // over real handshakes, as the dev CA only issues lower-case names.)
    const response = await get("bar");
    expect(response.status).toBe(200);
    expect(JSON.parse(response.body).clientId).toBe(BAR);
    expect((await get("baz")).status).toBe(403);
  });

  it("ignores only the resources whose references do not resolve, and names them in the warnings", async () => {
    expect(cp.state.warnings.map((w) => `${w.kind}/${w.name} ${w.field}: ${w.message}`)).toEqual([
      `AuthorizationPolicy/foo-from-ghosts spec.requiredAuthenticationRefs[0].name: MeshTLSAuthentication "ghosts" does not exist in namespace "${NS}"; this AuthorizationPolicy is ignored`,
      "HTTPRoute/elsewhere spec.parentRefs[0].namespace: a Server parent must be in the route's namespace; this HTTPRoute is ignored",
      'HTTPRoute/elsewhere spec.parentRefs[0].name: Server "foo-http" does not exist in namespace "other"; this HTTPRoute is ignored',
    ]);
    // The rest of the set is served: the valid policy admits bar on any path (the default route, since
    // the ignored HTTPRoute never attached), and nothing extra is admitted.
    const response = await rawHttp1(
      meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, clients.bar),
      "GET /anywhere HTTP/1.1\r\nHost: foo\r\nConnection: close\r\n\r\n",
    );
    expect(response.status).toBe(200);
    expect((await get("baz")).status).toBe(403);
  });

  it("enforces the Server's HTTPLocalRateLimitPolicy from the manifests: an override of 1 rps answers 429", async () => {
    // Three at once from qux (burst 1, one more per second): at least one is refused with Linkerd's error.
    const responses = await Promise.all([get("qux"), get("qux"), get("qux")]);
    const statuses = responses.map((r) => r.status).sort();
    expect(statuses[0]).toBe(200);
    expect(statuses).toContain(429);
    const refused = responses.find((r) => r.status === 429);
    expect(refused?.headers["l5d-proxy-error"]).toEqual(["override rate limit exceeded: 1rps"]);
    // Others are under the (large) per-identity limit.
    expect((await get("bar")).status).toBe(200);
  });
});
