/**
 * S3a / S3b (performance.md): throughput of the SDK outbound dispatcher (`createMeshDispatcher`: discovery,
 * P2C balancing, retry layer, mTLS connector) against a bare undici `Pool` with the same mTLS connect
 * options (S3a), and of `createMeshFetch` against undici `fetch` over the same Pool (S3b). The target is a
 * `node:https` server with mTLS in a child process, reached over keep-alive HTTP/1.1 (the SDK is told not
 * to upgrade to HTTP/2, which a plain https server cannot speak without ALPN). Phases are interleaved
 * (A B C D A B C D …) and median ratios are reported.
 *
 *   node --import ./test/bench/policy-ts-loader.mjs test/bench/outbound-throughput.mjs
 *   BENCH_SECONDS=3 BENCH_ROUNDS=5 BENCH_CONCURRENCY=32 (defaults); pin with taskset for stable ratios;
 *   BENCH_PHASES="sdk request" runs one phase (for --cpu-prof); BENCH_DEBUG=1 counts TLS handshakes per phase.
 */
import { fork } from "node:child_process";
import https from "node:https";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32);
const NS = "default";
const identityOf = (sa) => `${sa}.${NS}.serviceaccount.identity.linkerd.cluster.local`;

if (process.argv[2] === "server") {
  const setup = await new Promise((resolve) => process.once("message", resolve));
  const server = https.createServer(
    {
      key: setup.key,
      cert: setup.cert,
      ca: setup.ca,
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: "TLSv1.3",
    },
    (req, res) => {
      req.resume();
      req.on("end", () => res.end("ok"));
    },
  );
  server.keepAliveTimeout = 60_000;
  let connections = 0;
  server.on("secureConnection", () => {
    connections += 1;
  });
  process.on("message", (message) => {
    if (message === "connections") process.send?.({ connections });
  });
  server.listen(0, "127.0.0.1", () => process.send?.({ port: server.address().port }));
  process.on("disconnect", () => process.exit(0));
} else {
  await runLoad();
}

async function runLoad() {
  const http = createRequire(new URL("../../packages/http/package.json", import.meta.url));
  const { Pool, request, fetch: undiciFetch } = http("undici");
  const { credentials } = createRequire(new URL("../../packages/proto/package.json", import.meta.url))(
    "@grpc/grpc-js",
  );
  const { startControlPlane } = await import("@inmesh/control-plane");
  const { createIdentityProvider } = await import("@inmesh/identity");
  const { createDiscovery, createContextToken } = await import("@inmesh/destination");
  const { destination } = await import("@inmesh/proto");
  const { createMeshDispatcher, createMeshFetch } = await import("@inmesh/http");

  const pod = (name, sa, app, port) => `apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: ${NS}, labels: { app: ${app}, linkerd.io/control-plane-ns: linkerd } }
spec:
  serviceAccountName: ${sa}
  containers: [{ name: main, image: app, ports: [{ name: http, containerPort: ${port} }] }]
status: { podIP: 127.0.0.1 }
`;
  const service = `apiVersion: v1
kind: Service
metadata: { name: target, namespace: ${NS} }
spec: { selector: { app: target }, ports: [{ name: http, port: 80, targetPort: http }] }
`;
  const manifests = (port) => [
    {
      path: "c.yaml",
      text: [pod("client-0", "client", "client", 1), pod("target-0", "target", "target", port), service].join(
        "---\n",
      ),
    },
  ];
  const cp = await startControlPlane({
    manifests: manifests(1),
    ports: { identity: 0, destination: 0, policy: 0 },
    watch: false,
  });
  const serverCreds = await cp.certificateAuthority.issueCredentials(identityOf("target"));
  const child = fork(fileURLToPath(import.meta.url), ["server"], { execArgv: process.execArgv });
  const ready = new Promise((resolve) => child.once("message", resolve));
  child.send({
    key: serverCreds.privateKeyPem,
    cert: serverCreds.certificateChainPem,
    ca: cp.trustAnchorsPem,
  });
  const { port } = await ready;
  cp.setManifests(manifests(port));

  const identity = createIdentityProvider({
    localName: identityOf("client"),
    trustAnchorsPem: cp.trustAnchorsPem,
    identityServiceAddress: cp.addresses.identity,
    identityServiceName: cp.serverNames.identity,
    readToken: () => cp.tokenFor(NS, "client-0"),
  });
  await identity.ready();
  const discovery = createDiscovery({
    destinationClient: new destination.DestinationClient(
      cp.addresses.destination,
      credentials.createInsecure(),
    ),
    contextToken: createContextToken({ ns: NS, pod: "client-0" }),
  });
  const mesh = createMeshDispatcher({ identity, discovery, http2PriorKnowledge: false });
  const meshFetch = createMeshFetch(mesh);
  const tlsOptions = identity.tlsClientOptions(identityOf("target"));
  const pool = new Pool(`https://127.0.0.1:${port}`, {
    connect: { ...tlsOptions, ALPNProtocols: undefined },
  });

  const MESH_URL = "http://target.default.svc.cluster.local/x";
  const POOL_URL = `https://127.0.0.1:${port}/x`;
  const phases = {
    "sdk request": async () => (await request(MESH_URL, { dispatcher: mesh })).body.text(),
    "pool request": async () => (await request(POOL_URL, { dispatcher: pool })).body.text(),
    "sdk fetch": async () => (await meshFetch(MESH_URL)).text(),
    "pool fetch": async () => (await undiciFetch(POOL_URL, { dispatcher: pool })).text(),
  };
  const run = async (fn, seconds) => {
    const end = performance.now() + seconds * 1000;
    let count = 0;
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (performance.now() < end) {
          await fn();
          count += 1;
        }
      }),
    );
    return count / seconds;
  };
  // BENCH_PHASES="sdk request" runs a subset (for profiling with --cpu-prof).
  const only = process.env.BENCH_PHASES?.split(",").map((name) => name.trim());
  if (only) for (const name of Object.keys(phases)) if (!only.includes(name)) delete phases[name];
  for (const fn of Object.values(phases)) await run(fn, 0.5); // warm up connections and JIT
  const results = Object.fromEntries(Object.keys(phases).map((name) => [name, []]));
  const connections = () =>
    new Promise((resolve) => {
      child.once("message", (message) => resolve(message.connections));
      child.send("connections");
    });
  for (let round = 0; round < ROUNDS; round += 1) {
    for (const [name, fn] of Object.entries(phases)) {
      const before = process.env.BENCH_DEBUG ? await connections() : 0;
      results[name].push(await run(fn, SECONDS));
      if (process.env.BENCH_DEBUG)
        console.log(`${name}: ${(await connections()) - before} new TLS connections`);
    }
  }
  const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
  const ratio = (a, b) => median(results[a].map((value, i) => value / results[b][i]));
  for (const [name, values] of Object.entries(results))
    console.log(`${name.padEnd(13)} ${median(values).toFixed(0)} req/s`);
  if (!only) {
    console.log(
      `S3a sdk/pool request throughput: ${ratio("sdk request", "pool request").toFixed(3)} (target ≥ 0.85)`,
    );
    console.log(
      `S3b sdk request / sdk fetch: ${ratio("sdk request", "sdk fetch").toFixed(2)}×; sdk fetch / pool fetch: ${ratio("sdk fetch", "pool fetch").toFixed(3)}`,
    );
  }
  await mesh.close();
  await pool.close();
  await discovery.close();
  await identity.close();
  child.disconnect();
  await cp.close();
}
