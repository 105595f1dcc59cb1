// R15 (reliability.md): retry budget and storms. Three layers of meshed callers, each a service whose
// ServiceProfile makes its route retryable with Linkerd's default budget (20% of requests + 10 retries
// a second, over 10 s): the test's client calls b, b's handler calls c, c's calls d, all through
// mesh.fetch with mTLS, every pod on its own loopback address. d answers 503 to everything, then to half.
// Each layer's retries stay within what its budget allows, and the attempts reaching d stay bounded by
// the budgets compounded (no retry storm: without a budget each layer would multiply what reaches d).
import type { IncomingMessage, ServerResponse } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { printFigures, scaled, testTimeoutMs } from "./harness/figures.js";
import { type MeshServices, startMeshServices } from "./harness/mesh-services.js";

const NAMESPACE = "r15";
const RATE_PER_SECOND = scaled(30, 1000);
const ALL_FAILING_MS = scaled(8_000, 60_000);
const HALF_FAILING_MS = scaled(8_000, 60_000);
const MAX_IN_FLIGHT = 1000;

// The budget every layer's ServiceProfile sets (Linkerd's default).
const RETRY_RATIO = 0.2;
const MIN_RETRIES_PER_SECOND = 10;
const TTL_S = 10;
const TOLERANCE = 1.05;

const LAYERS = ["b", "c", "d"] as const;
type Layer = (typeof LAYERS)[number];

function profile(service: string): string {
  return `
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: { name: ${service}.${NAMESPACE}.svc.cluster.local, namespace: ${NAMESPACE} }
spec:
  routes:
    - name: everything
      condition: { pathRegex: "/.*" }
      isRetryable: true
  retryBudget: { retryRatio: ${RETRY_RATIO}, minRetriesPerSecond: ${MIN_RETRIES_PER_SECOND}, ttl: ${TTL_S}s }
---
apiVersion: v1
kind: Service
metadata: { name: ${service}, namespace: ${NAMESPACE} }
spec: { selector: { app: ${service} }, ports: [{ name: http, port: 80, targetPort: http }] }
---`;
}

/** Retries a budget allows for `originals` requests spread over `seconds` (every 10 s window has its reserve). */
function budgetBound(originals: number, seconds: number): number {
  return RETRY_RATIO * originals + MIN_RETRIES_PER_SECOND * (seconds + TTL_S);
}

