import { inbound } from "@inmesh/proto";
import { describe, expect, it } from "vitest";
import { clientFacts } from "../src/client.js";
import { compileServerPolicy } from "../src/policy.js";
import type { CompiledServerPolicy, HttpAllowedDecision } from "../src/types.js";
import { authz, MESH, PLAIN, peer, SA, serverMsg } from "./builders.js";

function limitedPolicy(
  limit: Partial<inbound.HttpLocalRateLimit>,
  clock: { now: number },
  maxTracked?: number,
): CompiledServerPolicy {
  const message = serverMsg({ authorizations: [authz({})] });
  if (message.protocol?.kind?.$case !== "detect") throw new Error("detect expected");
  message.protocol.kind.value.httpLocalRateLimit = inbound.HttpLocalRateLimit.fromPartial(limit);
  return compileServerPolicy(message, {
    port: 8080,
    nowMs: () => clock.now,
    ...(maxTracked === undefined ? {} : { rateLimitMaxTrackedIdentities: maxTracked }),
  });
}

const client = (identity?: string) =>
  identity === undefined
    ? clientFacts("10.0.0.1", peer(PLAIN("10.0.0.1")))
    : clientFacts("10.0.0.1", peer(MESH("10.0.0.1", identity)));

function allowed(policy: CompiledServerPolicy): HttpAllowedDecision {
  const decision = policy.authorizeHttp({
    method: "GET",
    authority: "web",
    path: "/",
    query: "",
    headers: {},
    client: client(),
  });
  if (!decision.allowed) throw new Error("expected an allowed decision");
  return decision;
}

describe("local rate limit (HTTPLocalRateLimitPolicy)", () => {
  it("admits rps requests per second with a burst of rps, refilling continuously (governor's GCRA)", () => {
    const clock = { now: 0 };
    const policy = limitedPolicy({ total: { requestsPerSecond: 4 } }, clock);
    const decision = allowed(policy);
    const check = () => policy.rateLimit?.check(decision, client())?.rateLimit.scope ?? "ok";
    expect([check(), check(), check(), check(), check()]).toEqual(["ok", "ok", "ok", "ok", "total"]);
    clock.now += 250; // one request's worth
    expect([check(), check()]).toEqual(["ok", "total"]);
    clock.now += 10_000; // never more than the burst
    expect([check(), check(), check(), check(), check()]).toEqual(["ok", "ok", "ok", "ok", "total"]);
    const refused = policy.rateLimit?.check(decision, client());
    expect(refused).toMatchObject({
      httpStatus: 429,
      grpcStatus: 8,
      message: "total rate limit exceeded: 4rps",
    });
    // The same frozen object each time: nothing is allocated per refused request.
    expect(policy.rateLimit?.check(decision, client())).toBe(refused);
  });

  it("shares one override limiter among its identities, and lower-cases DNS names in overrides", () => {
    const clock = { now: 0 };
    const policy = limitedPolicy(
      {
        identity: { requestsPerSecond: 5 },
        overrides: [
          {
            limit: { requestsPerSecond: 1 },
            clients: { identities: [{ name: SA("a").toUpperCase() }, { name: SA("b") }] },
          },
        ],
      },
      clock,
    );
    const decision = allowed(policy);
    const check = (id?: string) => policy.rateLimit?.check(decision, client(id))?.message ?? "ok";
    expect(check(SA("a"))).toBe("ok");
    expect(check(SA("b"))).toBe("override rate limit exceeded: 1rps");
    expect(check(SA("c"))).toBe("ok");
  });

  it("keeps per-identity state bounded, dropping full buckets first", () => {
    const clock = { now: 0 };
    const policy = limitedPolicy({ identity: { requestsPerSecond: 1 } }, clock, 16);
    const decision = allowed(policy);
    for (let i = 0; i < 1000; i += 1) {
      clock.now += 1;
      expect(policy.rateLimit?.check(decision, client(SA(`id${i}`)))).toBeUndefined();
      expect(policy.rateLimit?.trackedIdentities).toBeLessThanOrEqual(16);
    }
    // The most recent identity is still limited: eviction drops the oldest state first.
    expect(policy.rateLimit?.check(decision, client(SA("id999")))?.reason).toBe("rate-limited");
  });

  it("has no limiter when no limit is set, and none on opaque servers", () => {
    const clock = { now: 0 };
    expect(limitedPolicy({}, clock).rateLimit).toBeUndefined();
    expect(
      compileServerPolicy(serverMsg({ protocol: { kind: "opaque" }, authorizations: [authz({})] })).rateLimit,
    ).toBeUndefined();
  });
});
