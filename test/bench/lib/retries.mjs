/**
 * S9, retries with bodies (performance.md §5.2): the SDK client POSTs 16 KiB bodies to a meshed service
 * whose HTTPRoute carries Linkerd 2.18 retry annotations, served by the dev control plane's
 * OutboundPolicies API. Phase A: the target answers 503 to 10% of first tries (and the retry succeeds);
 * phase B: the same requests, no failures. Phases interleave A B A B…, each an open loop at RATE
 * requests a second for `config.seconds`.
 *
 * Open loop for the CPU figures, not closed: phase A's retries wait 25–50 ms of backoff (the controller's
 * fixed 25–250 ms, jittered), and in a closed loop those waiting requests take workers out. At ~2,000
 * requests/s with 16 workers about 7 of them sleep, and the client's CPU per request rises by itself
 * when fewer requests share each event-loop turn: phase B alone at 8 versus 16 in flight measured
 * 1.16× here, the target's whole margin. At a fixed arrival rate both phases do the same work but the
 * retries. The rate is one both phases sustain on a busy shared core (above it an open loop measures its
 * own queue; each phase's peak in flight is reported).
 * The S9' probe is a closed loop of 16 instead: its bound is per request in flight, and a closed loop
 * holds that number fixed, backoff waits included; it measures no CPU.
 *
 * What the retry layer buffers: the SDK has no gauge of it, and RSS cannot resolve it (16 × 64 KiB is
 * 1 MiB; the client's RSS moves by several MiB as V8 resizes its heap). Bodies and their copies are
 * ArrayBuffers, so the probe stops the client every 100 ms for full collections and reads the bytes of
 * ArrayBuffers still reachable: what requests in flight hold at that instant. The same load through a
 * Service without retries (bodies sent once, copied by no one) is the baseline; the excess is what the
 * retry layer keeps (its tee's copy, or the joined replay buffer of a request waiting to be retried),
 * and would show any copy kept past its call. Peak RSS per phase (VmHWM) is reported beside it, as the
 * spec names it.
 *
 * Rows: S9 (client CPU per successful request, A ÷ B), S9' (peak bytes the retry layer keeps, against
 * in-flight × 64 KiB + 10%), S9'' (requests the app saw fail, and bodies the target got wrong).
 *
 *   node test/bench/lib/retries.mjs [--quick] [--pairs=N] [--seconds=S] [--rate=R] [--raw]
 *     runs S9 alone (its own cluster) and prints its rows as JSON
 */
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { CLIENT_IDENTITY, identityOf, NS } from "./cluster.mjs";
import { cpuSeconds, median, pin, ROOT, rssBytes } from "./env.mjs";
import { readLines } from "./line-child.mjs";

/** Requests a second of the CPU phases: half of run.mjs's 1,000, so a busy shared core still keeps up. */
const RATE = 500;
/** Requests in flight during the S9' probe. */
const CONCURRENCY = 16;
/** A phase with more in flight than this fell behind its schedule: its figures are noted as suspect. */
const BEHIND_IN_FLIGHT = 64;
/** Linkerd's `max_request_bytes` for HTTPRoute retries (contract §7.2), the spec's unit of S9'. */
const RETRY_BUFFER_BYTES = 64 * 1024;
/** How often the S9' probe stops the client for a full GC and a reading of live ArrayBuffer bytes. */
const PROBE_EVERY_MS = 100;
const RETRY_SERVICE = "retry-target";
/** The same pod behind a Service without retries: the S9' probe's baseline. */
const ONCE_SERVICE = "retry-target-once";

/**
 * What a Linkerd 2.18 user writes to retry a route's 5xx answers, up to twice. No
 * `retry.linkerd.io/timeout`: on a shared machine a stalled core made tries outlast any per-try
 * timeout, their retries drained the target's retry budget (the SDK's, see packages/http README), and
 * the next phase's 503s then went unretried: failures of the machine, not of what S9 measures.
 */
const RETRY_ANNOTATIONS = {
  "retry.linkerd.io/http": "5xx",
  "retry.linkerd.io/limit": "2",
};

