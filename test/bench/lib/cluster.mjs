/**
 * The benchmark's world: the dev control plane on loopback (identity, policy, destination), a client
 * identity issued by its CA, and servers started as pinned child processes (optionally under callgrind),
 * plus nginx as the sidecar stand-in.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
// Built, as every package a benchmark loads: ports outside the ephemeral range, see its comment.
import { freeLoopbackPort } from "../../../packages/testing/dist/ports.js";
import { distOf, pin, ROOT, sleep } from "./env.mjs";
import { readLines } from "./line-child.mjs";

export const NS = "default";
export const identityOf = (sa) => `${sa}.${NS}.serviceaccount.identity.linkerd.cluster.local`;
export const SERVER_IDENTITY = identityOf("srv");
export const CLIENT_IDENTITY = identityOf("cli");

const pod = (name, ip, ports, app = name) => `apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: ${NS}, labels: { app: ${app}, linkerd.io/control-plane-ns: linkerd } }
spec:
  serviceAccountName: ${name.replace(/-\d+$/, "")}
  containers: [{ name: main, image: app, ports: [${ports.map((p) => `{ name: http, containerPort: ${p} }`).join(", ")}] }]
status: { podIP: ${ip} }
`;

/** Pods `srv` (mesh servers, S8/S11 apps), `cli` (the load generator) and `target-0` behind Service `target`. */
function manifests(targetPort, appPort) {
  const service = `apiVersion: v1
kind: Service
metadata: { name: target, namespace: ${NS} }
spec: { selector: { app: target }, ports: [{ name: http, port: 80, targetPort: http }] }
`;
  return [
    {
      path: "bench.yaml",
      text: [
        pod("srv", "127.0.0.1", [appPort]),
        pod("cli", "127.0.0.1", [1]),
        pod("target-0", "127.0.0.1", [targetPort], "target"),
        service,
      ].join("---\n"),
    },
  ];
}

