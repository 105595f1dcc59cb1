#!/usr/bin/env node
// The inmesh demo: starts the dev control plane and the three example services (web, books ×2, authors)
// as real processes, each with its own identity and loopback address, then tours what the mesh does and
// stops everything. Run it after `pnpm run build` (scripts/demo.sh does both). Exits 0 and leaves no
// process behind, on failure too.
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { cp, mkdtemp, readFile, rename, rm, writeFile } from "node:fs/promises";
import http2 from "node:http2";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { freeLoopbackPort } from "@inmesh/testing/ports";
import { parseAllDocuments } from "yaml";

const here = path.dirname(fileURLToPath(import.meta.url));
const examples = path.resolve(here, "..");
const NAMESPACE = "bookshop";
const READY_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 8_000;
const POLICY_CHANGE_LIMIT_MS = 10_000;
const CERTIFICATE_LIFETIME_MS = 60 * 60 * 1000;
/** Under the 64 KiB a retry can replay. */
const BODY_BYTES = 60 * 1024;

/** The services the demo runs: pod name in the manifests → what to start. */
const SERVICES = [
  { pod: "authors-0", script: "authors/dist/server.js", env: {} },
  { pod: "books-0", script: "books/dist/server.js", env: {} },
  { pod: "books-flaky-0", script: "books/dist/server.js", env: { BOOKS_FLAKY: "true" } },
  { pod: "web-0", script: "web/dist/server.js", env: {} },
];
/** The tour itself calls books as this pod, from this process. */
const STRANGER = "stranger-0";

const say = (line = "") => process.stdout.write(`${line}\n`);
const step = (title) => say(`\n== ${title}`);

class DemoError extends Error {}

/** A free TCP port on `host`, or a clear error when the host address is not available here. */
async function freePort(host) {
  try {
    return await freeLoopbackPort(host);
  } catch (error) {
    if (error.code === "EADDRNOTAVAIL") {
      throw new DemoError(
        `cannot listen on ${host}: the demo gives each pod its own loopback address (127.0.0.2-127.0.0.6), ` +
          "which Linux provides by default; elsewhere add them first (macOS: sudo ifconfig lo0 alias 127.0.0.2 up, …)",
      );
    }
    throw error;
  }
}

/** Pods from the manifests: name → { ip, port } (port: the first containerPort, if any). */
function podsOf(text) {
  const pods = new Map();
  for (const document of parseAllDocuments(text)) {
    const pod = document.toJS();
    if (pod?.kind !== "Pod") continue;
    const port = pod.spec?.containers?.[0]?.ports?.[0]?.containerPort;
    pods.set(pod.metadata.name, { ip: pod.status?.podIP ?? "127.0.0.1", port });
  }
  return pods;
}

/**
 * Copies the manifests to a temporary folder the tour can edit, giving each pod a free port on its own
 * loopback address so several demos (or a demo and the tests) never collide.
 */
async function prepareManifests(dir) {
  const manifestsDir = path.join(dir, "manifests");
  await cp(path.join(examples, "manifests"), manifestsDir, { recursive: true });
  const podsFile = path.join(manifestsDir, "10-pods.yaml");
  let text = await readFile(podsFile, "utf8");
  const pods = podsOf(text);
  for (const [name, pod] of pods) {
    // The dev control plane runs in Linkerd's default transport-header mode: meshed callers connect to
    // each pod's inbound port (4143 in a cluster) with a transport header; here each pod gets a free one.
    pod.inboundPort = await freePort(pod.ip);
    const podHeader = `  name: ${name}\n  namespace: ${NAMESPACE}\n`;
    if (text.split(podHeader).length !== 2) {
      throw new DemoError(`10-pods.yaml: pod ${name} must start with name and namespace lines, once`);
    }
    text = text.replace(
      podHeader,
      `${podHeader}  annotations: { inmesh.dev/inbound-port: "${pod.inboundPort}" }\n`,
    );
    if (pod.port === undefined) continue;
    const port = await freePort(pod.ip);
    const pattern = new RegExp(`containerPort: ${pod.port}\\b`, "g");
    if ((text.match(pattern) ?? []).length !== 1) {
      throw new DemoError(`10-pods.yaml: ${name}'s containerPort ${pod.port} must appear exactly once`);
    }
    text = text.replace(pattern, `containerPort: ${port}`);
    pod.port = port;
  }
  await writeFile(podsFile, text);
  return { manifestsDir, pods };
}

