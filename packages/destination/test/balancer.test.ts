import { isMeshError, MeshErrorCode } from "@inmesh/core";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { type Balancer, createBalancer, createEndpointSet, type Endpoint, type Pick } from "../src/index.js";
import { createFakeClock, type FakeClock, seededRandom } from "./helpers.js";

const ep = (address: string) => ({ address });

interface Simulation {
  balancer: Balancer<{ address: string }>;
  clock: FakeClock;
  /** Runs `durationMs` of 1 request per ms; returns picks per address. */
  run(durationMs: number, latencyOf: (address: string) => number): Map<string, number>;
}

/**
 * A discrete-event simulation: one request per simulated millisecond, each answered after the latency
 * of the endpoint it went to. No real time passes.
 */
function simulate(balancer: Balancer<{ address: string }>, clock: FakeClock): Simulation {
  const due = new Map<number, Pick<{ address: string }>[]>();
  return {
    balancer,
    clock,
    run(durationMs, latencyOf) {
      const counts = new Map<string, number>();
      const end = clock.now() + durationMs;
      for (let t = clock.now(); t < end; t += 1) {
        clock.set(t);
        for (const pick of due.get(t) ?? []) {
          pick.onFirstByte();
          pick.onComplete("success");
        }
        due.delete(t);
        const pick = balancer.pick();
        counts.set(pick.endpoint.address, (counts.get(pick.endpoint.address) ?? 0) + 1);
        const at = t + Math.max(1, Math.round(latencyOf(pick.endpoint.address)));
        const list = due.get(at) ?? [];
        list.push(pick);
        due.set(at, list);
      }
      clock.set(end);
      return counts;
    },
  };
}

