/**
 * The inbound side against the dev control plane: policies come from YAML manifests through a real
 * `WatchPort` stream, identities from its CA, and the clients are curl, openssl s_client, a Node http2
 * prior-knowledge client over TLS without ALPN, and grpc-js.
 */
import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import {
  credentials,
  type handleUnaryCall,
  Metadata,
  makeGenericClientConstructor,
  Server,
  type ServiceError,
  status,
} from "@grpc/grpc-js";
import { type ControlPlane, startControlPlane } from "@inmesh/control-plane";
import type { IdentityProvider } from "@inmesh/identity";
import { createPolicyWatcher, type PolicyWatcher } from "@inmesh/policy";
import { inbound } from "@inmesh/proto";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createMeshConnectionInjector, meshPeer } from "../../../grpc/src/index.js";
import { createMeshServer, type MeshServer, meshContext } from "../../src/index.js";
import {
  type ClientCredentials,
  clientCredentials,
  closedWithoutBytes,
  eventually,
  h2Request,
  h2Session,
  identityOf,
  meshTlsSocket,
  NS,
  plainSocket,
  podIdentity,
  podYaml,
  rawHttp1,
  startRelay,
} from "./support.js";

/** grpc-js generic clients expose methods by name: (request, metadata, options, callback). */
type UnaryInvoker = (
  request: unknown,
  metadata: Metadata,
  options: { deadline: number },
  callback: (error: ServiceError | null, reply: never) => void,
) => void;

const run = promisify(execFile);
const FOO = identityOf("foo");
const BAR = identityOf("bar");
const BAZ = identityOf("baz");
const DEFAULTS = [
  "all-unauthenticated",
  "all-authenticated",
  "cluster-unauthenticated",
  "cluster-authenticated",
  "deny",
  "audit",
] as const;

const pods = [
  podYaml({ name: "foo", sa: "foo", ip: "10.1.0.1" }),
  podYaml({
    name: "tcp",
    sa: "foo",
    ip: "10.1.0.4",
    annotations: { "config.linkerd.io/opaque-ports": "8080" },
  }),
  podYaml({
    name: "probed",
    sa: "foo",
    ip: "10.1.0.2",
    annotations: { "config.linkerd.io/default-inbound-policy": "deny" },
    probes: ["/live", "/ready"],
  }),
  podYaml({
    name: "routed",
    sa: "foo",
    ip: "10.1.0.3",
    annotations: { "config.linkerd.io/default-inbound-policy": "all-authenticated" },
  }),
  ...DEFAULTS.map((name, index) =>
    podYaml({
      name: `d-${name}`,
      sa: "foo",
      ip: `10.1.1.${index + 1}`,
      annotations: { "config.linkerd.io/default-inbound-policy": name },
    }),
  ),
].join("---\n");

// Port 8080 on Foo only accepts mTLS from the Bar service account.
const fooOnlyFromBar = `apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: { name: foo-http, namespace: ${NS} }
spec:
  podSelector: { matchLabels: { app: foo } }
  port: 8080
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: { name: bar-only, namespace: ${NS} }
spec:
  identityRefs: [{ kind: ServiceAccount, name: bar }]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: { name: foo-from-bar, namespace: ${NS} }
spec:
  targetRef: { group: policy.linkerd.io, kind: Server, name: foo-http }
  requiredAuthenticationRefs: [{ group: policy.linkerd.io, kind: MeshTLSAuthentication, name: bar-only }]
`;

