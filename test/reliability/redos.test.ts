// ReDoS from control-plane regexes (issue 11): the target's inbound HTTPRoute and the outbound
// HTTPRoute on its Service both match `/api/([a-z0-9]+/?)+$`, which a backtracking engine takes
// exponential time on for `/api/aaaa…a!`. Route matching runs before authorization, so anyone can send
// it. On a linear-time engine the event loop never stalls: legitimate latency stays within the bound.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HOSTILE_ROUTE_REGEX } from "./harness/cluster.js";
import { mib, printFigures, scaled, testTimeoutMs } from "./harness/figures.js";
import { type LatencySummary, latencyBoundMs } from "./harness/legit.js";
import { startLoadChild } from "./harness/load-child.js";
import { connectPlain, http1Status, watch, writeAll } from "./harness/raw.js";
import { type AttackBed, type AttackTarget, expectHealthy, startAttackBed } from "./harness/targets.js";

/** 26 characters that almost match: each extra one doubles a backtracking engine's work. */
const HOSTILE_PATH = `/api/${"a".repeat(26)}!`;
const HOSTILE_REQUESTS = scaled(20, 200);
/** Hostile requests keep coming for at least this long, so the legitimate load samples the whole attack. */
const MIN_ATTACK_MS = scaled(3_000, 60_000);
const LEGIT_RPS = scaled(50, 500);
/** A hostile request is answered like any other; a stalled loop would hold it for seconds. */
const ANSWER_LIMIT_MS = 10_000;

let bed: AttackBed;
let target: AttackTarget;

beforeAll(async () => {
  bed = await startAttackBed();
  target = await bed.startSdk({}, "sdk");
}, 120_000);

afterAll(async () => {
  await bed?.close();
}, 60_000);

/** One plaintext HTTP/1 request; resolves with its status and how long the answer took. */
async function timedRequest(path: string): Promise<{ status: number | undefined; ms: number }> {
  const startedAt = performance.now();
  const socket = await connectPlain({ host: target.child.host, port: target.child.port });
  const watched = watch(socket);
  await writeAll(
    socket,
    Buffer.from(`GET ${path} HTTP/1.1\r\nHost: target\r\nConnection: close\r\n\r\n`, "latin1"),
  );
  await watched.closed(ANSWER_LIMIT_MS);
  socket.destroy();
  return { status: http1Status(watched.received()), ms: performance.now() - startedAt };
}

describe(`ReDoS: ${HOSTILE_ROUTE_REGEX} with ${HOSTILE_PATH.length}-character hostile paths`, () => {
  for (const side of ["inbound", "outbound"] as const) {
    it(
      `${side} route matching does not block the event loop`,
      async () => {
        await target.revive();
        // Outbound: the service calls its own Service through the mesh with the hostile path, so the
        // client-side route match (and then the inbound one) runs in the attacked process.
        const path = side === "inbound" ? HOSTILE_PATH : `/call${HOSTILE_PATH}`;
        const before = target.child.sample();
        // Legitimate load from a process of its own, with its baseline measured just before.
        const load = await startLoadChild(bed.clientEnv, target.loadSpec, LEGIT_RPS, 0);
        const loadRun = load.run();
        const baselineMs = load.baseline.p50Ms;
        const answers: { status: number | undefined; ms: number }[] = [];
        let legit: LatencySummary | undefined;
        try {
          const startedAt = performance.now();
          for (
            let sent = 0;
            sent < HOSTILE_REQUESTS || performance.now() - startedAt < MIN_ATTACK_MS;
            sent += 10
          ) {
            answers.push(...(await Promise.all(Array.from({ length: 10 }, () => timedRequest(path)))));
          }
        } finally {
          load.end();
          legit = await loadRun;
          load.stop();
          const after = target.child.alive() ? target.child.sample() : undefined;
          const slowest = answers.length > 0 ? Math.max(...answers.map((answer) => answer.ms)) : undefined;
          printFigures(`ReDoS, ${side}`, [
            {
              "hostile requests": answers.length,
              statuses: [...new Set(answers.map((answer) => answer.status))].join(" "),
              "slowest hostile ms": slowest,
              "child CPU s": after ? after.cpuSeconds - before.cpuSeconds : undefined,
              "rss after MiB": after ? mib(after.rssBytes) : undefined,
              "legit requests": legit.count,
              "legit failures": legit.failures.length,
              "legit p50 ms": legit.p50Ms,
              "legit p99 ms": legit.p99Ms,
              "baseline p50 ms": baselineMs,
              "bound ms": latencyBoundMs(baselineMs),
            },
          ]);
        }
        expect(target.child.alive(), target.child.describeExit()).toBe(true);
        for (const answer of answers) {
          expect(answer.status, "the hostile path is served by the catch-all route").toBe(200);
          expect(answer.ms).toBeLessThanOrEqual(latencyBoundMs(target.baseline.p50Ms) + 1_000);
        }
        expect(legit.failures).toEqual([]);
        expect(legit.p50Ms).toBeLessThanOrEqual(latencyBoundMs(baselineMs));
        // A stall shows in the tail (a backtracking match holds the loop for seconds): the slowest
        // legitimate requests stay within a second of the bound too.
        expect(legit.p99Ms).toBeLessThanOrEqual(latencyBoundMs(baselineMs) + 1_000);
        await expectHealthy(target, `${side} ReDoS`);
      },
      testTimeoutMs(MIN_ATTACK_MS + 20_000),
    );
  }
});