/** Starts one service with its pod's variables and waits for its ready line (bounded). */
function startService(service, env) {
  const child = spawn(process.execPath, [path.join(examples, service.script)], {
    env,
    stdio: ["pipe", "pipe", "pipe"],
  });
  const record = { ...service, child, pid: child.pid, stderr: "", ready: undefined, exited: false };
  child.on("exit", () => {
    record.exited = true;
  });
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk) => {
    if (record.stderr.length < 20_000) record.stderr += chunk;
  });
  record.readyPromise = new Promise((resolve, reject) => {
    let buffered = "";
    const timer = setTimeout(
      () =>
        reject(new DemoError(`${service.pod} was not ready within ${READY_TIMEOUT_MS} ms\n${record.stderr}`)),
      READY_TIMEOUT_MS,
    );
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (chunk) => {
      buffered += chunk;
      for (let newline = buffered.indexOf("\n"); newline >= 0; newline = buffered.indexOf("\n")) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        let message;
        try {
          message = JSON.parse(line);
        } catch {
          continue;
        }
        if (message?.event === "ready") {
          clearTimeout(timer);
          record.ready = message;
          resolve(message);
        }
      }
      if (buffered.length > 65_536) buffered = "";
    });
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      reject(
        new DemoError(`${service.pod} exited (${signal ?? code}) before it was ready\n${record.stderr}`),
      );
    });
  });
  // Only the ready wait reports early exits; later ones are noticed by stop().
  record.readyPromise.catch(() => {});
  return record;
}

/** SIGTERM, then SIGKILL after a bound: resolves once the child is gone. */
async function stopService(record) {
  if (record.exited || record.child.exitCode !== null || record.child.signalCode !== null) return;
  const exited = new Promise((resolve) => record.child.once("exit", resolve));
  record.child.kill("SIGTERM");
  const timer = setTimeout(() => record.child.kill("SIGKILL"), STOP_TIMEOUT_MS);
  await exited;
  clearTimeout(timer);
}

/**
 * A gRPC call without the mesh (plaintext HTTP/2, no identity) from `localAddress`: GetAuthor{id: 1},
 * framed by hand. Resolves to the grpc-status the server answered.
 */
function plainGrpcStatus(address, localAddress) {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`http://${address}`, { localAddress });
    const timer = setTimeout(
      () => session.destroy(new DemoError(`gRPC call to ${address} timed out`)),
      5_000,
    );
    session.on("error", reject);
    const call = session.request({
      ":method": "POST",
      ":path": "/bookshop.authors.v1.Authors/GetAuthor",
      "content-type": "application/grpc",
      te: "trailers",
    });
    let status;
    call.on("response", (headers) => {
      status ??= headers["grpc-status"];
    });
    call.on("trailers", (trailers) => {
      status ??= trailers["grpc-status"];
    });
    call.on("error", reject);
    call.on("close", () => {
      clearTimeout(timer);
      session.close();
      resolve(Number(status));
    });
    call.resume();
    // Uncompressed, 2 bytes: field 1 (id), varint 1.
    call.end(Buffer.from([0, 0, 0, 0, 2, 0x08, 0x01]));
  });
}

function short(hash) {
  return typeof hash === "string" ? `${hash.slice(0, 12)}…` : String(hash);
}

async function readJson(response) {
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    return { text };
  }
}

