// Failure accrual (circuit breaking, issue 13) through the public API: a Service annotated
// `balancer.linkerd.io/failure-accrual: consecutive`, served by the dev control plane, with two meshed
// HTTP endpoints of which one fails. mesh.fetch ejects the failing endpoint after N consecutive
// failures, sends it one probe after each penalty, and takes it back when a probe succeeds.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { type ControlPlane, startControlPlane } from "@inmesh/control-plane";
import { createMesh, type Mesh } from "@inmesh/mesh";
import { freeLoopbackPort } from "@inmesh/testing/ports";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const MAX_FAILURES = 3;
const MIN_PENALTY_MS = 1000;
const MAX_PENALTY_MS = 4000;

function manifests(port: number) {
  const pod = (name: string, app: string, ip: string, serviceAccount: string, ports = true) => `
apiVersion: v1
kind: Pod
metadata:
  name: ${name}
  namespace: shop
  labels: { app: ${app}, solo: ${name === "flaky-0" ? "only" : "no"}, linkerd.io/control-plane-ns: linkerd }
spec:
  serviceAccountName: ${serviceAccount}
  containers: [{ name: app${ports ? `, ports: [{ name: http, containerPort: ${port} }]` : ""} }]
status: { podIP: ${ip} }
---`;
  const service = (name: string, selector: string, annotations: string) => `
apiVersion: v1
kind: Service
metadata:
  name: ${name}
  namespace: shop
  annotations: { ${annotations} }
spec: { selector: { ${selector} }, ports: [{ name: http, port: 80, targetPort: http }] }
---`;
  return [
    {
      path: "accrual.yaml",
      text: `
apiVersion: v1
kind: Namespace
metadata: { name: shop }
---
${pod("flaky-0", "breaker", "127.0.0.21", "backend")}
${pod("steady-0", "breaker", "127.0.0.22", "backend")}
${pod("caller-0", "caller", "127.0.0.23", "caller", false)}
${service(
  "breaker",
  "app: breaker",
  `balancer.linkerd.io/failure-accrual: consecutive,
    balancer.linkerd.io/failure-accrual-consecutive-max-failures: "${MAX_FAILURES}",
    balancer.linkerd.io/failure-accrual-consecutive-min-penalty: ${MIN_PENALTY_MS}ms,
    balancer.linkerd.io/failure-accrual-consecutive-max-penalty: ${MAX_PENALTY_MS}ms,
    balancer.linkerd.io/failure-accrual-consecutive-jitter-ratio: "0"`,
)}
${service("plain", "app: breaker", "")}
${service(
  "solo",
  "solo: only",
  `balancer.linkerd.io/failure-accrual: consecutive,
    balancer.linkerd.io/failure-accrual-consecutive-max-failures: "${MAX_FAILURES}",
    balancer.linkerd.io/failure-accrual-consecutive-min-penalty: ${MIN_PENALTY_MS}ms,
    balancer.linkerd.io/failure-accrual-consecutive-jitter-ratio: "0"`,
)}
`,
    },
  ];
}

interface Hit {
  readonly atMs: number;
  readonly status: number;
}

