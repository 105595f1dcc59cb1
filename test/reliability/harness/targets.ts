// The attacked servers (each a child process running built dist) and, for each, the legitimate client
// whose requests must still succeed promptly after every attack.

import type { Mesh } from "@inmesh/mesh";
import { expect } from "vitest";
import { assertBuilt, type ProcessSample, type ServiceChild, startServiceChild } from "./child.js";
import {
  CLIENT_POD,
  type Cluster,
  NAMESPACE,
  SECOND_TARGET_POD,
  SERVICE_OF_POD,
  startCluster,
  TARGET_POD,
} from "./cluster.js";
import {
  type LatencySummary,
  type LegitClient,
  latencyBoundMs,
  measureBaseline,
  measureSequential,
  meshGrpcAuthorsClient,
  meshHttpClient,
  startClientMesh,
} from "./legit.js";
import type { LoadSpec } from "./load-child.js";
import { sleep } from "./raw.js";

export interface AttackTarget {
  /** What the tables call it: "sdk", "web (Express)"… */
  readonly name: string;
  /** The running child; replaced by `revive()`. */
  child: ServiceChild;
  /** The server's mesh identity: the SNI an attacker uses to get TLS terminated. */
  readonly identity: string;
  readonly legit: LegitClient;
  /** The same legitimate request, for a load process (servers/load.mjs). */
  readonly loadSpec: LoadSpec;
  /** Legitimate latency before any attack, measured in this run. */
  baseline: LatencySummary;
  /**
   * Starts a new child when an earlier attack killed this one (that test already failed), so each test
   * judges its own attack. Resolves to whether a restart was needed.
   */
  revive(): Promise<boolean>;
}

export interface HealthCheck {
  readonly alive: boolean;
  readonly legit: LatencySummary;
  readonly boundMs: number;
  readonly sample: ProcessSample | undefined;
}

/** How long a crash gets to surface before the process is checked. */
const SETTLE_MS = 300;
const CHECK_REQUESTS = 5;

/**
 * After an attack: the process is alive, legitimate requests succeed, and their p50 stays within
 * 10× the baseline + 200 ms. Returns the figures for the table.
 */
export async function expectHealthy(target: AttackTarget, attack: string): Promise<HealthCheck> {
  await sleep(SETTLE_MS);
  const alive = target.child.alive();
  expect(alive, `${target.name} after ${attack}: ${target.child.describeExit()}`).toBe(true);
  const legit = await measureSequential(target.legit, CHECK_REQUESTS);
  const boundMs = latencyBoundMs(target.baseline.p50Ms);
  expect(
    legit.failures,
    `${target.name} after ${attack}: legitimate requests failed; its stderr ends:\n${target.child.stderr().slice(-2000)}`,
  ).toEqual([]);
  expect(
    legit.p50Ms,
    `${target.name} after ${attack}: legitimate p50 ${legit.p50Ms.toFixed(1)} ms, baseline ${target.baseline.p50Ms.toFixed(1)} ms`,
  ).toBeLessThanOrEqual(boundMs);
  return { alive, legit, boundMs, sample: target.child.sample() };
}

export const BUILT_FOR_SDK = ["packages/mesh/dist/index.js", "packages/http/dist/index.js"];
export const BUILT_FOR_EXAMPLES = [
  "examples/web/dist/server.js",
  "examples/books/dist/server.js",
  "examples/authors/dist/server.js",
];

/** A control plane and the legitimate client's mesh; children are started per test file. */
export interface AttackBed {
  readonly cluster: Cluster;
  readonly client: Mesh;
  /** The legitimate client pod's variables, for load processes. */
  readonly clientEnv: Record<string, string>;
  readonly children: ServiceChild[];
  /** The SDK service (servers/sdk-server.mjs) with `options` merged into its createServer options. */
  startSdk(options?: Record<string, unknown>, name?: string, pod?: string): Promise<AttackTarget>;
  /** The example services (web, books ×2, authors), as the demo runs them; web needs books and authors. */
  startExamples(): Promise<AttackTarget[]>;
  close(): Promise<void>;
}

async function targetOf(
  name: string,
  child: ServiceChild,
  legit: LegitClient,
  loadSpec: LoadSpec,
  start: () => Promise<ServiceChild>,
): Promise<AttackTarget> {
  const target: AttackTarget = {
    name,
    child,
    identity: child.ready.identity,
    legit,
    loadSpec,
    baseline: await measureBaseline(legit),
    async revive() {
      if (target.child.alive()) return false;
      target.child = await start();
      // Discovery notices the new process through failed connections: wait until requests pass again.
      const deadline = performance.now() + 20_000;
      while (performance.now() < deadline) {
        const probe = await measureSequential(legit, 1);
        if (probe.failures.length === 0) break;
        await sleep(200);
      }
      target.baseline = await measureBaseline(legit);
      return true;
    },
  };
  return target;
}

