/**
 * Load through undici (already a dependency of @inmesh/http, so nothing to install), keep-alive HTTP/1.1
 * with a fixed number of connections: open loop for latency (requests sent on a fixed schedule, latency
 * counted from the scheduled send time so a slow server cannot hide its queueing), sequential requests
 * for callgrind, steady load for memory. Closed-loop throughput uses lean-load.mjs: undici's own cost per
 * request kept one core from saturating a server's.
 */
import { requireFrom } from "./env.mjs";

const { Pool } = requireFrom("http", "undici");

export function createPool(port, tls, connections) {
  return new Pool(`${tls ? "https" : "http"}://127.0.0.1:${port}`, {
    connections,
    pipelining: 1,
    keepAliveTimeout: 60_000,
    keepAliveMaxTimeout: 60_000,
    ...(tls ? { connect: { ...tls, checkServerIdentity: () => undefined } } : {}),
  });
}

async function once(pool) {
  const { statusCode, body } = await pool.request({ path: "/", method: "GET" });
  await body.dump();
  if (statusCode !== 200) throw new Error(`status ${statusCode}`);
}

/** `n` requests one after another (deterministic work per request, for callgrind). */
export async function sequential(pool, n) {
  for (let i = 0; i < n; i += 1) await once(pool);
}

/** Sends at `rate` per second for `seconds`; latencies in µs from each scheduled send time. */
export async function openLoop(pool, { rate, seconds }) {
  const interval = 1000 / rate;
  const total = Math.round(rate * seconds);
  const latencies = new Float64Array(total);
  let errors = 0;
  const start = performance.now() + 20;
  const inflight = [];
  let next = 0;
  // Polls with setImmediate rather than timers: responses are read between polls, and no timer
  // granularity (1 ms) is added to the measured latency.
  await new Promise((resolve) => {
    const poll = () => {
      const now = performance.now();
      while (next < total && start + next * interval <= now) {
        const i = next;
        const scheduled = start + i * interval;
        next += 1;
        inflight.push(
          once(pool).then(
            () => {
              latencies[i] = (performance.now() - scheduled) * 1000;
            },
            () => {
              errors += 1;
              latencies[i] = Number.NaN;
            },
          ),
        );
      }
      if (next < total) setImmediate(poll);
      else resolve();
    };
    setImmediate(poll);
  });
  await Promise.all(inflight);
  const sorted = [...latencies].filter((value) => !Number.isNaN(value)).sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return { p50: at(0.5), p99: at(0.99), errors, count: sorted.length };
}
