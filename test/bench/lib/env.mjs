/**
 * Shared helpers of the benchmark suite: where the built packages are, CPU pinning, per-process CPU and
 * RSS from /proc, and the statistics every scenario reports (median and interquartile range of per-pair
 * ratios).
 */
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath, pathToFileURL } from "node:url";

export const ROOT = fileURLToPath(new URL("../../../", import.meta.url));

/** The built entry of an @inmesh package (benchmarks measure what users run: dist). */
export function distOf(name) {
  return pathToFileURL(`${ROOT}packages/${name}/dist/index.js`).href;
}

/**
 * The identity a bench child runs with, certified by the cluster's identity service from the setup the
 * parent wrote (cluster.mjs `setupFor`); `extra` adds provider options (S7's refresh bounds).
 */
export async function identityFromSetup(setup, localName, extra = {}) {
  const { createIdentityProvider } = await import(distOf("identity"));
  return createIdentityProvider({
    localName,
    trustAnchorsPem: setup.anchors,
    identityServiceAddress: setup.identityAddress,
    identityServiceName: setup.identityName,
    readToken: () => setup.token,
    ...extra,
  });
}

/** A dependency as one of our packages resolves it (undici from @inmesh/http, grpc-js from proto). */
export function requireFrom(pkg, specifier) {
  return createRequire(`${ROOT}packages/${pkg}/package.json`)(specifier);
}

let tasksetAvailable;
export function hasTaskset() {
  if (tasksetAvailable === undefined) {
    try {
      execFileSync("taskset", ["-p", String(process.pid)], { stdio: "ignore" });
      tasksetAvailable = true;
    } catch {
      tasksetAvailable = false;
    }
  }
  return tasksetAvailable;
}

/** Pins a process (and the threads it already has) to one core; a no-op without taskset. */
export function pin(pid, core) {
  if (!hasTaskset()) return false;
  try {
    execFileSync("taskset", ["-a", "-pc", String(core), String(pid)], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

const CLOCK_TICKS = 100;

/** User+system CPU seconds of a process, read from /proc (works for nginx as for node). */
export function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
}

export function rssBytes(pid) {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const match = /VmRSS:\s+(\d+) kB/.exec(status);
  return match ? Number(match[1]) * 1024 : 0;
}

/** A process and its direct children (nginx master and workers). */
export function processTree(pid) {
  const pids = [pid];
  try {
    for (const task of readdirSync(`/proc/${pid}/task`)) {
      const children = readFileSync(`/proc/${pid}/task/${task}/children`, "utf8").trim();
      if (children !== "") pids.push(...children.split(" ").map(Number));
    }
  } catch {}
  return pids;
}

export function totalCpu(pids) {
  let sum = 0;
  for (const pid of pids) sum += cpuSeconds(pid);
  return sum;
}

export function quantile(values, q) {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return Number.NaN;
  const position = (sorted.length - 1) * q;
  const low = Math.floor(position);
  const high = Math.ceil(position);
  return sorted[low] + (sorted[high] - sorted[low]) * (position - low);
}

export const median = (values) => quantile(values, 0.5);

/** Median and interquartile range of a list. */
export function summary(values) {
  return { median: median(values), q1: quantile(values, 0.25), q3: quantile(values, 0.75), n: values.length };
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * On Node 20 (V8 11.3) the SDK server's process, run in interleaved phases, reaches a state where node's
 * optimized stream code creates process.nextTick's tick objects through V8's runtime (~5 µs a request);
 * with bytecode flushing off it does not (RSS unchanged within 2 MiB). Node 24's timed gap does not move
 * with it. S1c, S1d and S6b add the SDK server run with this flag to their details.
 */
export const NO_FLUSH = "--no-flush-bytecode";
