/**
 * S10, control-plane cost: what a meshed client pays, in CPU and memory, for holding the discovery state
 * of a 200-endpoint Service while the controller sends it 10 updates a second.
 *
 * The world is this module's own (the bench cluster's control plane is shared with the other scenarios
 * and has other manifests): a dev control plane on 127.0.0.1 (identity, inbound and outbound policy,
 * destination) with Services `one` (1 pod) and `web` (200 meshed pods), and in front of its destination
 * service a controller double (a grpc-js server with @inmesh/proto's Destination service) that relays
 * its answers and writes the churn. Every endpoint is a real mTLS server (its Service's identity) at its
 * own pod IP (127.0.10.x), so calls succeed and no endpoint sits in a failure backoff.
 *
 * The client is `lib/control-plane-cost-client.mjs`, a `createMesh()` app from the LINKERD2_PROXY_*
 * environment pinned to the server core; it calls `one`, then `web`, so it holds what a meshed client
 * holds for them: Destination.Get, GetProfile and OutboundPolicies watches and a balancer each (6
 * streams), besides its inbound policy watch and identity. Next to it, `lib/control-plane-cost-raw.mjs`
 * is a bare grpc-js client on the same Get stream: the floor every gRPC client pays to receive it.
 *
 * The churn is a readiness flap, as a rolling restart or a failing readiness probe produces: every
 * 100 ms, 3 of web's pods leave (one `remove` of 3 addresses) or come back (one `add` of the same 3,
 * with the metadata and identity the dev control plane gave them). It is the commonest update a big
 * Service sees, and each one takes the whole client path: decode, convert, endpoint set, balancer, pool
 * bookkeeping. The client's balancer is checked to go 200 → 197 → 200 and to apply every update sent.
 *
 * Phases alternate (idle, updates) × pairs, on the same process and the same watches; the clients' CPU
 * is read by themselves (getrusage, µs: /proc's 10 ms ticks are too coarse for 1% of a core). Memory
 * is read after two forced collections, outside the CPU windows: S10' = RSS with both Services' state
 * (after the update phase of each pair) − RSS of the same process ready (identity issued, inbound
 * policy loaded) but before its first call. It includes loading the outbound stack on first use
 * (undici, @inmesh/http, @inmesh/destination) and Service `one`'s state; the detail splits that off.
 *
 *   node test/bench/lib/control-plane-cost.mjs [--quick]
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import http2 from "node:http2";
import { tmpdir } from "node:os";
import path from "node:path";
import tls from "node:tls";
import { fileURLToPath } from "node:url";
import { freeLoopbackPort } from "../../../packages/testing/dist/ports.js";
import { distOf, pin, ROOT, requireFrom, sleep, summary } from "./env.mjs";
import { readLines } from "./line-child.mjs";

const NS = "default";
const ENDPOINTS = 200;
const UPDATES_PER_SECOND = 10;
/** Pods that flap per update: a few, as a rolling restart or a flaky readiness probe takes out. */
const FLAPPING = 3;
const identityOf = (sa) => `${sa}.${NS}.serviceaccount.identity.linkerd.cluster.local`;
const CLIENT_IP = "127.0.8.1";
const ONE_IP = "127.0.9.1";
const webIp = (i) => `127.0.10.${i + 1}`;

const pod = ({ name, sa, app, ip, port }) => `apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: ${NS}, labels: { app: ${app}, linkerd.io/control-plane-ns: linkerd } }
spec:
  serviceAccountName: ${sa}
  containers: [{ name: main, image: app, ports: [{ name: http, containerPort: ${port} }] }]
status: { podIP: ${ip}, conditions: [{ type: Ready, status: "True" }] }
`;
const service = (name) => `apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: ${NS} }
spec: { selector: { app: ${name} }, ports: [{ name: http, port: 80, targetPort: http }] }
`;

/** The client's pod, Service `one` with one pod, Service `web` with ENDPOINTS pods, all ready. */
function manifests(ports) {
  const docs = [
    pod({ name: "cli", sa: "cli", app: "cli", ip: CLIENT_IP, port: ports.client }),
    pod({ name: "one-0", sa: "one", app: "one", ip: ONE_IP, port: ports.one }),
    service("one"),
    service("web"),
  ];
  for (let i = 0; i < ENDPOINTS; i += 1) {
    docs.push(
      pod({
        name: `web-${i}`,
        sa: "web",
        app: "web",
        ip: webIp(i),
        port: ports.web[i],
      }),
    );
  }
  return [{ path: "s10.yaml", text: docs.join("---\n") }];
}