// Routes on "routed": /public for any mesh identity, /admin only for bar.
const routedPolicy = `apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: { name: routed-http, namespace: ${NS} }
spec:
  podSelector: { matchLabels: { app: routed } }
  port: 8080
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: public, namespace: ${NS} }
spec:
  parentRefs: [{ group: policy.linkerd.io, kind: Server, name: routed-http }]
  rules: [{ matches: [{ path: { type: PathPrefix, value: /public } }] }]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: admin, namespace: ${NS} }
spec:
  parentRefs: [{ group: policy.linkerd.io, kind: Server, name: routed-http }]
  rules: [{ matches: [{ path: { type: PathPrefix, value: /admin } }] }]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: { name: any-mesh, namespace: ${NS} }
spec:
  identities: ["*"]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: { name: bar-admin, namespace: ${NS} }
spec:
  identityRefs: [{ kind: ServiceAccount, name: bar }]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: { name: public-mesh, namespace: ${NS} }
spec:
  targetRef: { group: gateway.networking.k8s.io, kind: HTTPRoute, name: public }
  requiredAuthenticationRefs: [{ group: policy.linkerd.io, kind: MeshTLSAuthentication, name: any-mesh }]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: { name: admin-bar, namespace: ${NS} }
spec:
  targetRef: { group: gateway.networking.k8s.io, kind: HTTPRoute, name: admin }
  requiredAuthenticationRefs: [{ group: policy.linkerd.io, kind: MeshTLSAuthentication, name: bar-admin }]
`;

function echo(req: IncomingMessage, res: ServerResponse): void {
  const context = meshContext(req);
  res.setHeader("content-type", "application/json");
  res.end(
    JSON.stringify({
      clientId: req.headers["l5d-client-id"] ?? null,
      peer: context?.peer.kind,
      route: context?.route.name,
      authz: context?.authz.name,
    }),
  );
}

interface CurlResult {
  readonly status: number;
  readonly headers: string;
  readonly body: string;
}

