/**
 * S6: what a new mesh connection costs the server. Each connection is a full TLS 1.3 handshake with a
 * client certificate, one `GET /` on it (so the SDK server's protocol detection, peer identity and
 * policy check all run) and a close; the servers are the SDK server (lib/server.mjs `mesh`) and
 * node:https with the same mTLS context (`https`), pinned to one core, phases interleaved.
 *
 * The figure is the server's CPU per connection, read from /proc, not the connections a second the load
 * generator managed: a client's side of a full handshake (key share, the server's chain and signature
 * to verify, its own certificate to sign) costs about what the server's does, so one load-generator core
 * cannot keep one server core busy. Handshakes per second per core = 1 / CPU per handshake; how busy the
 * server core was is reported next to it.
 *
 * Resumption: the SDK server refuses it on purpose (SSL_OP_NO_TICKET in packages/identity/src/context.ts:
 * a resumed session skips the client-certificate check, so a session from before a trust-anchor or
 * certificate change would outlive it; linkerd2-proxy does not resume either, contract §4.1). What is
 * checked on the wire is that a client offering the server's own ticket gets a full handshake. The same
 * probe against a control server that does issue tickets (handshakes-resumable.mjs) must see resumption,
 * or the check is reported as not met; that control also measures what resumption would have saved.
 *
 *   node test/bench/lib/handshakes.mjs [--quick]   starts a cluster, measures, prints the rows as JSON
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import tls from "node:tls";
import { pathToFileURL } from "node:url";
import { SERVER_IDENTITY, stopChild } from "./cluster.mjs";
import { median, NO_FLUSH, pin, ROOT, totalCpu } from "./env.mjs";
import { instructionsPerConnection } from "./handshakes-instructions.mjs";
import { hasCallgrind } from "./instructions.mjs";
import { getOnce } from "./lean-load.mjs";

/** Connections in flight at once: enough to keep the server's accept queue non-empty. */
const CONCURRENCY = 8;
/** Warm-up per target in full mode: at 500-1,000 connections a second, past V8's tiering of the accept path. */
const WARMUP_SECONDS = 8;
/** Sessions offered to each server by the resumption probe. */
const PROBE_ATTEMPTS = 20;
/**
 * Connections per callgrind segment (full mode only: a connection takes ~0.5 s under valgrind). One
 * connection is ~9M instructions, so a 30-connection slope is not moved by a stray timer.
 */
const CALLGRIND = { warmup: 40, small: 10, large: 40, pairs: 3 };
/** Failed connections tolerated per phase (as a share of those completed) before the run fails. */
const MAX_ERROR_SHARE = 0.01;