/**
 * One mTLS listener per pod address, as the web identity, speaking HTTP/2 with prior knowledge inside
 * TLS: what a meshed client sends an endpoint whose protocol hint is h2 (no ALPN, as between proxies).
 */
async function startEndpoints(credentials, anchors, addresses) {
  const h2 = http2.createServer((_req, res) => res.end("ok"));
  const sockets = new Set();
  const servers = await Promise.all(
    addresses.map(
      (host) =>
        new Promise((resolve, reject) => {
          const server = tls.createServer(
            {
              key: credentials.privateKeyPem,
              cert: credentials.certificateChainPem,
              ca: anchors,
              requestCert: true,
              rejectUnauthorized: true,
              minVersion: "TLSv1.3",
            },
            (socket) => {
              sockets.add(socket);
              socket.once("close", () => sockets.delete(socket));
              // node:http2 refuses a TLS socket whose ALPN is not h2; mesh h2 is prior knowledge.
              socket.alpnProtocol = "h2";
              h2.emit("connection", socket);
            },
          );
          server.once("error", reject);
          server.listen(0, host, () => resolve(server));
        }),
    ),
  );
  return {
    ports: servers.map((server) => server.address().port),
    async close() {
      for (const socket of sockets) socket.destroy();
      await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
    },
  };
}

/**
 * The controller double the client's LINKERD2_PROXY_DESTINATION_SVC_ADDR points at: a grpc-js server
 * with @inmesh/proto's Destination service that relays every Get and GetProfile to the dev control plane
 * (so the first answers, and every endpoint's metadata and identity, are the dev control plane's, as
 * the destination controller would give them), and on top writes the churn to each open Get of web:
 * `flap()` sends one `remove` of the first FLAPPING addresses it was told, or one `add` of them back.
 * (The dev control plane cannot churn at 10/s itself: it rebuilds its whole model from the manifests,
 * 250–500 ms for 200 pods on this machine.)
 */
async function startDestinationDouble(upstreamAddress, webPath) {
  const { Server, ServerCredentials, credentials } = requireFrom("proto", "@grpc/grpc-js");
  const { destination } = await import(distOf("proto"));
  const upstream = new destination.DestinationClient(upstreamAddress, credentials.createInsecure());
  const webCalls = new Set();
  /** web's addresses and set labels as the dev control plane sent them, in the order it sent them. */
  const told = new Map();
  let metricLabels = {};
  const relay = (method) => (call) => {
    const upstreamCall = upstream[method](call.request);
    const isWeb = method === "get" && call.request.path === webPath;
    if (isWeb) webCalls.add(call);
    upstreamCall.on("data", (message) => {
      if (isWeb && message.update?.$case === "add") {
        metricLabels = message.update.value.metricLabels;
        for (const addr of message.update.value.addrs) told.set(JSON.stringify(addr.addr), addr);
      }
      call.write(message);
    });
    upstreamCall.on("error", (error) => {
      if (!call.cancelled) call.emit("error", error);
    });
    upstreamCall.on("end", () => call.end());
    call.on("cancelled", () => {
      webCalls.delete(call);
      upstreamCall.cancel();
    });
    call.on("close", () => webCalls.delete(call));
  };
  const server = new Server();
  server.addService(destination.DestinationService, { get: relay("get"), getProfile: relay("getProfile") });
  const port = await new Promise((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, bound) =>
      error ? reject(error) : resolve(bound),
    ),
  );
  let out = false;
  return {
    address: `127.0.0.1:${port}`,
    /** Writes the next step of the flap to every open Get of web; returns how many streams got it. */
    flap() {
      const addrs = [...told.values()].slice(0, FLAPPING);
      if (addrs.length < FLAPPING) throw new Error(`S10: the double was told ${told.size} addresses of web`);
      out = !out;
      const update = out
        ? { update: { $case: "remove", value: { addrs: addrs.map((addr) => addr.addr) } } }
        : { update: { $case: "add", value: { addrs, metricLabels } } };
      for (const call of webCalls) call.write(destination.Update.fromPartial(update));
      return webCalls.size;
    },
    close() {
      upstream.close();
      server.forceShutdown();
    },
  };
}

/**
 * Starts `node <args>` pinned to `core`, talking a line protocol on stdin/stdout; resolves once it
 * printed READY. `ask(command)` writes one line and resolves with the next line it prints.
 */
