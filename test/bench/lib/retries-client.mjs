/**
 * S9's client, one process (run with --expose-gc, pinned by its parent):
 *   node --expose-gc retries-client.mjs <setup.json>
 * The mesh dispatcher as lib/client.mjs `mesh` builds it, plus the policy client and source workload
 * that HTTPRoute retries need (OutboundPolicies.Watch). Each request is `undici.request` POSTing the
 * 16 KiB body of retries-payload.mjs to `http://<service>.default.svc.cluster.local/upload` as four
 * streamed chunks with its content-length, as an upload stream or fetch's body generator arrives: the
 * retry layer has to tee and keep such a body to replay it (a Buffer it replays from the caller's own
 * value, keeping nothing), so this is the case whose buffering S9' bounds.
 * Prints `READY` once a request to every service has succeeded; then on stdin:
 *   `open <seconds> <rate> <service>`: an open loop; prints `OPEN <json>` with successes, failures (any
 *     status but 200, or an error, by kind), seconds, the process's CPU µs (getrusage: all threads, as
 *     /proc counts them, to the microsecond), the peak number in flight and memoryUsage();
 *   `loop <seconds> <concurrency> <service>`: a closed loop; prints `LOOP <json>`, the same figures;
 *   `probe <seconds> <concurrency> <service> <everyMs>`: the same loop, with a full GC every `everyMs`
 *     followed by a reading of the ArrayBuffer bytes still reachable (`memoryUsage().arrayBuffers`):
 *     request bodies, the retry layer's copies and socket buffers; prints `PROBE <json>` with the
 *     readings' peak and median. Not for CPU figures: the collections cost far more than the requests.
 * Stdin closing stops it.
 */
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { distOf, identityFromSetup, median, requireFrom } from "./env.mjs";
import { BODY_BYTES, bodyChunks } from "./retries-payload.mjs";

const [setupFile] = process.argv.slice(2);
const setup = JSON.parse(readFileSync(setupFile, "utf8"));
const undici = requireFrom("http", "undici");
const { credentials } = requireFrom("proto", "@grpc/grpc-js");
const { createDiscovery, createContextToken } = await import(distOf("destination"));
const { destination, outbound } = await import(distOf("proto"));
const { createMeshDispatcher } = await import(distOf("http"));

const identity = await identityFromSetup(setup, setup.clientIdentity);
await identity.ready();
const discovery = createDiscovery({
  destinationClient: new destination.DestinationClient(
    setup.destinationAddress,
    credentials.createInsecure(),
  ),
  policyClient: new outbound.OutboundPoliciesClient(setup.policyAddress, credentials.createInsecure()),
  contextToken: createContextToken({ ns: setup.namespace, pod: setup.pod }),
  sourceWorkload: JSON.stringify({ ns: setup.namespace, pod: setup.pod }),
  initialTimeoutMs: 120_000,
});
// As lib/client.mjs: straight to the endpoint's port over mTLS (the target serves no transport header).
// One difference: at most 32 connections to the endpoint. HTTP/1 pools are unlimited by default, and
// when a busy shared core stalled the client, its open loop's queued requests each opened a connection:
// hundreds of handshakes in a second, a phase's CPU per request 4× the rest. Capped, a stall queues
// requests instead (the S9' probe's 16 in flight fit).
const dispatcher = createMeshDispatcher({
  identity,
  discovery,
  maxConnectionsPerEndpoint: 32,
  http2PriorKnowledge: false,
  useTransportHeader: false,
  discoveryTimeoutMs: 120_000,
  connectTimeoutMs: 120_000,
  failFastTimeoutMs: 120_000,
});

const urlOf = (service) => `http://${service}.${setup.namespace}.svc.cluster.local/upload`;
/** Request ids are unique over the process's life: the target decides failures by id. */
let nextId = 1;

async function* streamed(chunks) {
  for (const chunk of chunks) yield chunk;
}

/** One POST; true when the app got its 200 (whatever the retry layer did underneath). */
async function post(url) {
  const id = nextId;
  nextId += 1;
  try {
    const { statusCode, body } = await undici.request(url, {
      dispatcher,
      method: "POST",
      headers: {
        "content-type": "application/octet-stream",
        "content-length": String(BODY_BYTES),
        "x-s9-id": String(id),
      },
      body: streamed(bodyChunks(id)),
    });
    await body.dump();
    if (statusCode === 200) return true;
    noteFailure(`status ${statusCode}`);
    return false;
  } catch (error) {
    noteFailure(error?.code ?? error?.name ?? "error");
    return false;
  }
}