export async function measureS6({ cluster, config, quick, loadCore, serverCore, log, row, summary }) {
  log(
    "S6: new mTLS connections (full handshake + 1 request + close), SDK server vs node:https (interleaved)…",
  );
  const mesh = await cluster.startServer("mesh", { core: serverCore });
  const https = await cluster.startServer("https", { core: serverCore });
  const meshNoFlush = await cluster.startServer("mesh", { core: serverCore, nodeFlags: [NO_FLUSH] });
  const control = await startResumableServer(cluster, serverCore);
  // The load generator's side of every handshake: one SecureContext for all its connections (built per
  // connection it would cost the client a key and certificate parse each time), the chain still verified.
  const { key, cert, ca, servername, minVersion } = cluster.clientTls;
  const clientTls = { secureContext: tls.createSecureContext({ key, cert, ca, minVersion }), servername };
  const raw = { concurrency: CONCURRENCY, loadCore, serverCore };
  const rows = [];
  const notes = [];
  try {
    log("  resumption probe: a client offering the server's own ticket…");
    raw.probe = {
      mesh: await probeResumption(mesh.port, clientTls),
      https: await probeResumption(https.port, clientTls),
      control: await probeResumption(control.port, clientTls),
    };
    log(
      `  resumed: SDK ${describeProbe(raw.probe.mesh)}; node:https (SDK context) ${describeProbe(raw.probe.https)}; control with tickets ${describeProbe(raw.probe.control)}`,
    );

    const targets = {
      mesh: { port: mesh.port, pids: mesh.pids, resume: false },
      https: { port: https.port, pids: https.pids, resume: false },
      meshNoFlush: { port: meshNoFlush.port, pids: meshNoFlush.pids, resume: false },
      controlFull: { port: control.port, pids: control.pids, resume: false },
      controlResumed: { port: control.port, pids: control.pids, resume: true },
    };
    for (const target of Object.values(targets))
      target.slots = Array.from({ length: CONCURRENCY }, () => ({ session: undefined }));
    // Warm-up: code compiled on both sides, and each resuming slot holding a ticket. V8 keeps optimizing
    // the SDK's accept path for its first ~2,000 connections (2.6 ms of server CPU per connection in the
    // first 4 s of a run, ~2.0 ms after 10 s, when node:https is at ~1.8 ms), so S6 measures the steady
    // state a long-running server has, not its start.
    for (const target of Object.values(targets))
      await connectionPhase(target, clientTls, quick ? 0.5 : WARMUP_SECONDS);
    const results = Object.fromEntries(Object.keys(targets).map((name) => [name, []]));
    for (let pair = 0; pair < config.pairs; pair += 1) {
      for (const [name, target] of Object.entries(targets))
        results[name].push(await connectionPhase(target, clientTls, config.seconds));
      log(
        `  pair ${pair + 1}: ${Object.entries(results)
          .map(
            ([n, l]) =>
              `${n} ${Math.round(l.at(-1).rate)}/s ${l.at(-1).cpuUs.toFixed(0)}µs (${(l.at(-1).busy * 100).toFixed(0)}% busy)`,
          )
          .join(", ")}`,
      );
    }
    raw.results = results;

    const values = (name, field) => results[name].map((phase) => phase[field]);
    const perPair = (a, b, f) => results[a].map((phase, i) => f(phase, results[b][i]));
    const med = (name, field) => median(values(name, field));
    const busy = (name) => `${(med(name, "busy") * 100).toFixed(0)}%`;
    // What limited the rate: the server core (the figure is its throughput), the load generator's core
    // (a client's handshake costs about what the server's does), or neither (other work on the cores).
    const limit =
      med("mesh", "busy") >= 0.9
        ? "the server core was saturated"
        : med("mesh", "clientBusy") >= 0.9
          ? "the load generator's core was the limit"
          : `neither core was saturated (load generator ${(med("mesh", "clientBusy") * 100).toFixed(0)}% busy): other work shared the cores`;
    const errors = Object.values(results)
      .flat()
      .reduce((sum, phase) => sum + phase.errors, 0);
    rows.push(
      row(
        "S6",
        "full mTLS handshakes (+1 request, close) per second per core, SDK server (1 ÷ its CPU per connection)",
        summary(values("mesh", "perCore")),
        "/s",
        "≥ 250",
        (v) => v >= 250,
        `${med("mesh", "cpuUs").toFixed(0)} µs server CPU per connection (node:https ${med("https", "cpuUs").toFixed(0)} µs, ${Math.round(med("https", "perCore"))}/s per core); measured ${Math.round(med("mesh", "rate"))}/s with the server core ${busy("mesh")} busy (${limit}); ${errors} failed connections`,
      ),
    );
    rows.push(
      row(
        "S6b",
        "full mTLS handshakes per core, SDK server ÷ node:https (same mTLS context)",
        summary(perPair("mesh", "https", (m, h) => h.cpuUs / m.cpuUs)),
        "×",
        "≥ 0.9",
        (v) => v >= 0.9,
        `the SDK's accept path (detection, SNI, peer identity, policy) costs ${median(perPair("mesh", "https", (m, h) => m.cpuUs - h.cpuUs)).toFixed(0)} µs more per connection (median of pairs); with ${NO_FLUSH} ${median(perPair("meshNoFlush", "https", (m, h) => h.cpuUs / m.cpuUs)).toFixed(2)}×`,
      ),
    );
    const { mesh: meshProbe, control: controlProbe } = raw.probe;
    // Meaningful only if the same probe saw a resuming server resume (and the SDK server sent a ticket).
    const probeWorks = controlProbe.reused === controlProbe.attempts && meshProbe.offered > 0;
    rows.push(
      row(
        "S6'",
        "session resumption: offered sessions the SDK server resumed (refused by design, contract §4.1)",
        meshProbe.reused,
        `of ${meshProbe.offered}`,
        "0",
        (v) => v === 0 && probeWorks,
        `every offered ticket fell back to a full handshake with a verified client certificate (the policy admitted the request); the server still sends ${meshProbe.ticketsPerConnection} unusable stateful tickets per connection; control (node:https with tickets) resumed ${controlProbe.reused}/${controlProbe.attempts}: there resumed ${Math.round(med("controlResumed", "perCore"))}/s vs full ${Math.round(med("controlFull", "perCore"))}/s per core, ${median(perPair("controlResumed", "controlFull", (r, f) => f.cpuUs / r.cpuUs)).toFixed(2)}× (what refusing costs)`,
      ),
    );
    const clientCpu = Object.keys(results)
      .map((name) => `${name} ${med(name, "clientCpuUs").toFixed(0)} µs`)
      .join(", ");
    notes.push(
      `S6: server core busy (median) SDK ${busy("mesh")}, node:https ${busy("https")}, control full ${busy("controlFull")}, resumed ${busy("controlResumed")}; load generator CPU per connection ${clientCpu}; for the SDK server ${limit}. Handshakes per core are 1 ÷ the server's CPU per connection (/proc), which does not depend on what limited the rate (work of other processes on the same core still inflates it, through shared caches).`,
    );
    for (const note of notes) log(`  ${note}`);
  } finally {
    await Promise.all([mesh.stop(), https.stop(), meshNoFlush.stop(), control.stop()]);
  }
  if (quick || !hasCallgrind()) {
    log(`  S6 instructions per connection: skipped (${quick ? "quick mode" : "valgrind not installed"})`);
    return { rows, raw, notes };
  }
  log("  S6 instructions per connection under callgrind (mesh, https; a few minutes)…");
  // Both at once: callgrind counts instructions, so sharing the cores does not matter.
  const [meshCount, httpsCount] = await Promise.all(
    ["mesh", "https"].map((kind) => instructionsPerConnection(cluster, kind, clientTls, CALLGRIND)),
  );
  raw.instructions = { mesh: meshCount, https: httpsCount, ...CALLGRIND };
  rows.push(
    row(
      "S6c",
      "instructions per new mTLS connection (handshake, 1 request, close), SDK server ÷ node:https",
      meshCount.perConnection / httpsCount.perConnection,
      "×",
      "≤ 1.10",
      (v) => v <= 1.1,
      `${(meshCount.perConnection / 1e6).toFixed(2)}M vs ${(httpsCount.perConnection / 1e6).toFixed(2)}M (slopes ${meshCount.slopes.map((v) => (v / 1e6).toFixed(2)).join(", ")}M vs ${httpsCount.slopes.map((v) => (v / 1e6).toFixed(2)).join(", ")}M)`,
    ),
  );
  return { rows, raw, notes };
}