describe("failure accrual through mesh.fetch (balancer.linkerd.io/failure-accrual)", () => {
  let stateDir: string;
  let controlPlane: ControlPlane;
  const meshes: Mesh[] = [];
  const closers: (() => Promise<void>)[] = [];
  let caller: Mesh;
  let flakyFails = false;
  const hits: Record<"flaky" | "steady", Hit[]> = { flaky: [], steady: [] };

  async function meshFor(pod: string): Promise<Mesh> {
    const { variables } = await controlPlane.writeEnv(pod, { namespace: "shop" });
    const mesh = createMesh({ env: variables, admin: false, tracing: false });
    meshes.push(mesh);
    return mesh;
  }

  async function serve(pod: string, ip: string, port: number, name: "flaky" | "steady") {
    const mesh = await meshFor(pod);
    const server = mesh.createServer(
      (_req, res) => {
        const status = name === "flaky" && flakyFails ? 503 : 200;
        hits[name].push({ atMs: performance.now(), status });
        res.statusCode = status;
        res.end(name);
      },
      { port },
    );
    await server.listen(port, ip);
    closers.push(() => server.close());
  }

  beforeAll(async () => {
    stateDir = await mkdtemp(path.join(tmpdir(), "inmesh-accrual-"));
    // The Service's targetPort names one container port: both pods listen on it, each on its own address.
    const port = await freeLoopbackPort("127.0.0.21");
    controlPlane = await startControlPlane({
      manifests: manifests(port),
      stateDir,
      ports: { identity: 0, destination: 0, policy: 0 },
      watch: false,
    });
    await serve("flaky-0", "127.0.0.21", port, "flaky");
    await serve("steady-0", "127.0.0.22", port, "steady");
    caller = await meshFor("caller-0");
    await Promise.all(meshes.map((mesh) => mesh.ready({ signal: AbortSignal.timeout(20_000) })));
  });

  afterAll(async () => {
    await Promise.allSettled(closers.map((close) => close()));
    await Promise.allSettled(meshes.map((mesh) => mesh.close()));
    await controlPlane?.close();
    await rm(stateDir, { recursive: true, force: true });
  });

  async function call(service: string): Promise<{ status: number; body: string }> {
    const response = await caller.fetch(`http://${service}.shop.svc.cluster.local/`);
    return { status: response.status, body: await response.text() };
  }

  const reset = () => {
    hits.flaky.length = 0;
    hits.steady.length = 0;
  };

  it("ejects the failing endpoint after N consecutive failures, probes it after each penalty, and takes it back", async () => {
    // Both healthy: traffic reaches both endpoints.
    for (let i = 0; i < 40; i += 1) expect((await call("breaker")).status).toBe(200);
    expect(hits.flaky.length).toBeGreaterThan(0);
    expect(hits.steady.length).toBeGreaterThan(0);

    flakyFails = true;
    reset();
    // Until the breaker opens, some calls answer 503; then none does, as only steady-0 is used.
    const statuses: number[] = [];
    // P2C over two endpoints sends sequential calls to the one with the lower estimate until the other's
    // decays below it, so this can take a while.
    const failingBy = performance.now() + 20_000;
    while (hits.flaky.length < MAX_FAILURES && performance.now() < failingBy)
      statuses.push((await call("breaker")).status);
    expect(hits.flaky.length).toBe(MAX_FAILURES);
    expect(statuses.filter((status) => status === 503)).toHaveLength(MAX_FAILURES);
    const ejectedAtMs = (hits.flaky.at(-1) as Hit).atMs;

    // While ejected, every call goes to steady-0 and succeeds; the first probe comes only after the
    // minimum penalty (jitter 0), and it fails, which doubles the penalty.
    let answered = 0;
    while (hits.flaky.length < MAX_FAILURES + 2 && performance.now() - ejectedAtMs < 20_000) {
      const flakyBefore = hits.flaky.length;
      const { status } = await call("breaker");
      if (hits.flaky.length === flakyBefore) {
        expect(status).toBe(200);
        answered += 1;
      } else expect(status).toBe(503);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    expect(hits.flaky.length).toBe(MAX_FAILURES + 2);
    const firstProbe = hits.flaky[MAX_FAILURES] as Hit;
    const secondProbe = hits.flaky[MAX_FAILURES + 1] as Hit;
    const firstPenaltyMs = firstProbe.atMs - ejectedAtMs;
    const secondPenaltyMs = secondProbe.atMs - firstProbe.atMs;
    process.stdout.write(
      `failure accrual: ejected after ${MAX_FAILURES} failures; ${answered} calls served by steady-0 meanwhile; probes after ${firstPenaltyMs.toFixed(0)} ms and ${secondPenaltyMs.toFixed(0)} ms (penalty ${MIN_PENALTY_MS} ms, doubled)\n`,
    );
    expect(answered).toBeGreaterThan(10);
    expect(firstPenaltyMs).toBeGreaterThanOrEqual(MIN_PENALTY_MS - 5);
    expect(secondPenaltyMs).toBeGreaterThanOrEqual(2 * MIN_PENALTY_MS - 5);

    // Recovered: the next probe succeeds and flaky-0 takes traffic again.
    flakyFails = false;
    const recoveredBy = performance.now() + 20_000;
    while (!hits.flaky.some((hit) => hit.status === 200) && performance.now() < recoveredBy) {
      expect((await call("breaker")).status).toBe(200);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    reset();
    const sharedBy = performance.now() + 20_000;
    while (hits.flaky.length <= 5 && performance.now() < sharedBy)
      expect((await call("breaker")).status).toBe(200);
    expect(hits.flaky.length).toBeGreaterThan(5);
  }, 60_000);

  it("without the annotation the failing endpoint is never ejected (the same pods, Service plain)", async () => {
    flakyFails = true;
    reset();
    let failed = 0;
    const until = performance.now() + 20_000;
    while (hits.flaky.length <= MAX_FAILURES + 2 && performance.now() < until)
      if ((await call("plain")).status === 503) failed += 1;
    flakyFails = false;
    // P2C keeps choosing flaky-0 now and then; a breaker would have stopped at MAX_FAILURES.
    expect(hits.flaky.length).toBeGreaterThan(MAX_FAILURES);
    expect(failed).toBe(hits.flaky.length);
  }, 30_000);

  it("a call finding every endpoint ejected waits for the probe, which takes the endpoint back", async () => {
    flakyFails = true;
    reset();
    for (let i = 0; i < MAX_FAILURES; i += 1) expect((await call("solo")).status).toBe(503);
    flakyFails = false;
    const startedAtMs = performance.now();
    // No endpoint is ready: the call waits (within the 3 s fail-fast bound) until the penalty ends and
    // goes out as the probe.
    expect(await call("solo")).toEqual({ status: 200, body: "flaky" });
    const waitedMs = performance.now() - startedAtMs;
    process.stdout.write(
      `failure accrual: a call with every endpoint ejected waited ${waitedMs.toFixed(0)} ms for the probe\n`,
    );
    expect(waitedMs).toBeGreaterThanOrEqual(MIN_PENALTY_MS - 300);
    for (let i = 0; i < 5; i += 1) expect((await call("solo")).status).toBe(200);
  }, 30_000);
});