/** Why requests failed since the last report: status or error code → count. */
let failureKinds = {};
function noteFailure(kind) {
  failureKinds[kind] = (failureKinds[kind] ?? 0) + 1;
}
/** The failure kinds since the last call, and a fresh tally. */
function takeFailureKinds() {
  const kinds = failureKinds;
  failureKinds = {};
  return kinds;
}

async function closedLoop(seconds, concurrency, service) {
  const url = urlOf(service);
  const deadline = performance.now() + seconds * 1000;
  let successes = 0;
  let failures = 0;
  const cpu = process.cpuUsage();
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < deadline) {
        if (await post(url)) successes += 1;
        else failures += 1;
      }
    }),
  );
  const used = process.cpuUsage(cpu);
  return {
    successes,
    failures,
    seconds: (performance.now() - started) / 1000,
    cpuUs: used.user + used.system,
  };
}

/**
 * An open loop: `rate` requests a second for `seconds`, sent from a 2 ms timer (the due ones at each
 * tick; no busy polling, which would bill the client for spinning), whatever is still in flight.
 */
async function openLoop(seconds, rate, service) {
  const url = urlOf(service);
  const total = Math.round(rate * seconds);
  let sent = 0;
  let successes = 0;
  let failures = 0;
  let inFlight = 0;
  let peakInFlight = 0;
  const pending = [];
  const cpu = process.cpuUsage();
  const started = performance.now();
  await new Promise((resolve) => {
    const timer = setInterval(() => {
      const due = Math.min(total, Math.floor(((performance.now() - started) * rate) / 1000) + 1);
      for (; sent < due; sent += 1) {
        inFlight += 1;
        peakInFlight = Math.max(peakInFlight, inFlight);
        pending.push(
          post(url).then((ok) => {
            inFlight -= 1;
            if (ok) successes += 1;
            else failures += 1;
          }),
        );
      }
      if (sent >= total) {
        clearInterval(timer);
        resolve();
      }
    }, 2);
  });
  await Promise.all(pending);
  const used = process.cpuUsage(cpu);
  return {
    successes,
    failures,
    seconds: (performance.now() - started) / 1000,
    cpuUs: used.user + used.system,
    peakInFlight,
    // Where the RSS is (heap, ArrayBuffers, external) at the phase's end, for the raw figures.
    memory: process.memoryUsage(),
  };
}

async function probe(seconds, concurrency, service, everyMs) {
  const readings = [];
  const timer = setInterval(() => {
    // Twice: V8 frees dead ArrayBuffers' memory on a background sweeper after a collection, and the
    // next collection waits for it; read after one, the count still holds the garbage made since the
    // previous reading (megabytes at thousands of 16 KiB requests a second).
    globalThis.gc();
    globalThis.gc();
    readings.push(process.memoryUsage().arrayBuffers);
  }, everyMs);
  const load = await closedLoop(seconds, concurrency, service);
  clearInterval(timer);
  return {
    successes: load.successes,
    failures: load.failures,
    readings: readings.length,
    peakBytes: Math.max(...readings),
    medianBytes: median(readings),
    readingsKiB: readings.map((bytes) => Math.round(bytes / 1024)),
  };
}

for (const service of setup.services) {
  if (!(await post(urlOf(service)))) throw new Error(`first request to ${service} failed`);
}
process.stdout.write("READY\n");
const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const [command, seconds, concurrency, service, everyMs] = line.trim().split(" ");
  if (command === "open") {
    const result = await openLoop(Number(seconds), Number(concurrency), service);
    process.stdout.write(`OPEN ${JSON.stringify({ ...result, failureKinds: takeFailureKinds() })}\n`);
  } else if (command === "loop") {
    const result = await closedLoop(Number(seconds), Number(concurrency), service);
    process.stdout.write(`LOOP ${JSON.stringify({ ...result, failureKinds: takeFailureKinds() })}\n`);
  } else if (command === "probe") {
    const result = await probe(Number(seconds), Number(concurrency), service, Number(everyMs));
    process.stdout.write(`PROBE ${JSON.stringify({ ...result, failureKinds: takeFailureKinds() })}\n`);
  }
}
await dispatcher.close();
await discovery.close();
await identity.close();
process.exit(0);