async function main(cleanup) {
  for (const service of SERVICES) {
    if (!existsSync(path.join(examples, service.script))) {
      throw new DemoError(`examples/${service.script} is missing: run \`pnpm run build\` first`);
    }
  }
  let controlPlaneModule;
  let meshModule;
  try {
    controlPlaneModule = await import("@inmesh/control-plane");
    meshModule = await import("@inmesh/mesh");
  } catch (error) {
    throw new DemoError(`the inmesh packages are not built (${error.message}): run \`pnpm run build\` first`);
  }
  const { startControlPlane } = controlPlaneModule;
  const { createMesh } = meshModule;

  const dir = await mkdtemp(path.join(tmpdir(), "inmesh-demo-"));
  cleanup.push(() => rm(dir, { recursive: true, force: true }));
  const { manifestsDir, pods } = await prepareManifests(dir);

  step("Starting the dev control plane and the services");
  const controlPlane = await startControlPlane({
    manifestsDir,
    stateDir: path.join(dir, "state"),
    ports: { identity: 0, destination: 0, policy: 0 },
    certificateLifetimeMs: CERTIFICATE_LIFETIME_MS,
    watchDebounceMs: 50,
  });
  cleanup.push(() => controlPlane.close());
  controlPlane.on("manifest-rejected", ({ message }) =>
    say(`  control plane rejected a manifest: ${message}`),
  );
  const { identity, destination, policy } = controlPlane.addresses;
  say(`  control plane: identity ${identity}, destination ${destination}, policy ${policy}`);

  const records = [];
  cleanup.push(() => Promise.allSettled(records.map(stopService)));
  for (const service of SERVICES) {
    const pod = pods.get(service.pod);
    const { variables } = await controlPlane.writeEnv(service.pod, { namespace: NAMESPACE });
    const env = {
      ...variables,
      ...service.env,
      POD_NAME: service.pod,
      // Each service's /ready, /live and /metrics, on its own address.
      LINKERD2_PROXY_ADMIN_LISTEN_ADDR: `${pod.ip}:${await freePort(pod.ip)}`,
      // Stop when the demo's end of stdin closes, even if the demo itself is killed.
      STOP_WHEN_STDIN_CLOSES: "true",
      ...(process.env.PATH ? { PATH: process.env.PATH } : {}),
      ...(process.env.NODE_DEBUG ? { NODE_DEBUG: process.env.NODE_DEBUG } : {}),
    };
    if (cleanup.stopping) throw new DemoError("interrupted");
    records.push(startService(service, env));
  }
  await Promise.all(records.map((record) => record.readyPromise));
  const byPod = new Map(records.map((record) => [record.pod, record.ready]));
  for (const record of records)
    say(
      `  ${record.pod.padEnd(14)} pid ${record.pid}, serving ${record.ready.address}, transport header on ${pods.get(record.pod).inboundPort}`,
    );

  const strangerEnv = (await controlPlane.writeEnv(STRANGER, { namespace: NAMESPACE })).variables;
  // Its calls leave from the stranger pod's own loopback address (MESH_SDK_OUTBOUND_LOCAL_ADDRESS in
  // its variables): from 127.0.0.1 they would match Linkerd's implicit localhost authorization.
  const stranger = createMesh({ env: strangerEnv, admin: false, tracing: false });
  cleanup.push(() => stranger.close());
  await stranger.ready({ signal: AbortSignal.timeout(READY_TIMEOUT_MS) });

  step("1. Identities issued (Certify with each pod's token; certificates rotate in memory)");
  for (const record of records) {
    say(`  ${record.pod.padEnd(14)} ${record.ready.identity}  expires ${record.ready.expiresAt}`);
  }
  const strangerState = stranger.identity.state();
  say(
    `  ${STRANGER.padEnd(14)} ${strangerState.localName}  expires ${new Date(strangerState.notAfterMs).toISOString()} (the tour's own client)`,
  );

  const web = `http://${byPod.get("web-0").address}`;
  const books = "http://books.bookshop.svc.cluster.local";

  step("2. An allowed call: web → books GET /books and web → authors GetAuthor (gRPC), over mTLS");
  {
    const response = await fetch(`${web}/`);
    const page = await readJson(response);
    if (response.status !== 200)
      throw new DemoError(`GET ${web}/ answered ${response.status}: ${JSON.stringify(page)}`);
    const { books: list, calls } = page;
    say(`  GET ${web}/ → ${response.status}`);
    say(
      `  web → books   GET /books: ${calls.books.status} from ${calls.books.servedBy}, which saw the caller ${calls.books.callerSeenByBooks}`,
    );
    say(
      `  web → authors GetAuthor: OK from ${calls.authors.servedBy}, which saw the caller ${calls.authors.callerSeenByAuthors}`,
    );
    say(
      `  ${list.length} books: ${list.map((book) => `"${book.title}" by ${book.author?.name}`).join(", ")}`,
    );
  }

  step("3. A denied call: stranger → books POST /books (writes are for web only)");
  {
    const read = await stranger.fetch(`${books}/books`);
    await read.arrayBuffer();
    say(`  stranger GET  /books → ${read.status} (reads are open to every meshed workload)`);
    const write = await stranger.fetch(`${books}/books`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ title: "Unauthorized", authorId: 1 }),
    });
    await write.arrayBuffer();
    say(`  stranger POST /books → ${write.status}, l5d-proxy-error: ${write.headers.get("l5d-proxy-error")}`);
    say("  (route books-write admits MeshTLSAuthentication web-only; web's own POSTs pass, see 4.)");
    const source = pods.get(STRANGER).ip;
    const grpcStatus = await plainGrpcStatus(byPod.get("authors-0").address, source);
    const name = grpcStatus === 7 ? "PERMISSION_DENIED" : `status ${grpcStatus}`;
    say(
      `  unmeshed gRPC GetAuthor from ${source} → authors: ${name} (no Server: default policy all-authenticated)`,
    );
    if (write.status !== 403) {
      throw new DemoError(
        `expected 403 for stranger's POST, got ${write.status} (a call from 127.0.0.1 is always allowed: ` +
          `MESH_SDK_OUTBOUND_LOCAL_ADDRESS=${strangerEnv.MESH_SDK_OUTBOUND_LOCAL_ADDRESS} should be the stranger pod's IP)`,
      );
    }
  }

  step("4. A retried POST: web → books POST /books with a 60 KiB JSON body, via the flaky replica");
  {
    say("  (HTTPRoute books-writes on Service books: writes go to books-flaky, 5xx are retried up to twice)");
    const book = { title: "The Word for World Is Forest", authorId: 1, notes: "" };
    book.notes = randomBytes(BODY_BYTES)
      .toString("hex")
      .slice(0, BODY_BYTES - JSON.stringify(book).length);
    const response = await fetch(`${web}/books`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(book),
    });
    const report = await readJson(response);
    for (const attempt of report.attempts ?? []) {
      say(`  try ${attempt.attempt} → ${attempt.endpoint}: ${attempt.status ?? attempt.error}`);
    }
    say(`  sent     ${report.sent?.bytes} bytes, sha256 ${short(report.sent?.sha256)}`);
    say(
      `  received ${report.received?.bytes} bytes, sha256 ${short(report.received?.sha256)} (books saw it on ${report.received?.replica})`,
    );
    say(`  body intact after the retry: ${report.intact ? "yes" : "NO"}`);
    if (response.status !== 200 || !report.intact) {
      throw new DemoError(`the retried POST failed: ${JSON.stringify(report).slice(0, 500)}`);
    }
  }

  step("5. A policy change applied live: let stranger write to books");
  {
    const file = path.join(manifestsDir, "30-books-policy.yaml");
    const before = await readFile(file, "utf8");
    const marker = "    - { kind: ServiceAccount, name: web }\n";
    if (!before.includes(marker))
      throw new DemoError(`30-books-policy.yaml has no line ${JSON.stringify(marker)}`);
    const after = before.replace(marker, `${marker}    - { kind: ServiceAccount, name: stranger }\n`);
    const temporary = path.join(manifestsDir, ".30-books-policy.tmp");
    await writeFile(temporary, after);
    const startedAt = performance.now();
    await rename(temporary, file);
    say(
      "  edited 30-books-policy.yaml: MeshTLSAuthentication web-only now also lists ServiceAccount stranger",
    );
    let status = 0;
    let polls = 0;
    while (performance.now() - startedAt < POLICY_CHANGE_LIMIT_MS) {
      polls += 1;
      const write = await stranger.fetch(`${books}/books`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ title: "Now allowed", authorId: 2 }),
      });
      await write.arrayBuffer();
      status = write.status;
      if (status !== 403) break;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const elapsedMs = Math.round(performance.now() - startedAt);
    if (status === 403)
      throw new DemoError(`stranger was still denied ${POLICY_CHANGE_LIMIT_MS} ms after the edit`);
    say(
      `  stranger POST /books → ${status} after ${elapsedMs} ms (${polls} ${polls === 1 ? "request" : "requests"}; nothing restarted)`,
    );
  }

  step("Stopping");
  const pids = records.map((record) => record.pid);
  await Promise.all(records.map(stopService));
  records.length = 0;
  say(`  stopped ${pids.length} services (pids ${pids.join(" ")}), the control plane and the tour's client`);
}