const podYaml = (name, port, app = name) => `apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: ${NS}, labels: { app: ${app}, linkerd.io/control-plane-ns: linkerd } }
spec:
  serviceAccountName: ${name.replace(/-\d+$/, "")}
  containers: [{ name: main, image: app, ports: [{ name: http, containerPort: ${port} }] }]
status: { podIP: 127.0.0.1 }
`;

const serviceYaml = (name, app) => `apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: ${NS} }
spec: { selector: { app: ${app} }, ports: [{ name: http, port: 80, targetPort: http }] }
`;

/**
 * The cluster's own pods and Service (as lib/cluster.mjs writes them, `target-0` on port 1 as at start)
 * plus S9's: pod `retry-target-0` on `port`, Services `retry-target` (with an HTTPRoute carrying the
 * retry annotations) and `retry-target-once` (none). setManifests replaces every file, hence the copy;
 * `cluster.setTargetPort(1)` puts the cluster's own set back.
 */
function manifests(cluster, port) {
  const route = `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: ${RETRY_SERVICE}-uploads
  namespace: ${NS}
  annotations: ${JSON.stringify(RETRY_ANNOTATIONS)}
spec:
  parentRefs: [{ group: core, kind: Service, name: ${RETRY_SERVICE}, port: 80 }]
  rules:
    - matches: [{ path: { type: PathPrefix, value: / } }]
      backendRefs: [{ name: ${RETRY_SERVICE}, port: 80 }]
`;
  return [
    {
      path: "bench.yaml",
      text: [
        podYaml("srv", cluster.appPort),
        podYaml("cli", 1),
        podYaml("target-0", 1, "target"),
        serviceYaml("target", "target"),
      ].join("---\n"),
    },
    {
      path: "retries.yaml",
      text: [
        podYaml(`${RETRY_SERVICE}-0`, port, RETRY_SERVICE),
        serviceYaml(RETRY_SERVICE, RETRY_SERVICE),
        serviceYaml(ONCE_SERVICE, RETRY_SERVICE),
        route,
      ].join("---\n"),
    },
  ];
}

function applyManifests(cluster, port) {
  const result = cluster.cp.setManifests(manifests(cluster, port));
  if (!result.ok)
    throw new Error(
      `S9 manifests rejected: ${result.problems.map((p) => p.message ?? String(p)).join("; ")}`,
    );
}

/**
 * A child speaking lines on stdin/stdout (retries-target.mjs, retries-client.mjs), pinned to `core`
 * before and after its start-up (threads started late follow the second pin).
 */
async function startChild(script, args, { core, nodeFlags = [], ready }) {
  const child = spawn(process.execPath, [...nodeFlags, path.join(ROOT, "test/bench/lib", script), ...args], {
    stdio: ["pipe", "pipe", "pipe"],
  });
  if (core !== undefined) pin(child.pid, core);
  const { stderr, nextLine, ask: askLine } = readLines(child, script);
  /** Sends one command line and resolves with the reply that `pattern` matches (its first group). */
  const ask = async (command, pattern) => {
    const match = pattern.exec(await askLine(command));
    if (!match) throw new Error(`${script}: unexpected reply to ${command}: ${stderr()}`);
    return match[1];
  };
  const first = await nextLine();
  const match = ready.exec(first);
  if (!match) throw new Error(`${script}: ${first} ${stderr()}`);
  if (core !== undefined) pin(child.pid, core);
  return {
    pid: child.pid,
    ready: match,
    ask,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.stdin.end();
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/**
 * Peak RSS of a phase: the kernel's high-water mark (VmHWM), reset at the phase's start by writing 5 to
 * /proc/<pid>/clear_refs (Linux ≥ 4.0, our own child). Where that is refused, sampling VmRSS every 20 ms
 * stands in (it can miss a short peak).
 */
function peakRssWatch(pid) {
  let sampled = 0;
  let timer;
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, "5");
  } catch {
    timer = setInterval(() => {
      sampled = Math.max(sampled, rssBytes(pid));
    }, 20);
  }
  return () => {
    if (timer === undefined) {
      const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
      return match ? Number(match[1]) * 1024 : Number.NaN;
    }
    clearInterval(timer);
    return Math.max(sampled, rssBytes(pid));
  };
}

