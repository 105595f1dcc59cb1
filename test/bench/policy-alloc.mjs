/**
 * S4 (performance.md) in plain node: ns per decision and bytes allocated per decision of the compiled
 * policy evaluator on the 50-route × 1,000-identity scenario.
 *
 *   node --expose-gc --max-semi-space-size=64 --import ./test/bench/policy-ts-loader.mjs test/bench/policy-alloc.mjs
 *
 * Allocation is the growth of the V8 heap across batches of decisions run between forced GCs, with a young
 * generation large enough that no collection happens inside a batch (batches in which one did run are
 * left out), taken as the slope between a small and a large batch so constant JIT costs cancel.
 * 0 bytes/decision is the target (design.md rule 7). Time is CPU time per decision (see timing()).
 */
import { PerformanceObserver, performance } from "node:perf_hooks";
import { getHeapStatistics } from "node:v8";
import { s4Scenario } from "./policy-scenario.ts";

if (typeof globalThis.gc !== "function") {
  console.error("run with --expose-gc (see the header of this file)");
  process.exit(2);
}
const gc = globalThis.gc;

const { policy, requests } = s4Scenario(4096);
const mask = requests.length - 1;
let sink = 0;

function run(count, offset) {
  for (let i = 0; i < count; i += 1) {
    const decision = policy.authorizeHttp(requests[(offset + i) & mask]);
    if (decision.allowed) sink += 1;
  }
}
function runConnections(count, offset) {
  for (let i = 0; i < count; i += 1) {
    if (policy.authorizeConnection(requests[(offset + i) & mask].client).allowed) sink += 1;
  }
}

const gcTimes = [];
const observer = new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) gcTimes.push(entry.startTime);
});
observer.observe({ entryTypes: ["gc"] });
const settle = () => new Promise((resolve) => setImmediate(resolve));

/** Median heap growth (bytes) over `trials` GC-free batches of `batch` decisions. */
async function heapGrowth(fn, batch, trials) {
  const growth = [];
  let skipped = 0;
  for (let t = 0; t < trials; t += 1) {
    gc();
    gc();
    await settle();
    const before = getHeapStatistics().used_heap_size;
    const t0 = performance.now();
    fn(batch, t * batch);
    const t1 = performance.now();
    const after = getHeapStatistics().used_heap_size;
    await settle();
    if (gcTimes.some((at) => at >= t0 && at <= t1)) skipped += 1;
    else growth.push(after - before);
  }
  growth.sort((a, b) => a - b);
  return { median: growth[Math.floor(growth.length / 2)] ?? Number.NaN, skipped };
}

/**
 * Bytes per decision as the slope between a small and a large batch, so constant per-batch costs (JIT
 * code and feedback, the measurement itself) cancel out.
 */
async function allocation(label, fn, small, large, trials) {
  const a = await heapGrowth(fn, small, trials);
  const b = await heapGrowth(fn, large, trials);
  const perDecision = Math.max(0, (b.median - a.median) / (large - small));
  const skipped = a.skipped + b.skipped;
  console.log(
    `${label}: ${perDecision.toFixed(3)} bytes/decision (heap growth ${a.median} B over ${small} decisions, ` +
      `${b.median} B over ${large}; medians of ${trials}${skipped ? `, ${skipped} batches with a GC left out` : ""})`,
  );
  return perDecision;
}

/**
 * ns per decision from the CPU time this process consumed (process.cpuUsage), not wall time, so other
 * work on a busy machine does not count; reported as the median over batches.
 */
function timing(label, fn, total, batches) {
  const perBatch = Math.floor(total / batches);
  const ns = [];
  for (let b = 0; b < batches; b += 1) {
    const before = process.cpuUsage();
    fn(perBatch, b * perBatch);
    const used = process.cpuUsage(before);
    ns.push(((used.user + used.system) * 1000) / perBatch);
  }
  ns.sort((a, b) => a - b);
  const p50 = ns[Math.floor(ns.length / 2)];
  console.log(
    `${label}: p50 ${p50.toFixed(1)} ns/decision of CPU time (min ${ns[0].toFixed(1)}, max ${ns.at(-1).toFixed(1)}; ` +
      `${batches} batches of ${perBatch})`,
  );
  return p50;
}

// Warm up: let the JIT compile the hot path before anything is measured.
run(300_000, 0);
runConnections(300_000, 0);

console.log(
  `S4: ${requests.length} distinct requests over a 50-route, 1,000-identity policy (node ${process.version})`,
);
// --gate (CI): only the deterministic figure, allocations; the exit code says whether it holds.
const GATE = process.argv.includes("--gate");
const nsHttp = GATE ? 0 : timing("authorizeHttp", run, 1_000_000, 20);
const nsConnection = GATE ? 0 : timing("authorizeConnection", runConnections, 1_000_000, 20);
const bytesHttp = await allocation("authorizeHttp", run, 100_000, 500_000, 7);
const bytesConnection = await allocation("authorizeConnection", runConnections, 100_000, 500_000, 7);
observer.disconnect();

const ok = nsHttp <= 500 && bytesHttp < 0.5;
console.log(
  `S4 target (p50 ≤ 500 ns, 0 bytes/check): ${ok ? "met" : "NOT met"} — ${nsHttp.toFixed(0)} ns, ${bytesHttp.toFixed(2)} B` +
    ` (connection: ${nsConnection.toFixed(0)} ns, ${bytesConnection.toFixed(2)} B) [sink ${sink > 0}]`,
);
if (GATE && !(bytesHttp < 0.5 && bytesConnection < 0.5)) process.exitCode = 1;
