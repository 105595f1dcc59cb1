/**
 * S1b / S1c (performance.md): throughput of the SDK inbound server (`createMeshServer`: mTLS + policy +
 * `l5d-client-id`) against plain `node:https` with the same mTLS context and no policy (S1c's "cost of
 * the SDK's own logic"), and against plain `node:http` (S1b). The servers run in a child process; this
 * process is the load generator (keep-alive HTTP/1.1 over TLS, fixed concurrency). Phases are
 * interleaved (A B C A B C …) and the median ratios are reported.
 *
 *   node --import ./test/bench/policy-ts-loader.mjs test/bench/inbound-throughput.mjs
 *   BENCH_SECONDS=5 BENCH_ROUNDS=7 BENCH_CONCURRENCY=32 (defaults); pin with taskset for stable ratios:
 *   taskset -c 0 node --import … (the child inherits; set BENCH_SERVER_CPU=1 to move it to core 1).
 */
import { execFileSync, fork } from "node:child_process";
import http from "node:http";
import https from "node:https";
import { fileURLToPath } from "node:url";

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 7);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32);
const SERVER_IDENTITY = "srv.default.serviceaccount.identity.linkerd.cluster.local";

if (process.argv[2] === "server") {
  await runServers();
} else {
  await runLoad();
}

async function runServers() {
  const { createIdentityProvider } = await import("@inmesh/identity");
  const { createMeshServer } = await import("@inmesh/http");
  const { compileServerPolicy } = await import("@inmesh/policy");
  const { inbound, ipNetworkFromString } = await import("@inmesh/proto");
  const setup = await new Promise((resolve) => process.once("message", resolve));
  const identity = createIdentityProvider({
    localName: SERVER_IDENTITY,
    trustAnchorsPem: setup.anchors,
    identityServiceAddress: setup.identityAddress,
    identityServiceName: setup.identityName,
    readToken: () => setup.token,
  });
  await identity.ready();
  // A Server that admits the client's identity (one authorization, default route): the common case.
  const policy = compileServerPolicy(
    inbound.Server.fromPartial({
      protocol: { kind: { $case: "detect", value: { timeout: { seconds: 10n, nanos: 0 }, httpRoutes: [] } } },
      authorizations: [
        {
          networks: [{ net: ipNetworkFromString("0.0.0.0/0"), except: [] }],
          authentication: {
            permit: {
              $case: "meshTLS",
              value: {
                clients: {
                  $case: "identities",
                  value: { identities: [{ name: setup.clientIdentity }], suffixes: [] },
                },
              },
            },
          },
          metadata: {
            kind: {
              $case: "resource",
              value: { group: "policy.linkerd.io", kind: "authorizationpolicy", name: "cli" },
            },
          },
        },
      ],
      labels: { group: "policy.linkerd.io", kind: "server", name: "srv" },
    }),
    { port: 8080 },
  );
  const body = Buffer.from("ok");
  const app = (_req, res) => {
    res.setHeader("content-length", body.byteLength);
    res.end(body);
  };
  const mesh = createMeshServer({ identity, policy, port: 8080, handler: app });
  const meshPort = (await mesh.listen(0, "127.0.0.1")).port;
  const tlsServer = https.createServer({ ...identity.tlsServerOptions(), keepAliveTimeout: 60_000 }, app);
  const plainServer = http.createServer({ keepAliveTimeout: 60_000 }, app);
  await Promise.all([tlsServer, plainServer].map((s) => new Promise((r) => s.listen(0, "127.0.0.1", r))));
  process.send({ meshPort, tlsPort: tlsServer.address().port, plainPort: plainServer.address().port });
  process.once("message", async () => {
    await mesh.close();
    tlsServer.closeAllConnections();
    plainServer.closeAllConnections();
    tlsServer.close();
    plainServer.close();
    await identity.close();
    process.exit(0);
  });
}

async function runLoad() {
  const { startControlPlane } = await import("@inmesh/control-plane");
  const pod = (name) => `apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: default, labels: { app: ${name}, linkerd.io/control-plane-ns: linkerd } }
spec: { serviceAccountName: ${name}, containers: [{ name: main, image: app, ports: [{ containerPort: 8080 }] }] }
status: { podIP: 10.0.0.${name === "srv" ? 1 : 2} }
`;
  const cp = await startControlPlane({
    manifests: [{ path: "pods.yaml", text: `${pod("srv")}---\n${pod("cli")}` }],
    ports: { identity: 0, destination: 0, policy: 0 },
  });
  const clientIdentity = "cli.default.serviceaccount.identity.linkerd.cluster.local";
  const client = await cp.certificateAuthority.issueCredentials(clientIdentity);
  const self = fileURLToPath(import.meta.url);
  const child = fork(self, ["server"], { execArgv: process.execArgv });
  if (process.env.BENCH_SERVER_CPU !== undefined) {
    execFileSync("taskset", ["-pc", process.env.BENCH_SERVER_CPU, String(child.pid)]);
  }
  child.send({
    anchors: cp.trustAnchorsPem,
    identityAddress: cp.addresses.identity,
    identityName: cp.serverNames.identity,
    token: await cp.tokenFor("default", "srv"),
    clientIdentity,
  });
  const ports = await new Promise((resolve) => child.once("message", resolve));
  const tlsOptions = {
    key: client.privateKeyPem,
    cert: client.certificateChainPem,
    ca: cp.trustAnchorsPem,
    servername: SERVER_IDENTITY,
    checkServerIdentity: () => undefined,
    minVersion: "TLSv1.3",
  };
  const targets = {
    mesh: { module: https, port: ports.meshPort, tls: tlsOptions },
    https: { module: https, port: ports.tlsPort, tls: tlsOptions },
    http: { module: http, port: ports.plainPort, tls: {} },
  };
  const results = { mesh: [], https: [], http: [] };
  for (let round = 0; round < ROUNDS; round += 1) {
    for (const name of Object.keys(targets)) {
      results[name].push(await phase(targets[name]));
    }
    process.stdout.write(
      `round ${round + 1}: ${Object.entries(results)
        .map(([name, list]) => `${name} ${Math.round(list.at(-1))}/s`)
        .join(", ")}\n`,
    );
  }
  const median = (list) => [...list].sort((a, b) => a - b)[Math.floor(list.length / 2)];
  const ratios = (a, b) => results[a].map((value, i) => value / results[b][i]);
  process.stdout.write(
    `median req/s: mesh ${Math.round(median(results.mesh))}, https ${Math.round(median(results.https))}, http ${Math.round(median(results.http))}\n` +
      `S1b mesh/http ${median(ratios("mesh", "http")).toFixed(3)} (target >= 0.65); ` +
      `S1c mesh/https ${median(ratios("mesh", "https")).toFixed(3)}\n`,
  );
  child.send("stop");
  await new Promise((resolve) => child.once("exit", resolve));
  await cp.close();
}

/** Requests per second with CONCURRENCY keep-alive connections for SECONDS. */
async function phase(target) {
  const agent = new target.module.Agent({ keepAlive: true, maxSockets: CONCURRENCY, ...target.tls });
  const deadline = performance.now() + SECONDS * 1000;
  let count = 0;
  const worker = async () => {
    while (performance.now() < deadline) {
      await new Promise((resolve, reject) => {
        const req = target.module.request(
          { host: "127.0.0.1", port: target.port, path: "/", agent, ...target.tls },
          (res) => {
            res.resume();
            res.on("end", resolve);
          },
        );
        req.on("error", reject);
        req.end();
      });
      count += 1;
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  const elapsed = (performance.now() - started) / 1000;
  agent.destroy();
  return count / elapsed;
}
