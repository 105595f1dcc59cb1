/**
 * S10's meshed client, as a user writes it: `createMesh()` from the LINKERD2_PROXY_* environment the
 * parent gives it, `await mesh.ready()`, then `mesh.fetch` to Services, which opens what a meshed
 * client holds per Service (Destination.Get, GetProfile and OutboundPolicies watches, a balancer).
 *   node --expose-gc control-plane-cost-client.mjs <watched authority prefix>
 * Prints `READY` once the mesh is ready; then on stdin, one command a line:
 * - `call <url>`: one request through `mesh.fetch`; prints `CALLED <status>`.
 * - `sample`: prints `SAMPLE <cpu µs> <wall µs> <applied> <endpoints> <streams> <fewest> <gc µs>`: this process's CPU
 *   (getrusage, every thread, µs resolution: /proc's 10 ms ticks are too coarse for ~1% of a core over
 *   a second) and clock, and what the balancer of the watched Service applied so far (read from the
 *   `mesh:destination:changed` channel that its endpoint group publishes after each applied set: how
 *   many, the endpoint count after the last, and the fewest since the previous sample), and the time
 *   spent in garbage collection.
 * - `mem`: two full collections, then `MEM <rss> <heapUsed> <external> <arrayBuffers>` (bytes), so
 *   snapshots compare live memory, not how much garbage happened to be waiting.
 * Stdin closing closes the mesh and exits.
 */
import { subscribe } from "node:diagnostics_channel";
import { PerformanceObserver } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { distOf } from "./env.mjs";

const watched = process.argv[2] ?? "";
const { createMesh } = await import(distOf("mesh"));

/** Sets the balancer of the watched Service applied, and its endpoint count after the last one. */
let applied = 0;
let endpoints = 0;
/** The fewest endpoints the balancer held since the last `sample`: the flap's low point. */
let fewest = Number.POSITIVE_INFINITY;
subscribe("mesh:destination:changed", (message) => {
  if (!message.authority.startsWith(watched)) return;
  applied += 1;
  endpoints = message.endpointCount;
  fewest = Math.min(fewest, endpoints);
});

/** Wall time spent in garbage collection (every kind), µs: how much of the CPU is the collector's. */
let gcUs = 0;
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) gcUs += entry.duration * 1000;
}).observe({ entryTypes: ["gc"] });

const mesh = createMesh();
await mesh.ready();
process.stdout.write("READY\n");

const started = performance.now();
const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const [command, argument] = line.trim().split(" ");
  if (command === "call") {
    try {
      const response = await mesh.fetch(argument);
      const text = await response.text();
      const error = response.headers.get("l5d-proxy-error");
      process.stdout.write(
        `CALLED ${response.status}${error ? ` ${JSON.stringify(error)} ${JSON.stringify(text)}` : ""}\n`,
      );
    } catch (error) {
      process.stdout.write(
        `CALLED ${JSON.stringify(`${error?.code ?? ""} ${error?.message ?? error} ${error?.cause?.code ?? ""} ${error?.cause?.message ?? ""}`)}\n`,
      );
    }
  } else if (command === "sample") {
    const { user, system } = process.cpuUsage();
    const wallUs = Math.round((performance.now() - started) * 1000);
    const streams = mesh.discovery?.activeWatches() ?? 0;
    process.stdout.write(
      `SAMPLE ${user + system} ${wallUs} ${applied} ${endpoints} ${streams} ${fewest} ${Math.round(gcUs)}\n`,
    );
    fewest = endpoints;
  } else if (command === "mem") {
    globalThis.gc?.();
    globalThis.gc?.();
    const { rss, heapUsed, external, arrayBuffers } = process.memoryUsage();
    process.stdout.write(`MEM ${rss} ${heapUsed} ${external} ${arrayBuffers}\n`);
  }
}
await mesh.close();
process.exit(0);
