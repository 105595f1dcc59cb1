/**
 * Oversized policies (issue 11) from a real grpc-js controller double on loopback: a server message over
 * POLICY_LIMITS (here 14,000 regex routes, ~1 MB) is refused whole before compilation with a typed
 * POLICY_INVALID event, the last good policy stays in force, and the next update that fits applies.
 */
import { MeshErrorCode } from "@inmesh/core";
import { afterEach, describe, expect, it } from "vitest";
import {
  compileServerPolicy,
  createPolicyWatcher,
  POLICY_LIMITS,
  type PolicyWatchEvent,
} from "../src/index.js";
import { authz, facts, httpRouteMsg, MESH, pathRegex, request, SA, serverMsg } from "./builders.js";
import { type ControllerDouble, policyClient, startController } from "./controller-double.js";

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const only = (sa: string) =>
  serverMsg({ name: "web", authorizations: [authz({ name: sa, authn: { identities: [SA(sa)] } })] });
const huge = serverMsg({
  name: "web",
  authorizations: [authz({ name: "all" })],
  protocol: {
    kind: "detect",
    routes: Array.from({ length: 14_000 }, (_, i) =>
      httpRouteMsg({ name: `r${i}`, rules: [{ matches: [pathRegex(`/api/v${i}/([a-z0-9]+/?)+`)] }] }),
    ),
  },
});

describe("policy updates over the caps", () => {
  it("refuses a 14,000-route policy and keeps the last good one", async () => {
    const double: ControllerDouble = await startController((call) => call.write(only("a")));
    cleanups.push(() => double.kill());
    const client = policyClient(double.address);
    cleanups.push(() => client.close());
    const w = createPolicyWatcher({
      client,
      workload: '{"ns":"default","pod":"web-0"}',
      ports: [8080],
      backoff: { minMs: 20, maxMs: 200 },
      maxMessageBytes: 16 * 1024 * 1024,
    });
    cleanups.push(() => w.close());
    const events: PolicyWatchEvent[] = [];
    w.subscribe((event) => events.push(event));
    await w.ready();
    const allowed = (sa: string) =>
      w.policyFor(8080).authorizeHttp(facts(request({ client: MESH("10.0.0.1", SA(sa)) }))).allowed;
    expect(allowed("a")).toBe(true);

    double.calls[0]?.write(huge);
    const deadline = Date.now() + 10_000;
    while (!events.some((e) => e.type === "error") && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const error = events.find((e) => e.type === "error");
    expect(error?.type === "error" && error.error.code).toBe(MeshErrorCode.POLICY_INVALID);
    expect(error?.type === "error" && error.error.message).toMatch(/14000 routes \(limit 1024\)/);
    expect(allowed("a")).toBe(true);
    expect(w.policyFor(8080).status).not.toBe("invalid");

    double.calls[0]?.write(only("b"));
    while (!allowed("b") && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(allowed("b")).toBe(true);
    expect(double.calls).toHaveLength(1);
  }, 30_000);

  it("compiles new regexes a batch per turn, and a newer policy sent meanwhile is the one that stays", async () => {
    const manyRegexes = (seed: string) =>
      serverMsg({
        name: "web",
        authorizations: [authz({ name: "all" })],
        protocol: {
          kind: "detect",
          routes: Array.from({ length: 400 }, (_, i) =>
            httpRouteMsg({ name: `r${i}`, rules: [{ matches: [pathRegex(`/${seed}/v${i}/[a-z]+`)] }] }),
          ),
        },
      });
    const double: ControllerDouble = await startController((call) => call.write(only("a")));
    cleanups.push(() => double.kill());
    const client = policyClient(double.address);
    cleanups.push(() => client.close());
    const w = createPolicyWatcher({
      client,
      workload: "{}",
      ports: [8080],
      backoff: { minMs: 20, maxMs: 200 },
    });
    cleanups.push(() => w.close());
    await w.ready();
    const updates: string[] = [];
    w.subscribe((event) => {
      if (event.type === "updated")
        updates.push(event.policy.authorizeHttp(facts(request({ path: "/new/v7/x" }))).route?.name ?? "-");
    });

    // Applied once its 400 new regexes are compiled, and it routes by them.
    double.calls[0]?.write(manyRegexes("new"));
    const deadline = Date.now() + 10_000;
    while (updates.length === 0 && Date.now() < deadline)
      await new Promise((resolve) => setTimeout(resolve, 5));
    expect(updates).toEqual(["r7"]);

    // A warming policy superseded by a newer one never applies after it.
    double.calls[0]?.write(manyRegexes("other"));
    double.calls[0]?.write(only("b"));
    const allowedB = () =>
      w.policyFor(8080).authorizeHttp(facts(request({ client: MESH("10.0.0.1", SA("b")) }))).allowed;
    while (!allowedB() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5));
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(allowedB()).toBe(true);
    expect(w.policyFor(8080).authorizeHttp(facts(request({ path: "/other/v7/x" }))).route?.name).not.toBe(
      "r7",
    );
  });

  it("compiles an over-cap server directly to the invalid policy (fails closed), naming the cap", () => {
    const policy = compileServerPolicy(huge);
    expect(policy.status).toBe("invalid");
    expect(policy.invalidReason).toContain(`limit ${POLICY_LIMITS.maxRoutes}`);
  });
});
