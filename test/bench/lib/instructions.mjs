/**
 * Instructions per request, counted by callgrind (deterministic, unlike time on a shared machine): the
 * server runs under `valgrind --tool=callgrind` with V8's `--predictable` (no background threads, no
 * timing-driven heuristics); the load generator sends keep-alive requests one at a time on one
 * connection; after a warm-up, `callgrind_control --dump` closes a segment after `small` and after
 * `large` requests, repeatedly. Per-request cost is the slope (large − small) / (large − small count), so
 * whatever a segment pays once (a timer, the dump) cancels out. The first pair is left out (the JIT is
 * still settling); the result is the median of the other pairs (forcing a GC at segment ends instead
 * was tried: its cost grows with the segment and swamps the slope).
 * Garbage collection is paid per request too, but a scavenge (millions of instructions) lands in one
 * segment or the other at random: it moved single slopes by ±5k instructions (±7%), more than the 5%
 * gate. So the slopes are taken without collections (and without V8's compile work, one-off), and the
 * collections' instructions over all measured segments, divided by their requests, are added back.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { median } from "./env.mjs";
import { createH2Sequential } from "./h2-load.mjs";
import { createPool, sequential } from "./load.mjs";

export function hasCallgrind() {
  try {
    execFileSync("valgrind", ["--version"], { stdio: "ignore" });
    execFileSync("which", ["callgrind_control"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/**
 * @param cluster from startCluster()
 * @param kind `mesh`, `https` or `http`; with `http2`, `mesh` or `h2` (node:http2)
 */