async function startChild(name, args, env, core) {
  const child = spawn(process.execPath, args, {
    stdio: ["pipe", "pipe", "pipe"],
    env: { ...process.env, ...env },
  });
  pin(child.pid, core);
  const { stderr, nextLine, ask } = readLines(child, `S10 ${name}`);
  const ready = await nextLine();
  if (ready !== "READY") throw new Error(`S10 ${name}: ${ready} ${stderr()}`);
  // Threads started after the first pin (V8 workers, libuv pool) follow the core too.
  pin(child.pid, core);
  return {
    stderr,
    ask,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.stdin.end();
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
    },
  };
}

const numbers = (line) => line.split(" ").slice(1).map(Number);

/** The meshed client (lib/control-plane-cost-client.mjs). */
async function startClient(env, core) {
  const args = [
    "--expose-gc",
    // e.g. S10_NODE_FLAGS="--cpu-prof --cpu-prof-dir=/tmp/s10" to see where the client's time goes.
    ...(process.env.S10_NODE_FLAGS?.split(" ").filter(Boolean) ?? []),
    path.join(ROOT, "test/bench/lib/control-plane-cost-client.mjs"),
    `web.${NS}.`,
  ];
  const child = await startChild("client", args, env, core);
  return {
    async call(url) {
      const answer = await child.ask(`call ${url}`);
      if (answer !== "CALLED 200") throw new Error(`S10 client call to ${url}: ${answer} ${child.stderr()}`);
    },
    async sample() {
      const [cpuUs, wallUs, applied, endpoints, streams, fewest, gcUs] = numbers(await child.ask("sample"));
      return { cpuUs, wallUs, applied, endpoints, streams, fewest, gcUs };
    },
    async memory() {
      const [rss, heapUsed, external, arrayBuffers] = numbers(await child.ask("mem"));
      return { rss, heapUsed, external, arrayBuffers };
    },
    stop: child.stop,
  };
}

/** The bare grpc-js client (lib/control-plane-cost-raw.mjs) on the same double. */
async function startRawClient(address, target, core) {
  const args = [path.join(ROOT, "test/bench/lib/control-plane-cost-raw.mjs"), address, target];
  const child = await startChild("raw grpc-js client", args, {}, core);
  return {
    async sample() {
      const [cpuUs, wallUs, messages] = numbers(await child.ask("sample"));
      return { cpuUs, wallUs, messages };
    },
    stop: child.stop,
  };
}

/**
 * Waits until the client's balancer for web has applied `applied` sets and holds `endpoints`; returns
 * the last sample either way (the caller compares), and throws only when `required`.
 */
async function settle(client, { endpoints, applied = 0, required = false }, timeoutMs = 3000) {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const sample = await client.sample();
    if (sample.endpoints === endpoints && sample.applied >= applied) return sample;
    if (performance.now() > deadline) {
      if (!required) return sample;
      throw new Error(
        `S10: the client's balancer holds ${sample.endpoints} endpoints, expected ${endpoints}`,
      );
    }
    await sleep(20);
  }
}

/**
 * S10 and S10'. Takes run.mjs's scenario arguments; `cluster` and `loadCore` are not used: the world is
 * this module's own (see the top), and its controllers run in the calling process, which run.mjs pins
 * to the load core already. The clients are pinned to `serverCore`. Statistics are env.mjs's `summary`.
 */