describe("R15: retry budget through 3 layers of meshed callers", () => {
  let services: MeshServices;
  const incoming: Record<Layer, number> = { b: 0, c: 0, d: 0 };
  let failAll = true;
  let bottomCalls = 0;

  beforeAll(async () => {
    services = await startMeshServices({
      namespace: NAMESPACE,
      pods: [
        { name: "a-0", ip: "127.0.0.60", serves: false },
        { name: "b-0", ip: "127.0.0.61", serves: true },
        { name: "c-0", ip: "127.0.0.62", serves: true },
        { name: "d-0", ip: "127.0.0.63", serves: true },
      ],
      extraManifests: () => LAYERS.map(profile).join("\n"),
    });
    const relay =
      (layer: Layer, next: Layer) =>
      (req: IncomingMessage, res: ServerResponse): void => {
        incoming[layer] += 1;
        req.resume();
        services
          .mesh(`${layer}-0`)
          .fetch(`http://${next}.${NAMESPACE}.svc.cluster.local/`)
          .then(async (response) => {
            await response.arrayBuffer();
            res.statusCode = response.status;
            res.end();
          })
          .catch(() => {
            res.statusCode = 502;
            res.end();
          });
      };
    await services.serve("b-0", relay("b", "c"));
    await services.serve("c-0", relay("c", "d"));
    await services.serve("d-0", (req, res) => {
      incoming.d += 1;
      req.resume();
      bottomCalls += 1;
      // Half failing: every other request, so a retry of a failure succeeds when the budget lets it.
      res.statusCode = failAll || bottomCalls % 2 === 0 ? 503 : 200;
      res.end();
    });
  }, 60_000);

  afterAll(async () => {
    await services?.close();
  });

  it(
    "keeps each layer's retries within 20% + 10/s and the attempts at the bottom bounded",
    async () => {
      const client = services.mesh("a-0");
      const url = `http://b.${NAMESPACE}.svc.cluster.local/`;
      const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
      // Warm-up outside the counts: discovery answered and connections open on every hop.
      failAll = false;
      for (let i = 0; i < 5; i += 1) await (await client.fetch(url)).arrayBuffer();
      failAll = true;
      incoming.b = incoming.c = incoming.d = 0;
      await sleep(TTL_S * 1000 + 500); // the warm-up's deposits and withdrawals expire

      interface Phase {
        name: string;
        sent: number;
        ok: number;
        failed: number;
        errors: number;
        latencies: number[];
        firstError?: string;
      }
      const phases: Phase[] = [];
      let phase: Phase = { name: "100% 503", sent: 0, ok: 0, failed: 0, errors: 0, latencies: [] };
      phases.push(phase);
      let sent = 0;
      let skipped = 0;
      let halvedAtMs: number | undefined;
      let succeededWhileAllFailing = 0;
      let inFlight = 0;
      const send = () => {
        if (inFlight >= MAX_IN_FLIGHT) {
          skipped += 1;
          return;
        }
        const counted = phase;
        inFlight += 1;
        sent += 1;
        counted.sent += 1;
        const atMs = performance.now();
        client
          .fetch(url)
          .then(async (response) => {
            await response.arrayBuffer();
            counted.latencies.push(performance.now() - atMs);
            if (response.status === 200 && !halvedAtMs) succeededWhileAllFailing += 1;
            if (response.status === 200) counted.ok += 1;
            else counted.failed += 1;
          })
          .catch((error: unknown) => {
            counted.errors += 1;
            counted.firstError ??= String((error as Error)?.cause ?? error);
          })
          .finally(() => {
            inFlight -= 1;
          });
      };
      const startedAtMs = performance.now();
      const ticker = setInterval(() => {
        const owed =
          Math.floor(((performance.now() - startedAtMs) * RATE_PER_SECOND) / 1000) - sent - skipped;
        for (let i = 0; i < owed; i += 1) send();
      }, 10);
      try {
        await sleep(ALL_FAILING_MS);
        failAll = false;
        halvedAtMs = performance.now();
        phase = { name: "50% 503", sent: 0, ok: 0, failed: 0, errors: 0, latencies: [] };
        phases.push(phase);
        await sleep(HALF_FAILING_MS);
      } finally {
        clearInterval(ticker);
      }
      const loadSeconds = (performance.now() - startedAtMs) / 1000;
      while (inFlight > 0) await sleep(20);

      // Originals and attempts per layer: each handler call sends one original to the next layer.
      const originals = { a: sent, b: incoming.b, c: incoming.c };
      const attempts = { a: incoming.b, b: incoming.c, c: incoming.d };
      const rows = (["a", "b", "c"] as const).map((layer) => {
        const retries = attempts[layer] - originals[layer];
        const bound = budgetBound(originals[layer], loadSeconds);
        return {
          caller: `${layer}-0 → ${String.fromCharCode(layer.charCodeAt(0) + 1)}`,
          originals: originals[layer],
          attempts: attempts[layer],
          retries,
          "retries/originals": retries / originals[layer],
          "budget bound": bound,
          "retries/bound": retries / bound,
        };
      });
      // Without budgets, every retry at one layer is a request the next layer retries too.
      const compounded = sent * (1 + RETRY_RATIO) ** 3;
      let bottomBound = sent;
      for (let layer = 0; layer < 3; layer += 1) bottomBound += budgetBound(bottomBound, loadSeconds);
      printFigures("R15 retry budget, 3 layers of meshed callers", rows);
      printFigures("R15 totals", [
        {
          rate: `${RATE_PER_SECOND}/s`,
          "load (s)": loadSeconds,
          sent,
          skipped,
          "attempts at d": incoming.d,
          "d / sent": incoming.d / sent,
          "(1.2)^3 × sent": compounded,
          "bound at d": bottomBound,
        },
      ]);
      printFigures(
        "R15 what the client saw",
        phases.map(({ latencies, firstError, ...p }) => {
          const sorted = [...latencies].sort((x, y) => x - y);
          return {
            ...p,
            "success rate": p.ok / p.sent,
            "p50 ms": sorted[Math.floor(sorted.length / 2)],
            "p99 ms": sorted[Math.floor(sorted.length * 0.99)],
            "first error": firstError,
          };
        }),
      );

      expect(skipped).toBe(0);
      for (const row of rows) {
        // Within the budget (±5%), and the budget is used: with everything failing, retries are wanted.
        expect(row.retries, `${row.caller}`).toBeLessThanOrEqual(row["budget bound"] * TOLERANCE);
        expect(row.retries, `${row.caller}`).toBeGreaterThan(0.5 * RETRY_RATIO * row.originals);
      }
      expect(incoming.d).toBeLessThanOrEqual(bottomBound * TOLERANCE);
      // While everything fails nothing succeeds; at 50%, retries of the failures make most calls succeed.
      // (Calls sent in the first phase may end in the second: retries queue behind each other.)
      expect(succeededWhileAllFailing).toBe(0);
      expect((phases[1]?.ok ?? 0) / (phases[1]?.sent ?? 1)).toBeGreaterThan(0.3);
    },
    testTimeoutMs(ALL_FAILING_MS + HALF_FAILING_MS + TTL_S * 1000),
  );
});
