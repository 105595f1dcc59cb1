#!/usr/bin/env node
// Legitimate load from its own process (built dist), so the attacker in the test process and this load
// do not share an event loop: a mesh client with the client pod's identity measures its baseline
// (sequential requests), prints a ready line, then runs an open loop and prints a summary.
//   LOAD_CLIENT_ENV  JSON of the client pod's LINKERD2_PROXY_* variables
//   LOAD_KIND        "http" (GET LOAD_URL through mesh.fetch) or "grpc" (GetAuthor on LOAD_TARGET)
//   LOAD_RPS, LOAD_DURATION_MS (0: until a second line on stdin)
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createMesh } from "../../../packages/mesh/dist/index.js";

const root = fileURLToPath(new URL("../../..", import.meta.url));
const REQUEST_TIMEOUT_MS = 15_000;
const rps = Number(process.env.LOAD_RPS ?? 50);
const durationMs = Number(process.env.LOAD_DURATION_MS ?? 3_000);
const kind = process.env.LOAD_KIND ?? "http";

const mesh = createMesh({
  env: JSON.parse(process.env.LOAD_CLIENT_ENV ?? "{}"),
  // A client only: it serves nothing, and its pod's inbound port may be bound by another test's client.
  transportHeader: false,
  admin: false,
  metrics: false,
  tracing: false,
  // The SDK's own connection policy (one multiplexed HTTP/2 connection to a meshed endpoint), as a
  // client proxy keeps; LOAD_MAX_CONNECTIONS overrides it.
  ...(process.env.LOAD_MAX_CONNECTIONS
    ? { outbound: { maxConnectionsPerEndpoint: Number(process.env.LOAD_MAX_CONNECTIONS) } }
    : {}),
});
await mesh.ready({ signal: AbortSignal.timeout(30_000) });

async function grpcRequester() {
  // The web example depends on grpc-js and proto-loader: resolve them from there.
  const require = createRequire(path.join(root, "examples/web/package.json"));
  const grpc = require("@grpc/grpc-js");
  const protoLoader = require("@grpc/proto-loader");
  const { createMeshClientOptions, createMeshGrpcChannel } = await import(
    "../../../packages/grpc/dist/index.js"
  );
  const proto = grpc.loadPackageDefinition(
    protoLoader.loadSync(path.join(root, "examples/authors/authors.proto"), { defaults: true }),
  );
  const channel = createMeshGrpcChannel({
    target: process.env.LOAD_TARGET,
    identity: mesh.identity,
    discovery: mesh.discovery,
  });
  const client = new proto.bookshop.authors.v1.Authors(
    channel.authority,
    grpc.credentials.createInsecure(),
    createMeshClientOptions(channel),
  );
  return () =>
    new Promise((resolve, reject) => {
      client.getAuthor({ id: 1 }, { deadline: Date.now() + REQUEST_TIMEOUT_MS }, (error, author) => {
        if (error) reject(error);
        else if (!author?.name) reject(new Error("GetAuthor: empty answer"));
        else resolve();
      });
    });
}

function httpRequester() {
  const url = process.env.LOAD_URL;
  return async () => {
    const response = await mesh.fetch(url, { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
    await response.arrayBuffer();
    if (response.status !== 200) {
      // The mesh's own error responses say why (linkerd2-proxy's l5d-proxy-error).
      const why = response.headers.get("l5d-proxy-error");
      throw new Error(`GET ${url} answered ${response.status}${why ? ` (${why})` : ""}`);
    }
  };
}

const request = kind === "grpc" ? await grpcRequester() : httpRequester();

function summarize(latencies, failures) {
  const sorted = [...latencies].sort((a, b) => a - b);
  const at = (fraction) => sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))] ?? null;
  return {
    count: latencies.length + failures.length,
    failureCount: failures.length,
    failures: failures.slice(0, 5),
    p50Ms: at(0.5),
    p99Ms: at(0.99),
    maxMs: sorted.at(-1) ?? null,
  };
}

async function sequential(count) {
  const latencies = [];
  const failures = [];
  for (let index = 0; index < count; index += 1) {
    const startedAt = performance.now();
    try {
      await request();
      latencies.push(performance.now() - startedAt);
    } catch (error) {
      failures.push(String(error?.message ?? error));
    }
  }
  return summarize(latencies, failures);
}

await sequential(5);
const baseline = await sequential(20);
process.stdout.write(`${JSON.stringify({ event: "ready", baseline })}\n`);

// The test says when: a line on stdin starts the open loop; another ends it early (LOAD_DURATION_MS 0:
// only that line ends it).
await new Promise((resolve) => process.stdin.once("data", resolve));
let stopRequested = false;
process.stdin.once("data", () => {
  stopRequested = true;
});
const latencies = [];
const failures = [];
const inFlight = new Set();
const startedAt = performance.now();
const intervalMs = 1000 / rps;
let sent = 0;
while (!stopRequested && (durationMs === 0 || performance.now() - startedAt < durationMs)) {
  const due = Math.floor((performance.now() - startedAt) / intervalMs) + 1;
  for (let burst = 0; sent < due && burst < rps; burst += 1) {
    sent += 1;
    const requestStartedAt = performance.now();
    const call = request().then(
      () => latencies.push(performance.now() - requestStartedAt),
      (error) => failures.push(String(error?.message ?? error).slice(0, 200)),
    );
    inFlight.add(call);
    call.finally(() => inFlight.delete(call));
  }
  await new Promise((resolve) => setTimeout(resolve, Math.max(1, intervalMs)));
}
await Promise.allSettled([...inFlight]);
process.stdout.write(`${JSON.stringify({ event: "done", ...summarize(latencies, failures) })}\n`);
await mesh.close();
process.exit(0);