describe("createBalancer (peak-EWMA P2C)", () => {
  it("throws MESH_ERR_DESTINATION_NO_ENDPOINTS with no endpoints, and tryPick returns undefined", () => {
    const balancer = createBalancer();
    expect(balancer.tryPick()).toBeUndefined();
    try {
      balancer.pick();
      expect.unreachable();
    } catch (error) {
      expect(isMeshError(error) && error.code).toBe(MeshErrorCode.DESTINATION_NO_ENDPOINTS);
      expect((error as Error).name).toBe("DestinationError");
    }
  });

  it("uses the only endpoint, and accepts an EndpointSet", () => {
    const endpoint = { address: "10.0.0.1:80" } as Endpoint;
    const balancer = createBalancer<Endpoint>({ endpoints: createEndpointSet(true, [endpoint]) });
    expect(balancer.pick().endpoint).toBe(endpoint);
    balancer.update(createEndpointSet(false, []));
    expect(balancer.size()).toBe(0);
  });

  it("prefers the endpoint with fewer pending requests when RTTs are equal", () => {
    const clock = createFakeClock();
    const balancer = createBalancer({ clock, random: seededRandom(1), endpoints: [ep("a:1"), ep("b:1")] });
    const first = balancer.pick();
    // With one pending request, every further pick goes to the other endpoint until it completes.
    for (let i = 0; i < 20; i += 1) {
      const pick = balancer.pick();
      expect(pick.endpoint.address).not.toBe(first.endpoint.address);
      pick.onComplete("success");
    }
  });

  it("tracks load until the first byte, then keeps the RTT it measured", () => {
    const clock = createFakeClock();
    const balancer = createBalancer({ clock, endpoints: [ep("a:1")], defaultRttMs: 30, decayMs: 10_000 });
    const pick = balancer.pick();
    expect(balancer.loads()[0]).toMatchObject({ pending: 1, rttMs: 30, load: 60 });
    clock.advance(100);
    pick.onFirstByte();
    // A sample above the estimate replaces it (the "peak").
    expect(balancer.loads()[0]?.pending).toBe(0);
    expect(balancer.loads()[0]?.rttMs).toBeCloseTo(100, 5);
    clock.advance(500);
    pick.onComplete("success"); // the response body lasting long does not count
    expect(balancer.loads()[0]?.rttMs).toBeCloseTo(100 * Math.exp(-500 / 10_000), 5);
    // Idle, the estimate decays towards zero.
    clock.advance(10_000);
    expect(balancer.loads()[0]?.rttMs).toBeCloseTo(100 * Math.exp(-10_500 / 10_000), 5);
  });

  it("measures the RTT from when the request was written, not from the pick (connect time excluded)", () => {
    const clock = createFakeClock();
    const balancer = createBalancer({ clock, endpoints: [ep("a:1")], defaultRttMs: 1, decayMs: 10_000 });
    const pick = balancer.pick();
    clock.advance(400); // a TLS handshake on a loaded machine, or a queue for a new connection
    pick.onSent();
    expect(balancer.loads()[0]?.pending).toBe(1); // still pending while connecting and after
    clock.advance(3);
    pick.onSent(); // idempotent: a second call does not move the start
    pick.onFirstByte();
    expect(balancer.loads()[0]?.rttMs).toBeCloseTo(3, 5);
    // Without onSent (an error before any write) the pick's own start counts.
    const unsent = balancer.pick();
    clock.advance(50);
    unsent.onComplete("failure");
    expect(balancer.loads()[0]?.rttMs).toBeCloseTo(50, 5);
  });

  it("R16: a slow endpoint's share falls below 10% within 5 s and recovers within 30 s", () => {
    const clock = createFakeClock();
    const balancer = createBalancer({
      clock,
      random: seededRandom(42),
      endpoints: [ep("a:1"), ep("b:1"), ep("c:1")],
    });
    const sim = simulate(balancer, clock);
    const base = (_address: string) => 5;
    const slowC = (address: string) => (address === "c:1" ? 55 : 5);
    const share = (counts: Map<string, number>, address: string) => {
      let total = 0;
      for (const n of counts.values()) total += n;
      return (counts.get(address) ?? 0) / total;
    };

    // Healthy: roughly even.
    const healthy = sim.run(5_000, base);
    expect(share(healthy, "c:1")).toBeGreaterThan(0.25);

    // +50 ms on c: its share over the fifth second of the fault is below 10 %.
    sim.run(4_000, slowC);
    const fifthSecond = sim.run(1_000, slowC);
    expect(share(fifthSecond, "c:1")).toBeLessThan(0.1);

    // Fault cleared: within 30 s c is back to a fair share.
    sim.run(29_000, base);
    const recovered = sim.run(1_000, base);
    expect(share(recovered, "c:1")).toBeGreaterThan(0.2);
  });

  it("drains removed endpoints: in-flight picks complete, no new picks go there", () => {
    const clock = createFakeClock();
    const balancer = createBalancer({
      clock,
      random: seededRandom(7),
      endpoints: [ep("a:1"), ep("b:1")],
      failureAccrual: {
        kind: "consecutive",
        maxFailures: 1,
        minReadyEndpoints: 0,
        backoff: { minMs: 1000, maxMs: 1000, jitterRatio: 0, respectRetryAfterHint: false },
      },
    });
    const inflight: Pick<{ address: string }>[] = [];
    for (let i = 0; i < 10; i += 1) inflight.push(balancer.pick());
    expect(inflight.some((pick) => pick.endpoint.address === "a:1")).toBe(true);
    balancer.update([ep("b:1")]);
    for (const pick of inflight) {
      pick.onFirstByte();
      pick.onComplete("failure");
    }
    // The failure on removed a:1 cannot eject anything; b:1 was ejected by its own failures.
    expect(balancer.loads().map((l) => l.address)).toEqual(["b:1"]);
    balancer.update([ep("a:1"), ep("b:1")]);
    // a:1 comes back fresh: open, default RTT, nothing pending.
    expect(balancer.loads().find((l) => l.address === "a:1")).toMatchObject({
      pending: 0,
      rttMs: 30,
      gate: "open",
    });
    for (let i = 0; i < 10; i += 1) expect(balancer.pick().endpoint.address).toBe("a:1");
  });

  it("ejects an endpoint after consecutive failures, probes it after the backoff, and reopens on success", () => {
    const clock = createFakeClock();
    const balancer = createBalancer({
      clock,
      random: seededRandom(3),
      endpoints: [ep("bad:1"), ep("good:1")],
      failureAccrual: {
        kind: "consecutive",
        maxFailures: 7,
        minReadyEndpoints: 0,
        backoff: { minMs: 1000, maxMs: 60_000, jitterRatio: 0.5, respectRetryAfterHint: false },
      },
    });
    let failures = 0;
    for (let i = 0; i < 200 && balancer.readyCount() === 2; i += 1) {
      const pick = balancer.pick();
      const bad = pick.endpoint.address === "bad:1";
      if (bad) failures += 1;
      pick.onComplete(bad ? "failure" : "success");
    }
    expect(failures).toBe(7);
    expect(balancer.loads().find((l) => l.address === "bad:1")?.gate).toBe("closed");
    for (let i = 0; i < 50; i += 1) {
      const pick = balancer.pick();
      expect(pick.endpoint.address).toBe("good:1");
      pick.onComplete("success");
    }
    const wait = balancer.loads().length && balancer.nextReadyInMs();
    expect(wait).toBe(0); // good:1 is ready, so something is ready now
    clock.advance(1500); // the first penalty is 1 s plus up to 50 % jitter
    expect(balancer.readyCount()).toBe(2);
    // Exactly one probe goes to bad:1.
    let probe: Pick<{ address: string }> | undefined;
    for (let i = 0; i < 200 && !probe; i += 1) {
      const pick = balancer.pick();
      if (pick.endpoint.address === "bad:1") probe = pick;
      else pick.onComplete("success");
    }
    expect(probe).toBeDefined();
    expect(balancer.loads().find((l) => l.address === "bad:1")?.gate).toBe("probing");
    for (let i = 0; i < 20; i += 1) expect(balancer.pick().endpoint.address).toBe("good:1");
    // A failed probe closes it again with a doubled penalty (2–3 s).
    probe?.onComplete("failure");
    expect(balancer.loads().find((l) => l.address === "bad:1")?.gate).toBe("closed");
    clock.advance(1999);
    expect(balancer.readyCount()).toBe(1);
    clock.advance(1001);
    expect(balancer.readyCount()).toBe(2);
    // A successful probe reopens it.
    let second: Pick<{ address: string }> | undefined;
    for (let i = 0; i < 200 && !second; i += 1) {
      const pick = balancer.pick();
      if (pick.endpoint.address === "bad:1") second = pick;
    }
    second?.onComplete("success");
    expect(balancer.loads().find((l) => l.address === "bad:1")?.gate).toBe("open");
  });

  it("never picks an ejected endpoint among many, spreading picks over the ready ones (sampled P2C)", () => {
    const clock = createFakeClock();
    const endpoints = Array.from({ length: 200 }, (_, i) => ep(`10.0.0.${i}:80`));
    const balancer = createBalancer({
      clock,
      random: seededRandom(11),
      endpoints,
      failureAccrual: {
        kind: "consecutive",
        maxFailures: 1,
        minReadyEndpoints: 0,
        backoff: { minMs: 60_000, maxMs: 60_000, jitterRatio: 0, respectRetryAfterHint: false },
      },
    });
    // Eject every endpoint but the first ten, whichever the picks land on.
    const keep = new Set(endpoints.slice(0, 10).map((e) => e.address));
    for (let i = 0; i < 20_000 && balancer.readyCount() > 10; i += 1) {
      const pick = balancer.pick();
      pick.onComplete(keep.has(pick.endpoint.address) ? "success" : "failure");
    }
    expect(balancer.readyCount()).toBe(10);
    const counts = new Map<string, number>();
    for (let i = 0; i < 5_000; i += 1) {
      const pick = balancer.pick();
      counts.set(pick.endpoint.address, (counts.get(pick.endpoint.address) ?? 0) + 1);
      pick.onComplete("success");
    }
    expect([...counts.keys()].every((address) => keep.has(address))).toBe(true);
    expect(counts.size).toBe(10);
    // Mostly ready (one ejected of 200): picks go through the sampling path and still skip it.
    const mostly = createBalancer({
      clock,
      random: seededRandom(5),
      endpoints,
      failureAccrual: {
        kind: "consecutive",
        maxFailures: 1,
        minReadyEndpoints: 0,
        backoff: { minMs: 60_000, maxMs: 60_000, jitterRatio: 0, respectRetryAfterHint: false },
      },
    });
    const first = mostly.pick();
    const ejected = first.endpoint.address;
    first.onComplete("failure");
    expect(mostly.readyCount()).toBe(199);
    for (let i = 0; i < 5_000; i += 1) {
      const pick = mostly.pick();
      expect(pick.endpoint.address).not.toBe(ejected);
      pick.onComplete("success");
    }
  });

  it("reports when an all-ejected set becomes ready again", () => {
    const clock = createFakeClock();
    const balancer = createBalancer({
      clock,
      random: seededRandom(5),
      endpoints: [ep("a:1")],
      failureAccrual: {
        maxFailures: 1,
        minReadyEndpoints: 0,
        backoff: { minMs: 1000, maxMs: 1000, jitterRatio: 0, respectRetryAfterHint: false },
      },
    });
    balancer.pick().onComplete("failure");
    expect(balancer.readyCount()).toBe(0);
    expect(balancer.tryPick()).toBeUndefined();
    expect(balancer.nextReadyInMs()).toBe(1000);
    clock.advance(400);
    expect(balancer.nextReadyInMs()).toBe(600);
    expect(() => balancer.pick()).toThrow(/ejected/);
  });

  it("respects EjectionConfig.min_ready_endpoints", () => {
    const balancer = createBalancer({
      clock: createFakeClock(),
      random: seededRandom(9),
      endpoints: [ep("a:1"), ep("b:1"), ep("c:1")],
      failureAccrual: {
        kind: "consecutive",
        maxFailures: 2,
        minReadyEndpoints: 2,
        backoff: { minMs: 1000, maxMs: 1000, jitterRatio: 0, respectRetryAfterHint: false },
      },
    });
    for (let i = 0; i < 300; i += 1) balancer.pick().onComplete("failure");
    // Everything fails, but only one endpoint may be ejected while two must stay ready.
    expect(balancer.readyCount()).toBe(2);
  });

  it("keeps pending counts consistent for any sequence of updates, picks and completions (property)", () => {
    const addresses = ["a:1", "b:1", "c:1", "d:1"];
    fc.assert(
      fc.property(
        fc.array(
          fc.oneof(
            fc.subarray(addresses).map((set) => ({ op: "update" as const, set })),
            fc.constant({ op: "pick" as const }),
            fc.nat(50).map((index) => ({ op: "first-byte" as const, index })),
            fc
              .record({ index: fc.nat(50), outcome: fc.constantFrom("success", "failure", "canceled") })
              .map((r) => ({
                op: "complete" as const,
                ...r,
              })),
            fc.integer({ min: 1, max: 5000 }).map((ms) => ({ op: "advance" as const, ms })),
          ),
          { maxLength: 300 },
        ),
        fc.integer(),
        (ops, seed) => {
          const clock = createFakeClock();
          const balancer = createBalancer({
            clock,
            random: seededRandom(seed),
            endpoints: addresses.map(ep),
            failureAccrual: {
              maxFailures: 2,
              minReadyEndpoints: 1,
              backoff: { minMs: 100, maxMs: 1000, jitterRatio: 0.5, respectRetryAfterHint: false },
            },
          });
          let current = new Set(addresses);
          const picks: Pick<{ address: string }>[] = [];
          for (const op of ops) {
            if (op.op === "update") {
              current = new Set(op.set);
              balancer.update(op.set.map(ep));
            } else if (op.op === "pick") {
              const pick = balancer.tryPick();
              if (pick) {
                expect(current.has(pick.endpoint.address)).toBe(true);
                picks.push(pick);
              }
            } else if (op.op === "first-byte") {
              picks[op.index]?.onFirstByte();
            } else if (op.op === "complete") {
              picks[op.index]?.onComplete(op.outcome);
            } else {
              clock.advance(op.ms);
            }
            for (const load of balancer.loads()) {
              expect(load.pending).toBeGreaterThanOrEqual(0);
              expect(Number.isFinite(load.load)).toBe(true);
            }
          }
          for (const pick of picks) pick.onComplete("canceled");
          for (const load of balancer.loads()) expect(load.pending).toBe(0);
        },
      ),
      { numRuns: 200, interruptAfterTimeLimit: 10_000 },
    );
  });
});