export async function instructionsPerRequest(cluster, kind, options = {}) {
  // Five short pairs rather than three long ones: a major GC lands in one pair's large segment now and
  // then (+5-20% for that pair), and the median of five shrugs off two such pairs.
  const { warmup = 4000, small = 300, large = 1200, pairs = 5, core, node, http2 = false } = options;
  const dir = mkdtempSync(path.join(tmpdir(), "inmesh-callgrind-"));
  const server = await cluster.startServer(kind, {
    core,
    node,
    wrap: ["valgrind", "--tool=callgrind", `--callgrind-out-file=${dir}/cg.%p`, "--dump-instr=no"],
    nodeFlags: ["--predictable"],
  });
  // `http2`: sidecar-style requests (prior-knowledge HTTP/2, `l5d-orig-proto`) on one mTLS session.
  const pool = http2
    ? await createH2Sequential(server.port, cluster.clientTls)
    : createPool(server.port, kind === "http" ? undefined : cluster.clientTls, 1);
  let dumps = 0;
  const dump = () => {
    execFileSync("callgrind_control", ["--dump", String(server.pid)], { stdio: "ignore" });
    dumps += 1;
  };
  const segment = (n) => segmentParts(path.join(dir, `cg.${server.pid}.${n}`));
  try {
    await sequential(pool, warmup);
    dump();
    const slopes = [];
    let collected = 0;
    let requests = 0;
    for (let pair = 0; pair < pairs + 1; pair += 1) {
      await sequential(pool, small);
      dump();
      const smallCost = segment(dumps);
      await sequential(pool, large);
      dump();
      const largeCost = segment(dumps);
      if (pair > 0) {
        slopes.push((largeCost.rest - smallCost.rest) / (large - small));
        collected += smallCost.gc + largeCost.gc;
        requests += small + large;
      }
    }
    const gcPerRequest = collected / requests;
    return {
      perRequest: median(slopes) + gcPerRequest,
      gcPerRequest,
      slopes: slopes.map((slope) => slope + gcPerRequest),
    };
  } finally {
    await pool.close();
    await server.stop();
    // Files are listed first: valgrind may still be writing its final dump.
    readdirSync(dir);
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The same slope for an outbound client (S3a'): `lib/client.mjs <kind>` runs under callgrind and sends
 * `small` and `large` sequential requests per segment to the server at `targetPort` (not under
 * callgrind); the parent dumps between segments while the client waits on stdin. A client keeps
 * re-optimizing (and deoptimizing) code long after warm-up, and one TurboFan pass landing in a segment
 * moved its slope by ±20%; the instructions spent in V8's compile entry points (inclusive) are one-off
 * work, so they are taken out of every segment (GC stays: it is paid per request).
 * @param kind `mesh` (the mesh dispatcher) or `pool` (a bare undici Pool with the same mTLS options)
 */
export async function clientInstructionsPerRequest(cluster, kind, options) {
  const { targetPort, warmup = 4000, small = 300, large = 1200, pairs = 5, core } = options;
  const dir = mkdtempSync(path.join(tmpdir(), "inmesh-callgrind-"));
  const client = await cluster.startClient(kind, {
    targetPort,
    core,
    wrap: ["valgrind", "--tool=callgrind", `--callgrind-out-file=${dir}/cg.%p`, "--dump-instr=no"],
    nodeFlags: ["--predictable"],
  });
  let dumps = 0;
  const dump = () => {
    execFileSync("callgrind_control", ["--dump", String(client.pid)], { stdio: "ignore" });
    dumps += 1;
  };
  const segment = (n) => segmentWithoutJit(path.join(dir, `cg.${client.pid}.${n}`));
  try {
    await client.run(warmup);
    dump();
    const slopes = [];
    for (let pair = 0; pair < pairs + 1; pair += 1) {
      await client.run(small);
      dump();
      const smallCost = segment(dumps);
      await client.run(large);
      dump();
      const largeCost = segment(dumps);
      if (pair > 0) slopes.push((largeCost - smallCost) / (large - small));
    }
    return { perRequest: median(slopes), slopes, dir };
  } finally {
    await client.stop();
    if (!options.keep) {
      readdirSync(dir);
      rmSync(dir, { recursive: true, force: true });
    }
  }
}

/**
 * V8 runtime entry points that compile (lazy, baseline, optimized, OSR) or trigger tier-up. Node 22+
 * (V8 12+) compiles optimized code under `Runtime_OptimizeTurbofanEager` / `Runtime_OptimizeMaglevEager`
 * with --predictable: 30-45k instructions a request landed in Node 24's segments without them.
 */
const JIT_ENTRY =
  /^v8::internal::Runtime_(?:Compile\w*|Optimize(?:Turbofan|Maglev)\w*|InstallBaselineCode|BytecodeBudgetInterrupt\w*)\(/;
/** V8's one entry point of every collection (scavenge, mark-compact). */
const GC_ENTRY = /^v8::internal::Heap::CollectGarbage\(/;

/**
 * A segment's instructions split into those spent (inclusively) under V8's compile entry points, under
 * its collector, and the rest.
 */
export function segmentParts(file) {
  const text = execFileSync("callgrind_annotate", ["--inclusive=yes", "--threshold=100", file], {
    encoding: "utf8",
    maxBuffer: 256 * 2 ** 20,
  });
  let total;
  let jit = 0;
  let gc = 0;
  for (const line of text.split("\n")) {
    const match = /^\s*([\d,]+) \([\d. ]+%\)\s+(.*)$/.exec(line);
    if (!match) continue;
    const count = Number(match[1].replaceAll(",", ""));
    if (match[2].startsWith("PROGRAM TOTALS")) {
      total = count;
      continue;
    }
    // `file:function [object]`; recursion levels (`fn'2`) are inside their outer level already.
    const name = match[2].replace(/^[^:]*:/, "");
    if (/'\d+ \[[^\]]*\]$/.test(name)) continue;
    if (JIT_ENTRY.test(name)) jit += count;
    else if (GC_ENTRY.test(name)) gc += count;
  }
  if (total === undefined) throw new Error(`no totals in ${file}`);
  return { total, jit, gc, rest: total - jit - gc };
}

/**
 * A segment's instructions minus those spent (inclusively) under V8's compile entry points, as the
 * S3a' baseline was measured (recursion levels of a compile entry are subtracted again; segmentParts
 * skips them).
 */
export function segmentWithoutJit(file) {
  const text = execFileSync("callgrind_annotate", ["--inclusive=yes", "--threshold=100", file], {
    encoding: "utf8",
    maxBuffer: 256 * 2 ** 20,
  });
  let total;
  let jit = 0;
  for (const line of text.split("\n")) {
    const match = /^\s*([\d,]+) \([\d. ]+%\)\s+(.*)$/.exec(line);
    if (!match) continue;
    const count = Number(match[1].replaceAll(",", ""));
    if (match[2].startsWith("PROGRAM TOTALS")) total = count;
    else if (JIT_ENTRY.test(match[2].replace(/^[^:]*:/, ""))) jit += count;
  }
  if (total === undefined) throw new Error(`no totals in ${file}`);
  return total - jit;
}