describe("inbound with the dev control plane and real clients", () => {
  let dir: string;
  let cp: ControlPlane;
  let identity: IdentityProvider;
  let bar: ClientCredentials;
  let baz: ClientCredentials;
  let policyClient: inbound.InboundServerPoliciesClient;
  const files: Record<string, string> = {};
  const cleanups: (() => Promise<void> | void)[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "inmesh-inbound-"));
    await writeFile(path.join(dir, "pods.yaml"), pods);
    await writeFile(path.join(dir, "foo-policy.yaml"), fooOnlyFromBar);
    cp = await startControlPlane({
      manifestsDir: path.join(dir),
      ports: { identity: 0, destination: 0, policy: 0 },
      cluster: { clusterNetworks: ["10.0.0.0/8", "127.0.0.0/8"] },
      watchDebounceMs: 50,
    });
    identity = await podIdentity(cp, "foo", "foo");
    bar = await clientCredentials(cp, "bar");
    baz = await clientCredentials(cp, "baz");
    for (const [name, credentialsOf] of [
      ["bar", bar],
      ["baz", baz],
    ] as const) {
      files[`${name}.key`] = path.join(dir, "..", `${path.basename(dir)}-${name}.key`);
      files[`${name}.crt`] = path.join(dir, "..", `${path.basename(dir)}-${name}.crt`);
      await writeFile(files[`${name}.key`] as string, credentialsOf.key, { mode: 0o600 });
      await writeFile(files[`${name}.crt`] as string, credentialsOf.cert);
    }
    files.ca = path.join(dir, "..", `${path.basename(dir)}-ca.pem`);
    await writeFile(files.ca, cp.trustAnchorsPem);
    policyClient = new inbound.InboundServerPoliciesClient(cp.addresses.policy, credentials.createInsecure());
  });
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });
  afterAll(async () => {
    policyClient?.close();
    await identity?.close();
    await cp?.close();
    await Promise.all(
      [dir, ...Object.values(files)].map((file) => rm(file, { recursive: true, force: true })),
    );
  });

  async function watch(pod: string): Promise<PolicyWatcher> {
    const watcher = createPolicyWatcher({
      client: policyClient,
      workload: JSON.stringify({ ns: NS, pod }),
      ports: [8080],
    });
    cleanups.push(() => watcher.close());
    await watcher.ready({ signal: AbortSignal.timeout(5000) });
    return watcher;
  }

  async function serve(pod: string): Promise<{ port: number; watcher: PolicyWatcher; server: MeshServer }> {
    const watcher = await watch(pod);
    const server = createMeshServer({ identity, policy: watcher, port: 8080, handler: echo });
    cleanups.push(() => server.close());
    const { port } = await server.listen(0, "127.0.0.1");
    return { port, watcher, server };
  }

  /** curl with a mesh client certificate, from 127.0.0.2, to https://<foo identity>:<port>. */
  async function curl(
    port: number,
    client: "bar" | "baz",
    urlPath: string,
    extra: string[] = [],
  ): Promise<CurlResult> {
    const { stdout } = await run(
      "curl",
      [
        "-sS",
        "--max-time",
        "5",
        "--interface",
        "127.0.0.2",
        "--cacert",
        files.ca as string,
        "--cert",
        files[`${client}.crt`] as string,
        "--key",
        files[`${client}.key`] as string,
        "--resolve",
        `${FOO}:${port}:127.0.0.1`,
        "-D",
        "-",
        "-w",
        "\n%{http_code}",
        ...extra,
        `https://${FOO}:${port}${urlPath}`,
      ],
      { timeout: 10_000 },
    );
    const statusSplit = stdout.lastIndexOf("\n");
    const head = stdout.slice(0, statusSplit);
    const split = head.indexOf("\r\n\r\n");
    return {
      status: Number(stdout.slice(statusSplit + 1)),
      headers: head.slice(0, split),
      body: head.slice(split + 4),
    };
  }

  const plainGet = async (port: number, urlPath: string, method = "GET") =>
    (
      await rawHttp1(
        plainSocket({ port }),
        `${method} ${urlPath} HTTP/1.1\r\nHost: foo\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`,
      )
    ).status;

  it("enforces each default inbound policy", async () => {
    const expected: Record<(typeof DEFAULTS)[number], { plaintext: number; mesh: number }> = {
      "all-unauthenticated": { plaintext: 200, mesh: 200 },
      "all-authenticated": { plaintext: 403, mesh: 200 },
      "cluster-unauthenticated": { plaintext: 200, mesh: 200 },
      "cluster-authenticated": { plaintext: 403, mesh: 200 },
      deny: { plaintext: 403, mesh: 403 },
      audit: { plaintext: 200, mesh: 200 },
    };
    for (const name of DEFAULTS) {
      const { port } = await serve(`d-${name}`);
      const seen = { plaintext: await plainGet(port, "/"), mesh: (await curl(port, "bar", "/")).status };
      expect({ name, ...seen }).toEqual({ name, ...expected[name] });
      for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
    }
  });

  it("port 8080 on Foo only receives mTLS traffic from the Bar service account (curl, openssl, http2, grpc-js)", async () => {
    const { port, watcher } = await serve("foo");

    const allowed = await curl(port, "bar", "/hello", [
      "-H",
      "l5d-client-id: evil",
      "-H",
      "L5D-Client-Id: evil2",
    ]);
    expect(allowed.status).toBe(200);
    expect(JSON.parse(allowed.body)).toMatchObject({ clientId: BAR, peer: "mesh", authz: "foo-from-bar" });
    const denied = await curl(port, "baz", "/hello");
    expect(denied.status).toBe(403);
    expect(denied.headers.toLowerCase()).toContain("l5d-proxy-error");
    expect(await plainGet(port, "/hello")).toBe(403);

    // openssl connects from 127.0.0.1 (Linkerd's localhost authorization applies): it shows the identity.
    const openssl = await new Promise<string>((resolve, reject) => {
      const child = execFile(
        "openssl",
        [
          "s_client",
          "-quiet",
          "-tls1_3",
          "-connect",
          `127.0.0.1:${port}`,
          "-servername",
          FOO,
          "-CAfile",
          files.ca as string,
          "-cert",
          files["bar.crt"] as string,
          // s_client sends only the leaf unless told about the chain; the issuer is needed to verify it.
          "-cert_chain",
          files["bar.crt"] as string,
          "-key",
          files["bar.key"] as string,
        ],
        { timeout: 10_000 },
        (error, stdout) => (error && stdout === "" ? reject(error) : resolve(stdout)),
      );
      child.stdin?.end("GET /s HTTP/1.1\r\nHost: foo\r\nl5d-client-id: forged\r\nConnection: close\r\n\r\n");
    });
    expect(openssl).toMatch(/^HTTP\/1\.1 200/);
    expect(openssl, openssl).toContain(`"clientId":"${BAR}"`);

    // A sidecar-style client: prior-knowledge HTTP/2 over TLS without ALPN, HTTP/1 upgraded with l5d-orig-proto.
    for (const [client, status] of [
      [bar, 200],
      [baz, 403],
    ] as const) {
      const session = h2Session(
        meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, client),
        `https://${FOO}:${port}`,
      );
      cleanups.push(() => {
        session.close();
      });
      const response = await h2Request(session, {
        ":path": "/h2",
        "l5d-orig-proto": "HTTP/1.1",
        "l5d-client-id": BAR,
      });
      expect(response.status).toBe(status);
      if (status === 200) expect(JSON.parse(response.body).clientId).toBe(BAR);
    }

    // grpc-js behind the same kind of listener, same policy.
    const json = (value: unknown) => Buffer.from(JSON.stringify(value));
    const service = {
      who: {
        path: "/test.Who/Who",
        requestStream: false,
        responseStream: false,
        requestSerialize: json,
        requestDeserialize: (b: Buffer) => JSON.parse(b.toString()),
        responseSerialize: json,
        responseDeserialize: (b: Buffer) => JSON.parse(b.toString()),
      },
    };
    const who: handleUnaryCall<unknown, { peer: string | undefined }> = (call, callback) => {
      const peer = meshPeer(call);
      callback(null, { peer: peer?.kind === "mesh" ? peer.name : peer?.kind });
    };
    const grpcServer = new Server();
    grpcServer.addService(service, { who });
    const injector = createMeshConnectionInjector(grpcServer, { identity, policy: watcher, port: 8080 });
    const grpcMesh = createMeshServer({
      identity,
      policy: watcher,
      port: 8080,
      onHttp2Connection: injector.injectConnection,
    });
    cleanups.push(async () => {
      await grpcMesh.close();
      grpcServer.forceShutdown();
    });
    const relay = await startRelay((await grpcMesh.listen(0, "127.0.0.1")).port);
    cleanups.push(() => relay.close());
    const Client = makeGenericClientConstructor(service, "Who");
    const call = (client: ClientCredentials) => {
      const stub = new Client(
        `127.0.0.1:${relay.port}`,
        credentials.createSsl(Buffer.from(client.ca), Buffer.from(client.key), Buffer.from(client.cert), {
          checkServerIdentity: () => undefined,
        }),
        { "grpc.ssl_target_name_override": FOO },
      );
      cleanups.push(() => stub.close());
      return new Promise<{ reply?: { peer: string }; error?: ServiceError }>((resolve) =>
        (stub as unknown as { who: UnaryInvoker }).who(
          {},
          new Metadata(),
          { deadline: Date.now() + 5000 },
          (error: ServiceError | null, reply: { peer: string }) => resolve(error ? { error } : { reply }),
        ),
      );
    };
    expect((await call(bar)).reply).toEqual({ peer: BAR });
    expect((await call(baz)).error?.code).toBe(status.PERMISSION_DENIED);
  });

  it("lets kubelet-style probes through under deny, and nothing else", async () => {
    const { port } = await serve("probed");
    expect(await plainGet(port, "/live")).toBe(200);
    expect(await plainGet(port, "/ready")).toBe(200);
    expect(await plainGet(port, "/live", "POST")).toBe(403);
    expect(await plainGet(port, "/other")).toBe(403);
    expect((await curl(port, "bar", "/other")).status).toBe(403);
  });

  it("applies a manifest change to the next requests on a live server; the narrower route authorization wins", async () => {
    const { port, watcher } = await serve("routed");
    // Default all-authenticated: any mesh identity reaches /admin.
    expect((await curl(port, "baz", "/admin")).status).toBe(200);

    let updatedAt: number | undefined;
    const unsubscribe = watcher.subscribe((event) => {
      if (event.type === "updated" && event.policy.server.name === "routed-http") updatedAt ??= Date.now();
    });
    cleanups.push(unsubscribe);
    const writtenAt = Date.now();
    await writeFile(path.join(dir, "routed-policy.yaml"), routedPolicy);
    // Bounded poll: the control plane's folder watch decides when the update leaves; once the watcher has
    // it, the very next request must be decided by it.
    await eventually(() => updatedAt !== undefined, 5000, "policy update");
    const firstAfterUpdate = await curl(port, "baz", "/admin");
    expect(firstAfterUpdate.status).toBe(403);
    expect((updatedAt as number) - writtenAt).toBeLessThan(5000);

    const admin = await curl(port, "bar", "/admin/panel");
    expect(admin.status).toBe(200);
    expect(JSON.parse(admin.body)).toMatchObject({ route: "admin", authz: "admin-bar" });
    const publicRoute = await curl(port, "baz", "/public");
    expect(JSON.parse(publicRoute.body)).toMatchObject({
      route: "public",
      authz: "public-mesh",
      clientId: BAZ,
    });
    expect(await plainGet(port, "/public")).toBe(403);
    expect((await curl(port, "bar", "/elsewhere")).status).toBe(404);
  });

  it("holds requests for a policy that never comes, then denies (strict mode, R4)", async () => {
    // No such pod: the controller answers NotFound and the watcher keeps retrying, never loading.
    const watcher = createPolicyWatcher({
      client: policyClient,
      workload: JSON.stringify({ ns: NS, pod: "ghost" }),
      ports: [8080],
    });
    cleanups.push(() => watcher.close());
    const server = createMeshServer({
      identity,
      policy: watcher,
      port: 8080,
      handler: echo,
      initialPolicyWaitMs: 200,
    });
    cleanups.push(() => server.close());
    const { port } = await server.listen(0, "127.0.0.1");
    const started = Date.now();
    expect(await plainGet(port, "/")).toBe(403);
    expect(Date.now() - started).toBeGreaterThanOrEqual(150);
  });

  it("authorizes opaque connections once, and ends them when a policy update revokes them", async () => {
    const watcher = await watch("tcp");
    expect(watcher.policyFor(8080).protocol).toBe("opaque");
    const server = createMeshServer({
      identity,
      policy: watcher,
      port: 8080,
      onConnection: (socket) => socket.pipe(socket),
    });
    cleanups.push(() => server.close());
    const { port } = await server.listen(0, "127.0.0.1");
    const socket = plainSocket({ port });
    cleanups.push(() => {
      socket.destroy();
    });
    const echoed = new Promise<string>((resolve) =>
      socket.once("data", (chunk: Buffer) => resolve(chunk.toString())),
    );
    socket.write("ping");
    expect(await echoed).toBe("ping");
    const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
    await writeFile(
      path.join(dir, "tcp-policy.yaml"),
      `apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: { name: tcp-only-localhost, namespace: ${NS} }
spec:
  podSelector: { matchLabels: { app: tcp } }
  port: 8080
  proxyProtocol: opaque
`,
    );
    await Promise.race([
      closed,
      new Promise((_, reject) => setTimeout(() => reject(new Error("connection not revoked")), 5000).unref()),
    ]);
    expect(await closedWithoutBytes(plainSocket({ port }), "hello")).toBe(true);
  });
});