export async function startAttackBed(): Promise<AttackBed> {
  const cluster = await startCluster();
  const children: ServiceChild[] = [];
  const closers: (() => void)[] = [];
  let client: Mesh;
  let clientEnv: Record<string, string>;
  try {
    clientEnv = await cluster.envFor(CLIENT_POD);
    client = await startClientMesh(clientEnv);
  } catch (error) {
    await cluster.close();
    throw error;
  }
  const bed: AttackBed = {
    cluster,
    client,
    clientEnv,
    children,
    async startSdk(options = {}, name = "sdk", pod = TARGET_POD) {
      assertBuilt(BUILT_FOR_SDK);
      const start = async () => {
        const env = await cluster.envFor(pod, { ATTACK_SERVER_OPTIONS: JSON.stringify(options) });
        const child = await startServiceChild(name, "test/reliability/servers/sdk-server.mjs", env, {
          memoryProbe: true,
        });
        children.push(child);
        return child;
      };
      const url = `http://${SERVICE_OF_POD[pod]}/`;
      const legit = meshHttpClient(client, `${name} GET /`, url);
      return targetOf(name, await start(), legit, { kind: "http", url }, start);
    },
    async startExamples() {
      assertBuilt(BUILT_FOR_EXAMPLES);
      const specs = [
        { pod: "authors-0", script: "examples/authors/dist/server.js", env: {} },
        { pod: "books-0", script: "examples/books/dist/server.js", env: {} },
        { pod: "books-flaky-0", script: "examples/books/dist/server.js", env: { BOOKS_FLAKY: "true" } },
        { pod: "web-0", script: "examples/web/dist/server.js", env: {} },
      ];
      const starters = new Map(
        specs.map((spec) => [
          spec.pod,
          async () => {
            const child = await startServiceChild(
              spec.pod,
              spec.script,
              await cluster.envFor(spec.pod, spec.env),
              { memoryProbe: true },
            );
            children.push(child);
            return child;
          },
        ]),
      );
      const started = await Promise.all([...starters.values()].map((start) => start()));
      const byPod = new Map(specs.map((spec, index) => [spec.pod, started[index] as ServiceChild]));
      const authors = meshGrpcAuthorsClient(client, `authors.${NAMESPACE}.svc.cluster.local:50051`);
      closers.push(() => authors.close());
      const webUrl = `http://web.${NAMESPACE}.svc.cluster.local/`;
      const booksUrl = `http://books.${NAMESPACE}.svc.cluster.local/books`;
      const authorsTarget = `authors.${NAMESPACE}.svc.cluster.local:50051`;
      const targets: { name: string; pod: string; legit: LegitClient; loadSpec: LoadSpec }[] = [
        {
          name: "web (Express)",
          pod: "web-0",
          legit: meshHttpClient(client, "web GET /", webUrl),
          loadSpec: { kind: "http", url: webUrl },
        },
        {
          name: "books (Fastify)",
          pod: "books-0",
          // Reads are balanced over both replicas: an attack on books-0 shows in half of them.
          legit: meshHttpClient(client, "books GET /books", booksUrl),
          loadSpec: { kind: "http", url: booksUrl },
        },
        {
          name: "authors (grpc-js)",
          pod: "authors-0",
          legit: authors,
          loadSpec: { kind: "grpc", target: authorsTarget },
        },
      ];
      const result: AttackTarget[] = [];
      for (const spec of targets) {
        const start = starters.get(spec.pod) as () => Promise<ServiceChild>;
        result.push(
          await targetOf(spec.name, byPod.get(spec.pod) as ServiceChild, spec.legit, spec.loadSpec, start),
        );
      }
      return result;
    },
    async close() {
      for (const close of closers) close();
      await Promise.allSettled(children.map((child) => child.stop()));
      await client.close();
      await cluster.close();
    },
  };
  return bed;
}

/** Every attacked server: the SDK service, plain and with http2Compat, then the examples. */
export async function startEveryTarget(bed: AttackBed): Promise<AttackTarget[]> {
  return [
    await bed.startSdk({}, "sdk"),
    await bed.startSdk({ http2Compat: true }, "sdk (http2Compat)", SECOND_TARGET_POD),
    ...(await bed.startExamples()),
  ];
}