/** What to undo, last first. Once stopping has begun, tasks added later run as soon as they are added. */
function createCleanup() {
  const tasks = [];
  let stopping;
  const run = async (task) => {
    try {
      await task();
    } catch (error) {
      process.stderr.write(`cleanup: ${error?.message ?? error}\n`);
    }
  };
  return {
    get stopping() {
      return stopping !== undefined;
    },
    push(task) {
      if (stopping === undefined) tasks.push(task);
      else stopping = stopping.then(() => run(task));
    },
    /** Resolves once every task, including late ones, has finished; safe to call from several places. */
    async stop() {
      stopping ??= (async () => {
        while (tasks.length > 0) await run(tasks.pop());
      })();
      let seen;
      do {
        seen = stopping;
        await seen;
      } while (seen !== stopping);
    },
  };
}

const cleanup = createCleanup();
let exitCode = 0;
let interrupted = false;
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, () => {
    interrupted = true;
    process.stderr.write(`\n${signal}: stopping everything\n`);
    cleanup.stop().finally(() => process.exit(130));
  });
}
try {
  await main(cleanup);
  say("\nDone.");
} catch (error) {
  exitCode = 1;
  if (!interrupted) {
    process.stderr.write(`\ndemo failed: ${error instanceof DemoError ? error.message : error?.stack}\n`);
  }
} finally {
  await cleanup.stop();
}
process.exit(interrupted ? 130 : exitCode);