function describeProbe(probe) {
  return `${probe.reused}/${probe.offered} offered (${probe.ticketsPerConnection} tickets per connection)`;
}

/** A TLS 1.3 mTLS connection to 127.0.0.1:`port`, offering `session` if given; `onSession` sees tickets. */
function openMtls(port, clientTls, session, onSession) {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host: "127.0.0.1",
      port,
      ...clientTls,
      ...(session === undefined ? {} : { session }),
      // The chain is verified against the anchors; which name the leaf carries is not the client's cost.
      checkServerIdentity: () => undefined,
    });
    // Before the handshake: a TLS 1.3 ticket arrives after it, and one arriving with no listener is lost.
    if (onSession !== undefined) socket.on("session", onSession);
    socket.once("secureConnect", () => {
      socket.off("error", reject);
      socket.on("error", () => {});
      resolve(socket);
    });
    socket.once("error", reject);
  });
}

/**
 * The wire check: one connection to collect the server's tickets, then `PROBE_ATTEMPTS` connections each
 * offering the newest ticket; counts how many the server resumed (`isSessionReused()`). Every connection
 * must be served `ok` (on the SDK server that means the policy admitted the verified client identity).
 */
async function probeResumption(port, clientTls) {
  let session;
  let tickets = 0;
  const onSession = (ticket) => {
    session = ticket;
    tickets += 1;
  };
  let ticketsPerConnection = 0;
  let offered = 0;
  let reused = 0;
  for (let attempt = 0; attempt <= PROBE_ATTEMPTS; attempt += 1) {
    const offering = session;
    const socket = await openMtls(port, clientTls, offering, onSession);
    const resumed = socket.isSessionReused();
    const body = await getOnce(socket, "/");
    socket.destroy();
    if (body !== "ok") throw new Error(`resumption probe: unexpected body ${body}`);
    if (attempt === 0) {
      ticketsPerConnection = tickets;
      continue;
    }
    if (offering !== undefined) offered += 1;
    if (resumed) reused += 1;
  }
  return { attempts: PROBE_ATTEMPTS, offered, reused, ticketsPerConnection };
}