export async function startCluster() {
  const appPort = await freeLoopbackPort();
  const { startControlPlane } = await import(distOf("control-plane"));
  const cp = await startControlPlane({
    manifests: manifests(1, appPort),
    ports: { identity: 0, destination: 0, policy: 0 },
    watch: false,
  });
  const client = await cp.certificateAuthority.issueCredentials(CLIENT_IDENTITY);
  const dir = mkdtempSync(path.join(tmpdir(), "inmesh-bench-"));
  const children = new Set();
  let setupCount = 0;
  const clientTls = {
    key: client.privateKeyPem,
    cert: client.certificateChainPem,
    ca: cp.trustAnchorsPem,
    servername: SERVER_IDENTITY,
    minVersion: "TLSv1.3",
  };

  async function setupFor({ pod = "srv", ...extra } = {}) {
    setupCount += 1;
    const file = path.join(dir, `setup-${setupCount}.json`);
    writeFileSync(
      file,
      JSON.stringify({
        serverIdentity: SERVER_IDENTITY,
        clientIdentity: CLIENT_IDENTITY,
        anchors: cp.trustAnchorsPem,
        identityAddress: cp.addresses.identity,
        identityName: cp.serverNames.identity,
        token: await cp.tokenFor(NS, pod),
        ...extra,
      }),
    );
    return file;
  }

  /**
   * Starts `lib/server.mjs <kind>` pinned to `core`; `wrap` prefixes the command (valgrind); `node` is
   * another Node binary to run it with.
   */
  async function startServer(kind, { core, wrap = [], nodeFlags = [], extra, node = process.execPath } = {}) {
    const setup = await setupFor(extra);
    const args = [...wrap, node, ...nodeFlags, path.join(ROOT, "test/bench/lib/server.mjs"), kind, setup];
    const child = spawn(args[0], args.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
    children.add(child);
    child.once("exit", () => children.delete(child));
    if (core !== undefined) pin(child.pid, core);
    let stderr = "";
    child.stderr.on("data", (chunk) => {
      stderr = (stderr + chunk).slice(-4000);
    });
    const port = await new Promise((resolve, reject) => {
      let out = "";
      child.stdout.on("data", (chunk) => {
        out += chunk;
        const match = /LISTENING (\d+)/.exec(out);
        if (match) resolve(Number(match[1]));
      });
      child.once("exit", (code) => reject(new Error(`${kind} server exited (${code}): ${stderr}`)));
    });
    // Threads started after the first pin (V8 workers, libuv pool) follow the core too.
    if (core !== undefined) pin(child.pid, core);
    return { kind, pid: child.pid, pids: [child.pid], port, child, stop: () => stopChild(child) };
  }

  /**
   * Starts `lib/client.mjs <kind>` as pod `cli` against Service `target` (mesh) or its endpoint at
   * `targetPort` (pool); resolves once its first request succeeded. `run(n)` sends n sequential requests.
   */
  async function startClient(kind, { targetPort, core, wrap = [], nodeFlags = [] }) {
    const setup = await setupFor({
      pod: "cli",
      namespace: NS,
      destinationAddress: cp.addresses.destination,
      targetPort,
      targetIdentity: identityOf("target"),
      meshUrl: `http://target.${NS}.svc.cluster.local/`,
    });
    const args = [
      ...wrap,
      process.execPath,
      ...nodeFlags,
      path.join(ROOT, "test/bench/lib/client.mjs"),
      kind,
      setup,
    ];
    const child = spawn(args[0], args.slice(1), { stdio: ["pipe", "pipe", "pipe"] });
    children.add(child);
    child.once("exit", () => children.delete(child));
    if (core !== undefined) pin(child.pid, core);
    const { nextLine, ask, stderr } = readLines(child, `${kind} client`);
    const ready = await nextLine();
    if (ready !== "READY") throw new Error(`${kind} client: ${ready} ${stderr()}`);
    if (core !== undefined) pin(child.pid, core);
    return {
      kind,
      pid: child.pid,
      async run(n) {
        const line = await ask(String(n));
        if (line !== `DONE ${n}`) throw new Error(`${kind} client: ${line} ${stderr()}`);
      },
      /** A closed loop of `concurrency` workers for `seconds`: requests/s and the client's CPU µs/request. */
      async loop(seconds, concurrency) {
        const match = /^LOOP (\d+) ([\d.]+) ([\d.]+)$/.exec(await ask(`loop ${seconds} ${concurrency}`));
        if (!match) throw new Error(`${kind} client: no loop result ${stderr()}`);
        const [count, elapsed, cpuUs] = match.slice(1).map(Number);
        return { rps: count / elapsed, cpuUs: cpuUs / count };
      },
      /** Closing stdin lets it exit on its own (profiles get written); SIGTERM after 5 s. */
      async stop() {
        if (child.exitCode === null && child.signalCode === null) {
          const exited = new Promise((resolve) => child.once("exit", resolve));
          child.stdin.end();
          await Promise.race([exited, sleep(5000)]);
        }
        return stopChild(child);
      },
    };
  }

  /** nginx terminating mesh mTLS (TLS 1.3, client certificate verified against the trust anchors). */
  async function startNginx({ core, upstreamPort }) {
    const server = await cp.certificateAuthority.issueCredentials(SERVER_IDENTITY);
    const prefix = mkdtempSync(path.join(dir, "nginx-"));
    writeFileSync(path.join(prefix, "server.pem"), server.certificateChainPem);
    writeFileSync(path.join(prefix, "server.key"), server.privateKeyPem, { mode: 0o600 });
    writeFileSync(path.join(prefix, "anchors.pem"), cp.trustAnchorsPem);
    const listenPort = await freeLoopbackPort();
    const conf = `worker_processes 1;
pid ${prefix}/nginx.pid;
error_log ${prefix}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${prefix}/body;
  proxy_temp_path ${prefix}/proxy;
  fastcgi_temp_path ${prefix}/fastcgi;
  uwsgi_temp_path ${prefix}/uwsgi;
  scgi_temp_path ${prefix}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  upstream app { server 127.0.0.1:${upstreamPort}; keepalive 128; }
  server {
    listen 127.0.0.1:${listenPort} ssl;
    ssl_protocols TLSv1.3;
    ssl_certificate ${prefix}/server.pem;
    ssl_certificate_key ${prefix}/server.key;
    ssl_client_certificate ${prefix}/anchors.pem;
    ssl_verify_client on;
    ssl_verify_depth 3;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header l5d-client-id $ssl_client_s_dn;
    }
  }
}
`;
    writeFileSync(path.join(prefix, "nginx.conf"), conf);
    const child = spawn("nginx", ["-p", prefix, "-c", path.join(prefix, "nginx.conf"), "-g", "daemon off;"], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    children.add(child);
    child.once("exit", () => children.delete(child));
    let stderr = "";
    child.stderr.on("data", (chunk) => {
      stderr += chunk;
    });
    const { processTree } = await import("./env.mjs");
    for (let i = 0; i < 100 && processTree(child.pid).length < 2; i += 1) await sleep(50);
    if (child.exitCode !== null) throw new Error(`nginx failed: ${stderr}`);
    const pids = processTree(child.pid);
    if (core !== undefined) for (const pid of pids) pin(pid, core);
    return {
      kind: "nginx",
      pid: child.pid,
      pids,
      port: listenPort,
      child,
      stop: () => stopChild(child, "SIGQUIT"),
    };
  }

  /**
   * Starts `lib/app.mjs <kind>` (the S8/S11 service) as pod `srv` from its LINKERD2_PROXY_* environment;
   * resolves with the time from spawn to its first served port.
   */
  async function startApp(kind, { core, nodeFlags = [] } = {}) {
    const env = kind === "mesh" ? (await cp.writeEnv("srv", { tokenDir: dir })).variables : {};
    const started = performance.now();
    const child = spawn(process.execPath, [...nodeFlags, path.join(ROOT, "test/bench/lib/app.mjs"), kind], {
      stdio: ["ignore", "pipe", "pipe"],
      env: {
        ...process.env,
        ...env,
        APP_PORT: String(kind === "mesh" ? appPort : 0),
        LINKERD2_PROXY_ADMIN_LISTEN_ADDR: `127.0.0.1:${await freeLoopbackPort()}`,
      },
    });
    children.add(child);
    child.once("exit", () => children.delete(child));
    if (core !== undefined) pin(child.pid, core);
    let stderr = "";
    child.stderr.on("data", (chunk) => {
      stderr = (stderr + chunk).slice(-4000);
    });
    const { port, cpuMs } = await new Promise((resolve, reject) => {
      let out = "";
      child.stdout.on("data", (chunk) => {
        out += chunk;
        const match = /READY (\d+) (\d+)/.exec(out);
        if (match) resolve({ port: Number(match[1]), cpuMs: Number(match[2]) });
      });
      child.once("exit", (code) => reject(new Error(`${kind} app exited (${code}): ${stderr}`)));
    });
    const startMs = performance.now() - started;
    if (core !== undefined) pin(child.pid, core);
    return { kind, pid: child.pid, pids: [child.pid], port, startMs, cpuMs, stop: () => stopChild(child) };
  }

  return {
    cp,
    appPort,
    startApp,
    clientTls,
    startServer,
    startClient,
    startNginx,
    setTargetPort: (port) => cp.setManifests(manifests(port, appPort)),
    async close() {
      await Promise.all([...children].map((child) => stopChild(child)));
      await cp.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** SIGTERM (or `signal`), then SIGKILL after 5 s; resolves once the child has exited. */
export function stopChild(child, signal = "SIGTERM") {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill(signal);
  });
}