describe("Balancer.setFailureAccrual (an OutboundPolicy update)", () => {
  const consecutive = (maxFailures: number) =>
    ({
      kind: "consecutive",
      maxFailures,
      minReadyEndpoints: 0,
      backoff: { minMs: 1000, maxMs: 60_000, jitterRatio: 0, respectRetryAfterHint: false },
    }) as const;

  /** Fails `bad:1` until it is ejected; returns how many failures that took. */
  function failUntilEjected(balancer: Balancer<{ address: string }>): number {
    let failures = 0;
    for (let i = 0; i < 500 && balancer.readyCount() === 2; i += 1) {
      const pick = balancer.pick();
      const bad = pick.endpoint.address === "bad:1";
      if (bad) failures += 1;
      pick.onComplete(bad ? "failure" : "success");
    }
    return failures;
  }

  it("turns breaking on, keeps breakers for the same settings, and starts afresh for new ones", () => {
    const clock = createFakeClock();
    const balancer = createBalancer({
      clock,
      random: seededRandom(5),
      endpoints: [ep("bad:1"), ep("good:1")],
    });
    // Off by default: failures never eject.
    expect(failUntilEjected(balancer)).toBeGreaterThan(100);
    expect(balancer.readyCount()).toBe(2);

    balancer.setFailureAccrual(consecutive(3));
    expect(failUntilEjected(balancer)).toBe(3);
    expect(balancer.loads().find((l) => l.address === "bad:1")?.gate).toBe("closed");

    // The same settings again (every policy update repeats them): the ejection stands.
    balancer.setFailureAccrual(consecutive(3));
    expect(balancer.readyCount()).toBe(1);

    // New settings: every endpoint starts open, and the new threshold applies.
    balancer.setFailureAccrual(consecutive(5));
    expect(balancer.readyCount()).toBe(2);
    expect(failUntilEjected(balancer)).toBe(5);

    // Off again: nothing is ejected.
    balancer.setFailureAccrual({ kind: "none" });
    expect(balancer.readyCount()).toBe(2);
    expect(balancer.loads().every((l) => l.gate === "open")).toBe(true);
  });

  it("does not carry an outcome across a settings change (the pick began on the old breaker)", () => {
    const clock = createFakeClock();
    const balancer = createBalancer({
      clock,
      random: seededRandom(9),
      endpoints: [ep("bad:1")],
      failureAccrual: consecutive(1),
    });
    const pick = balancer.pick();
    balancer.setFailureAccrual(consecutive(2));
    pick.onComplete("failure");
    expect(balancer.readyCount()).toBe(1);
    expect(() => createBalancer({ failureAccrual: consecutive(0) })).toThrow(/maxFailures/);
    expect(() => balancer.setFailureAccrual(consecutive(0))).toThrow(/maxFailures/);
  });
});