/**
 * `target.slots.length` clients in a closed loop for `seconds`, each opening a connection, sending one
 * request, closing, and again. A resuming target's slots offer their newest ticket. Returns the rate,
 * the server's CPU per connection and how busy its core was, and the load generator's CPU per connection.
 */
async function connectionPhase(target, clientTls, seconds) {
  const { port, pids, slots, resume } = target;
  let count = 0;
  let resumed = 0;
  let errors = 0;
  let firstError;
  const started = performance.now();
  const deadline = started + seconds * 1000;
  const cpuBefore = totalCpu(pids);
  const clientBefore = process.cpuUsage();
  await Promise.all(
    slots.map(async (slot) => {
      const onSession = resume
        ? (ticket) => {
            slot.session = ticket;
          }
        : undefined;
      while (performance.now() < deadline && errors <= Math.max(3, count * MAX_ERROR_SHARE)) {
        try {
          const socket = await openMtls(port, clientTls, resume ? slot.session : undefined, onSession);
          if (socket.isSessionReused()) resumed += 1;
          try {
            if ((await getOnce(socket, "/")) !== "ok") throw new Error("unexpected response");
          } finally {
            socket.destroy();
          }
          count += 1;
        } catch (error) {
          errors += 1;
          firstError ??= error;
        }
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  const cpu = totalCpu(pids) - cpuBefore;
  const client = process.cpuUsage(clientBefore);
  if (errors > Math.max(3, count * MAX_ERROR_SHARE))
    throw new Error(`S6: ${errors} of ${count + errors} connections failed: ${firstError?.message}`);
  if (resume && resumed < count * 0.9)
    throw new Error(`S6: the control server resumed only ${resumed} of ${count} connections`);
  return {
    count,
    errors,
    resumed,
    seconds: elapsed,
    rate: count / elapsed,
    cpuUs: (cpu / count) * 1e6,
    perCore: count / cpu,
    busy: cpu / elapsed,
    clientCpuUs: (client.user + client.system) / count,
    clientBusy: (client.user + client.system) / 1e6 / elapsed,
  };
}

/**
 * handshakes-resumable.mjs pinned to `core`, with the server identity's certificate from the cluster's
 * CA and the mesh trust anchors (the same material the mesh servers present and check).
 */
async function startResumableServer(cluster, core) {
  const credentials = await cluster.cp.certificateAuthority.issueCredentials(SERVER_IDENTITY);
  const dir = mkdtempSync(path.join(tmpdir(), "inmesh-s6-"));
  const setup = path.join(dir, "setup.json");
  writeFileSync(
    setup,
    JSON.stringify({
      key: credentials.privateKeyPem,
      cert: credentials.certificateChainPem,
      ca: cluster.cp.trustAnchorsPem,
    }),
    { mode: 0o600 },
  );
  const child = spawn(process.execPath, [path.join(ROOT, "test/bench/lib/handshakes-resumable.mjs"), setup], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  pin(child.pid, core);
  let stderr = "";
  child.stderr.on("data", (chunk) => {
    stderr = (stderr + chunk).slice(-4000);
  });
  const stop = () => {
    rmSync(dir, { recursive: true, force: true });
    return stopChild(child);
  };
  try {
    const port = await new Promise((resolve, reject) => {
      let out = "";
      child.stdout.on("data", (chunk) => {
        out += chunk;
        const match = /LISTENING (\d+)/.exec(out);
        if (match) resolve(Number(match[1]));
      });
      child.once("exit", (code) => reject(new Error(`resumable server exited (${code}): ${stderr}`)));
    });
    pin(child.pid, core);
    return { pid: child.pid, pids: [child.pid], port, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

// ---- run alone ----

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const { runAlone } = await import("./standalone.mjs");
  await runAlone(measureS6);
}