export async function measureS10({ config, quick, serverCore, log, row }) {
  const pairs = config.pairs;
  const seconds = config.seconds;
  const { startControlPlane } = await import(distOf("control-plane"));
  const clientPort = await freeLoopbackPort(CLIENT_IP);
  const dir = mkdtempSync(path.join(tmpdir(), "inmesh-s10-"));
  const cleanups = [() => rmSync(dir, { recursive: true, force: true })];
  try {
    // Transparent mode: meshed endpoints are reached at their own port with mTLS (transport-header mode
    // would send every connection to each pod's 4143 instead, which these endpoints do not serve).
    const cp = await startControlPlane({
      manifests: [],
      ports: { identity: 0, destination: 0, policy: 0 },
      watch: false,
      cluster: { outboundTransportMode: "transparent" },
    });
    cleanups.unshift(() => cp.close());
    const webCredentials = await cp.certificateAuthority.issueCredentials(identityOf("web"));
    const oneCredentials = await cp.certificateAuthority.issueCredentials(identityOf("one"));
    const web = await startEndpoints(
      webCredentials,
      cp.trustAnchorsPem,
      Array.from({ length: ENDPOINTS }, (_, i) => webIp(i)),
    );
    const one = await startEndpoints(oneCredentials, cp.trustAnchorsPem, [ONE_IP]);
    cleanups.unshift(() => Promise.all([web.close(), one.close()]));
    const applied = cp.setManifests(manifests({ client: clientPort, one: one.ports[0], web: web.ports }));
    if (!applied.ok) throw new Error(`S10 manifests refused: ${JSON.stringify(applied.problems)}`);
    const double = await startDestinationDouble(cp.addresses.destination, `web.${NS}.svc.cluster.local:80`);
    cleanups.unshift(() => double.close());

    const env = (await cp.writeEnv("cli", { tokenDir: dir })).variables;
    const client = await startClient(
      {
        ...env,
        // Free ports for what the pod binds on its address (4191 and 4143 by default).
        LINKERD2_PROXY_ADMIN_LISTEN_ADDR: `${CLIENT_IP}:${await freeLoopbackPort(CLIENT_IP)}`,
        LINKERD2_PROXY_INBOUND_LISTEN_ADDR: `${CLIENT_IP}:${await freeLoopbackPort(CLIENT_IP)}`,
        LINKERD2_PROXY_DESTINATION_SVC_ADDR: double.address,
      },
      serverCore,
    );
    cleanups.unshift(() => client.stop());
    const rawClient = await startRawClient(double.address, `web.${NS}.svc.cluster.local:80`, serverCore);
    cleanups.unshift(() => rawClient.stop());

    const beforeCall = await client.memory();
    await client.call(`http://one.${NS}.svc.cluster.local/`);
    await sleep(200);
    const afterOne = await client.memory();
    await client.call(`http://web.${NS}.svc.cluster.local/`);
    await settle(client, { endpoints: ENDPOINTS, required: true });
    await sleep(200);
    const afterWeb = await client.memory();
    const streams = (await client.sample()).streams;
    log(
      `S10: client ready; ${streams} control-plane streams; RSS ${mb(beforeCall.rss)} before its first call, ${mb(afterOne.rss)} after one, ${mb(afterWeb.rss)} with web's ${ENDPOINTS} endpoints`,
    );

    /**
     * Every 100 ms (on a fixed schedule, so a late tick does not shift the rest) the flap moves one step;
     * an even count of ticks ends with every pod back. Returns the updates sent to the client.
     */
    const updatesPhase = async (phaseSeconds) => {
      const ticks = Math.round(phaseSeconds * UPDATES_PER_SECOND);
      const start = performance.now();
      let sent = 0;
      for (let tick = 0; tick < ticks; tick += 1) {
        const due = start + (tick * 1000) / UPDATES_PER_SECOND;
        const wait = due - performance.now();
        if (wait > 0) await sleep(wait);
        // One message to each open Get of web: the meshed client's and the bare grpc-js client's.
        if (double.flap() !== 2) throw new Error("S10: web's Get streams are not both open");
        sent += 1;
      }
      const end = start + phaseSeconds * 1000;
      if (end > performance.now()) await sleep(end - performance.now());
      return { sent };
    };
    const idlePhase = (phaseSeconds) => sleep(phaseSeconds * 1000);

    // Warm-up (JIT of the update path), not counted; an even count of ticks ends with all pods ready.
    const warmFrom = await client.sample();
    await updatesPhase(quick ? 1 : 2);
    await settle(client, {
      endpoints: ENDPOINTS,
      applied: warmFrom.applied + (quick ? 1 : 2) * UPDATES_PER_SECOND,
    });

    const idle = [];
    const updates = [];
    const rssAfter = [];
    const heapAfter = [];
    let sentTotal = 0;
    let appliedTotal = 0;
    let fewest = 0;
    const gcShare = [];
    const cpuPerUpdateUs = [];
    const rawCpuPerUpdateUs = [];
    let finalEndpoints = 0;
    for (let pair = 0; pair < pairs; pair += 1) {
      const idleFrom = await client.sample();
      await idlePhase(seconds);
      const idleTo = await client.sample();
      if (idleTo.applied !== idleFrom.applied) throw new Error("S10: the idle phase received updates");
      idle.push(cpuPercent(idleFrom, idleTo));

      const from = await client.sample();
      const rawFrom = await rawClient.sample();
      const phase = await updatesPhase(seconds);
      const to = await client.sample();
      const rawTo = await rawClient.sample();
      if (rawTo.messages - rawFrom.messages !== phase.sent)
        throw new Error("S10: the bare grpc-js client missed updates");
      rawCpuPerUpdateUs.push((rawTo.cpuUs - rawFrom.cpuUs) / phase.sent);
      updates.push(cpuPercent(from, to));
      gcShare.push((to.gcUs - from.gcUs) / (to.cpuUs - from.cpuUs));
      cpuPerUpdateUs.push((to.cpuUs - from.cpuUs) / phase.sent);
      // Updates still in flight when the window closed are counted by the settle, not lost.
      const settled = await settle(client, { endpoints: ENDPOINTS, applied: from.applied + phase.sent });
      sentTotal += phase.sent;
      appliedTotal += settled.applied - from.applied;
      // The balancer really went down to 197 and back, not just counted messages.
      fewest = Math.max(fewest, to.fewest);
      finalEndpoints = settled.endpoints;
      const memory = await client.memory();
      rssAfter.push(memory.rss - beforeCall.rss);
      heapAfter.push(memory.heapUsed - beforeCall.heapUsed);
      log(
        `S10 pair ${pair + 1}/${pairs}: CPU idle ${idle.at(-1).toFixed(2)}%, updates ${updates.at(-1).toFixed(2)}% of a core; ${settled.applied - from.applied}/${phase.sent} updates applied; RSS +${mb(memory.rss - beforeCall.rss)}`,
      );
    }
    const overIdle = updates.map((value, i) => value - idle[i]);
    const cpu = summary(updates);
    const rss = summary(rssAfter);
    const raw = {
      endpoints: ENDPOINTS,
      updatesPerSecond: UPDATES_PER_SECOND,
      flapping: FLAPPING,
      pairs,
      seconds,
      cpuPercent: { updates, idle, overIdle },
      cpuPerUpdateUs,
      rawGrpcCpuPerUpdateUs: rawCpuPerUpdateUs,
      gcShareOfUpdateCpu: gcShare,
      memory: {
        beforeCall,
        afterOne,
        afterWeb,
        rssOverBeforeCall: rssAfter,
        heapUsedOverBeforeCall: heapAfter,
      },
      updates: { sent: sentTotal, applied: appliedTotal, fewestEndpoints: fewest, finalEndpoints },
      streams,
    };
    const appliedAll =
      appliedTotal === sentTotal && fewest === ENDPOINTS - FLAPPING && finalEndpoints === ENDPOINTS;
    const oneCost = afterOne.rss - beforeCall.rss;
    const webCost = afterWeb.rss - afterOne.rss;
    const rows = [
      row(
        "S10",
        `control-plane CPU, ${ENDPOINTS}-endpoint watch receiving ${UPDATES_PER_SECOND} updates/s`,
        cpu,
        "% of a core",
        "≤ 2%",
        (v) => v <= 2 && appliedAll,
        `idle ${summary(idle).median.toFixed(2)}%, over idle ${summary(overIdle).median.toFixed(2)}%; ${summary(cpuPerUpdateUs).median.toFixed(0)} µs CPU an update (${(summary(gcShare).median * 100).toFixed(0)}% GC), a bare grpc-js client receiving the same stream ${summary(rawCpuPerUpdateUs).median.toFixed(0)} µs; ${appliedTotal}/${sentTotal} updates applied by the balancer (endpoints ${ENDPOINTS} → ${fewest} → ${finalEndpoints}: ${FLAPPING} pods out and back in)`,
      ),
      row(
        "S10'",
        `RSS of the control-plane state (${ENDPOINTS}-endpoint Service + 1-endpoint Service), over the app before its first call`,
        { ...rss, median: rss.median / 1e6, q1: rss.q1 / 1e6, q3: rss.q3 / 1e6 },
        "MB",
        "≤ 10 MB",
        (v) => v <= 10,
        `first call to a 1-endpoint Service (loads undici and @inmesh/http) +${mb(oneCost)}; then web's ${ENDPOINTS} endpoints +${mb(webCost)}; heap used +${mb(summary(heapAfter).median)}; RSS before the first call ${mb(beforeCall.rss)}`,
      ),
    ];
    const notes = [
      "S10: the client reaches its controllers on loopback in plaintext gRPC (the SDK's default for a loopback controller address); in a cluster it is mTLS, which adds the decryption of ~10 small messages a second.",
    ];
    return { rows, raw, notes };
  } finally {
    for (const cleanup of cleanups) {
      try {
        await cleanup();
      } catch {}
    }
  }
}

/** CPU between two samples in % of one core. */
function cpuPercent(from, to) {
  return ((to.cpuUs - from.cpuUs) / (to.wallUs - from.wallUs)) * 100;
}

/** Megabytes (10^6 bytes), the unit of performance.md's S10 target. */
function mb(bytes) {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { runAlone } = await import("./standalone.mjs");
  await runAlone(measureS10, { cluster: false });
}