/**
 * Runs S9 on `cluster`: starts its target (pinned to `serverCore`) and client (pinned to `loadCore`),
 * measures, stops both and puts the cluster's manifests back.
 */
export async function measureS9({
  cluster,
  config,
  quick,
  loadCore,
  serverCore,
  log,
  row,
  summary,
  rate = RATE,
}) {
  log(
    `S9: 16 KiB POSTs through HTTPRoute retries at ${rate}/s, 10% of first tries answered 503 vs none, ${config.pairs} pairs of ${config.seconds} s…`,
  );
  const { cp } = cluster;
  const dir = mkdtempSync(path.join(tmpdir(), "inmesh-bench-s9-"));
  const started = [];
  try {
    // The pod must be in the manifests for its token; its port is known once the target listens.
    applyManifests(cluster, 1);
    const common = {
      anchors: cp.trustAnchorsPem,
      identityAddress: cp.addresses.identity,
      identityName: cp.serverNames.identity,
    };
    const targetSetup = path.join(dir, "target.json");
    writeFileSync(
      targetSetup,
      JSON.stringify({
        ...common,
        serverIdentity: identityOf(RETRY_SERVICE),
        token: await cp.tokenFor(NS, `${RETRY_SERVICE}-0`),
      }),
    );
    const target = await startChild("retries-target.mjs", [targetSetup], {
      core: serverCore,
      ready: /^LISTENING (\d+)$/,
    });
    started.push(target);
    applyManifests(cluster, Number(target.ready[1]));

    const clientSetup = path.join(dir, "client.json");
    writeFileSync(
      clientSetup,
      JSON.stringify({
        ...common,
        clientIdentity: CLIENT_IDENTITY,
        token: await cp.tokenFor(NS, "cli"),
        destinationAddress: cp.addresses.destination,
        policyAddress: cp.addresses.policy,
        namespace: NS,
        pod: "cli",
        services: [RETRY_SERVICE, ONCE_SERVICE],
      }),
    );
    const client = await startChild("retries-client.mjs", [clientSetup], {
      core: loadCore,
      nodeFlags: ["--expose-gc"],
      ready: /^READY$/,
    });
    started.push(client);

    const setFailing = (on) => target.ask(`fail ${on ? 1 : 0}`, /^(OK)$/);
    const targetStats = async () => JSON.parse(await target.ask("stats", /^(\{.*\})$/));

    /** One open-loop phase against the retrying route: the client's figures and the target's counts. */
    const phase = async (failing, seconds) => {
      await setFailing(failing);
      const peakRss = peakRssWatch(client.pid);
      const cpuBefore = cpuSeconds(client.pid);
      const load = JSON.parse(
        await client.ask(`open ${seconds} ${rate} ${RETRY_SERVICE}`, /^OPEN (\{.*\})$/),
      );
      // /proc's count of the same CPU, in 10 ms ticks: a cross-check of the child's own getrusage figure
      // (the ratio uses the latter, exact to the µs, where a 1 s phase is ~20 ticks).
      const procCpuUs = (cpuSeconds(client.pid) - cpuBefore) * 1e6;
      const peakRssBytes = peakRss();
      const served = await targetStats();
      return {
        ...load,
        cpuUsPerSuccess: load.cpuUs / load.successes,
        procCpuUs,
        successesPerSecond: load.successes / load.seconds,
        retriesPerSecond: served.retries / load.seconds,
        peakRssBytes,
        served,
      };
    };
    const closedLoop = async (service, failing, seconds) => {
      await setFailing(failing);
      const load = JSON.parse(
        await client.ask(`loop ${seconds} ${CONCURRENCY} ${service}`, /^LOOP (\{.*\})$/),
      );
      return { ...load, served: await targetStats() };
    };

    // Warm-up: both paths compiled, both routes' pools open. A cold client fell behind the open loop's
    // rate at first, and its pool then opened a connection per queued request (hundreds of handshakes).
    const warmUp = [
      await closedLoop(RETRY_SERVICE, true, 2),
      await closedLoop(ONCE_SERVICE, false, 2),
      await phase(true, 2),
      await phase(false, 2),
    ];
    const results = { failing: [], clean: [] };
    for (let pair = 0; pair < config.pairs; pair += 1) {
      results.failing.push(await phase(true, config.seconds));
      results.clean.push(await phase(false, config.seconds));
      const [a, b] = [results.failing.at(-1), results.clean.at(-1)];
      log(
        `  pair ${pair + 1}: with failures ${a.cpuUsPerSuccess.toFixed(0)} µs CPU/success, ${Math.round(a.retriesPerSecond)} retries/s, ${a.peakInFlight} in flight at most; without ${b.cpuUsPerSuccess.toFixed(0)} µs, ${b.peakInFlight}; peak RSS ${(a.peakRssBytes / 2 ** 20).toFixed(1)} vs ${(b.peakRssBytes / 2 ** 20).toFixed(1)} MiB`,
      );
    }

    // S9': live ArrayBuffer bytes, 16 in flight, through the retrying route with failures, the same
    // without failures, and the route without retries (bodies sent once, kept by no one), in rounds;
    // the retrying route's excess over the last is what the retry layer keeps.
    const probeRounds = quick ? 1 : 3;
    const probes = { failing: [], clean: [], once: [] };
    for (let round = 0; round < probeRounds; round += 1) {
      for (const [name, service, failing] of [
        ["failing", RETRY_SERVICE, true],
        ["clean", RETRY_SERVICE, false],
        ["once", ONCE_SERVICE, false],
      ]) {
        // Its pool at 16 warm connections first (undici closes idle ones after 4 s): handshakes leave
        // buffers behind for a while, and a probe opening connections would count them.
        if (name !== "clean") warmUp.push(await closedLoop(service, failing, 1));
        await setFailing(failing);
        const probe = JSON.parse(
          await client.ask(
            `probe ${config.seconds} ${CONCURRENCY} ${service} ${PROBE_EVERY_MS}`,
            /^PROBE (\{.*\})$/,
          ),
        );
        probes[name].push({ ...probe, served: await targetStats() });
      }
      const kib = (name) => (probes[name].at(-1).peakBytes / 1024).toFixed(0);
      log(
        `  probe ${round + 1}: live ArrayBuffers at most ${kib("failing")} KiB with failures, ${kib("clean")} KiB without, ${kib("once")} KiB on the route without retries`,
      );
    }

    return report({ results, probes, warmUp, config, rate, row, summary });
  } finally {
    await Promise.all(started.map((child) => child.stop()));
    cluster.setTargetPort(1);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The rows, from the phases' figures and the target's counts (every phase's, warm-up included). */
function report({ results, probes, warmUp, config, rate, row, summary }) {
  const { failing, clean } = results;
  const ratios = failing.map((a, i) => a.cpuUsPerSuccess / clean[i].cpuUsPerSuccess);
  const med = (list, pick) => median(list.map(pick));
  const sum = (list, pick) => list.reduce((total, value) => total + pick(value), 0);
  const everything = [...warmUp, ...failing, ...clean, ...probes.failing, ...probes.clean, ...probes.once];
  const appFailures = sum(everything, (p) => p.failures);
  const wrongBodies = sum(everything, (p) => p.served.mismatches + p.served.malformed);
  const neverRetried = sum(everything, (p) => p.served.awaitingRetry);
  const retries = sum(failing, (p) => p.served.retries);
  const firstTries = sum(failing, (p) => p.served.tries - p.served.retries);
  const failedFirstTries = sum(failing, (p) => p.served.firstTryFailures);
  const retriedWithoutFailures = sum(clean, (p) => p.served.retries + p.served.firstTryFailures);
  const newConnections = sum([...failing, ...clean], (p) => p.served.connections);
  const behind = [...failing, ...clean].filter((p) => p.peakInFlight > BEHIND_IN_FLIGHT).length;
  const failureKinds = {};
  for (const p of everything)
    for (const [kind, count] of Object.entries(p.failureKinds ?? {}))
      failureKinds[kind] = (failureKinds[kind] ?? 0) + count;
  const kinds = Object.entries(failureKinds)
    .map(([kind, count]) => `${count} ${kind}`)
    .join(", ");

  const bound = CONCURRENCY * RETRY_BUFFER_BYTES * 1.1;
  const excess = (name) => probes[name].map((p, i) => p.peakBytes - probes.once[i].peakBytes);
  const kept = excess("failing");
  const kib = (bytes) => `${(bytes / 1024).toFixed(0)} KiB`;
  const mib = (bytes) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
  const rows = [
    row(
      "S9",
      `CPU/successful request, SDK client, 16 KiB POSTs at ${rate}/s through HTTPRoute retries: 10% of first tries failing (503) ÷ none failing`,
      summary(ratios),
      "×",
      "≤ 1.15",
      (v) => v <= 1.15,
      `${med(failing, (p) => p.cpuUsPerSuccess).toFixed(0)} vs ${med(clean, (p) => p.cpuUsPerSuccess).toFixed(0)} µs; ${med(failing, (p) => p.retriesPerSecond).toFixed(0)} retries/s (${((failedFirstTries / firstTries) * 100).toFixed(1)}% of first tries failed, ${retries} retried); at most ${Math.max(...failing.map((p) => p.peakInFlight))} vs ${Math.max(...clean.map((p) => p.peakInFlight))} in flight; ${newConnections} connections opened; ${appFailures} failed, ${wrongBodies} wrong bodies`,
    ),
    row(
      "S9'",
      `peak request-body bytes kept by the retry layer, ${CONCURRENCY} in flight, 10% failing (live ArrayBuffers after full GCs: retrying route − route without retries)`,
      summary(kept.map((bytes) => bytes / 1024)),
      "KiB",
      `≤ ${kib(bound)} (${CONCURRENCY} × 64 KiB + 10%)`,
      (v) => v * 1024 <= bound,
      `max ${kib(Math.max(...kept))}, ${kib(median(kept) / CONCURRENCY)} per request in flight; none failing ${kib(median(excess("clean")))}; client peak RSS ${mib(med(failing, (p) => p.peakRssBytes))} with failures vs ${mib(med(clean, (p) => p.peakRssBytes))} without`,
    ),
    row(
      "S9''",
      "requests failed as the app sees them + bodies the target received wrong, 16 KiB POSTs with retries",
      appFailures + wrongBodies,
      "failed",
      "0",
      (v) => v === 0,
      `${appFailures} failed${kinds ? ` (${kinds})` : ""}, ${wrongBodies} wrong bodies, ${neverRetried} 503s never retried, ${retriedWithoutFailures} retries without failures; ${retries} retries in ${failing.length} × ${config.seconds} s`,
    ),
  ];
  const notes = [];
  if (behind > 0)
    notes.push(
      `S9: ${behind} of ${failing.length + clean.length} phases had more than ${BEHIND_IN_FLIGHT} requests in flight: the client fell behind ${rate}/s (a busy core), and their CPU figures include queueing.`,
    );
  return {
    rows,
    raw: { rate, concurrency: CONCURRENCY, annotations: RETRY_ANNOTATIONS, ...results, probes, warmUp },
    notes,
  };
}

// ---- run alone ----

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  // --pairs, --seconds, --rate: other lengths and rates than run.mjs's, for trying things out.
  const overrides = {};
  for (const name of ["pairs", "seconds", "rate"]) {
    const arg = process.argv.find((a) => a.startsWith(`--${name}=`));
    if (arg) overrides[name] = Number(arg.slice(name.length + 3));
  }
  const { runAlone } = await import("./standalone.mjs");
  await runAlone(measureS9, { config: overrides, extra: { rate: overrides.rate } });
}
