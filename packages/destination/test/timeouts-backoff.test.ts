import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  backoffDelayMs,
  computeAttemptDeadline,
  computeRequestDeadline,
  createFailureAccrualGate,
  createRetryBackoff,
  DEFAULT_FAILURE_ACCRUAL,
  DEFAULT_ROUTE_RETRY_BACKOFF,
  decodeGrpcTimeout,
  encodeGrpcTimeout,
  remainingMs,
} from "../src/index.js";
import { createFakeClock, seededRandom } from "./helpers.js";

describe("deadlines", () => {
  it.each([
    { overall: undefined, perTry: undefined, last: false, expected: undefined },
    { overall: 5000, perTry: undefined, last: false, expected: 5000 },
    { overall: undefined, perTry: 300, last: false, expected: 1300 },
    { overall: 5000, perTry: 300, last: false, expected: 1300 },
    { overall: 1100, perTry: 300, last: false, expected: 1100 },
    // The per-try timeout is cleared on the last attempt.
    { overall: 5000, perTry: 300, last: true, expected: 5000 },
    { overall: undefined, perTry: 300, last: true, expected: undefined },
    { overall: 5000, perTry: 0, last: false, expected: 5000 },
  ])(
    "computeAttemptDeadline($overall, $perTry, last=$last) = $expected",
    ({ overall, perTry, last, expected }) => {
      expect(computeAttemptDeadline(overall, perTry, { nowMs: 1000, lastAttempt: last })).toBe(expected);
    },
  );

  it("composes the route's request timeout with the caller's deadline", () => {
    expect(computeRequestDeadline({}, 1000)).toBeUndefined();
    expect(computeRequestDeadline({ requestMs: 500 }, 1000)).toBe(1500);
    expect(computeRequestDeadline({ requestMs: 500 }, 1000, 1200)).toBe(1200);
    expect(computeRequestDeadline({}, 1000, 1200)).toBe(1200);
    expect(remainingMs(1200, 1000)).toBe(200);
    expect(remainingMs(900, 1000)).toBe(0);
    expect(remainingMs(undefined, 1000)).toBeUndefined();
  });
});

describe("grpc-timeout", () => {
  it.each([
    [1, "1000000n"],
    [1500, "1500000u"],
    [100_000, "100000m"],
    [0.0015, "1500n"],
    [200_000_000, "200000S"],
    [0, "0n"],
    [-5, "0n"],
  ])("encodes %d ms as %s", (ms, text) => {
    expect(encodeGrpcTimeout(ms)).toBe(text);
  });

  it.each([
    ["1H", 3_600_000],
    ["2M", 120_000],
    ["3S", 3000],
    ["4m", 4],
    ["5000u", 5],
    ["6000000n", 6],
    ["99999999S", 99_999_999_000],
  ])("decodes %s", (text, ms) => {
    expect(decodeGrpcTimeout(text)).toBeCloseTo(ms, 9);
  });

  it.each(["", "1", "S", "123456789S", "1s", "-1S", "1.5S", "1 S", "1x"])("rejects %j", (text) => {
    expect(decodeGrpcTimeout(text)).toBeUndefined();
  });

  it("round-trips without shortening the deadline by more than rounding (property)", () => {
    fc.assert(
      fc.property(fc.double({ min: 0.000001, max: 1e12, noNaN: true }), (ms) => {
        const text = encodeGrpcTimeout(ms);
        expect(text).toMatch(/^\d{1,8}[HMSmun]$/);
        const decoded = decodeGrpcTimeout(text) as number;
        expect(decoded).toBeGreaterThanOrEqual(ms * (1 - 1e-9));
        expect(decoded).toBeLessThanOrEqual(Math.max(ms * 1.0000001, ms + 3_600_000));
      }),
    );
  });
});

describe("route retry backoff", () => {
  it("grows 25 → 250 ms with up to 100% jitter, capped at 250", () => {
    const random = seededRandom(1);
    const ranges: [number, number][] = [
      [25, 50],
      [50, 100],
      [100, 200],
      [200, 250],
      [250, 250],
      [250, 250],
    ];
    for (let round = 0; round < 50; round += 1) {
      const backoff = createRetryBackoff(DEFAULT_ROUTE_RETRY_BACKOFF, random);
      for (const [min, max] of ranges) {
        const delay = backoff.next();
        expect(delay).toBeGreaterThanOrEqual(min);
        expect(delay).toBeLessThanOrEqual(max);
      }
      expect(backoff.attempts).toBe(6);
    }
    expect(backoffDelayMs(DEFAULT_ROUTE_RETRY_BACKOFF, 1000, () => 0.999)).toBe(250);
    expect(backoffDelayMs({ ...DEFAULT_ROUTE_RETRY_BACKOFF, jitterRatio: 0 }, 0)).toBe(25);
  });
});

describe("createFailureAccrualGate", () => {
  it("closes after maxFailures consecutive failures; a success in between resets the count", () => {
    const clock = createFakeClock();
    const gate = createFailureAccrualGate(DEFAULT_FAILURE_ACCRUAL, { clock, random: () => 0 });
    for (let i = 0; i < 6; i += 1) gate.record("failure", gate.begin());
    gate.record("success", gate.begin());
    expect(gate.consecutiveFailures).toBe(0);
    for (let i = 0; i < 6; i += 1) gate.record("failure", gate.begin());
    expect(gate.state()).toBe("open");
    gate.record("failure", gate.begin());
    expect(gate.state()).toBe("closed");
    expect(gate.isReady()).toBe(false);
    expect(gate.readyInMs()).toBe(1000);
  });

  it("lets exactly one probe through after the backoff; failures double the backoff up to the max", () => {
    const clock = createFakeClock();
    const gate = createFailureAccrualGate(
      {
        maxFailures: 1,
        minReadyEndpoints: 0,
        backoff: { minMs: 1000, maxMs: 5000, jitterRatio: 0, respectRetryAfterHint: false },
      },
      { clock },
    );
    gate.record("failure", gate.begin());
    const expected = [1000, 2000, 4000, 5000, 5000];
    for (const penalty of expected) {
      expect(gate.readyInMs()).toBe(penalty);
      clock.advance(penalty - 1);
      expect(gate.state()).toBe("closed");
      clock.advance(1);
      expect(gate.state()).toBe("probe-ready");
      expect(gate.begin()).toBe(true);
      expect(gate.state()).toBe("probing");
      expect(gate.isReady()).toBe(false);
      expect(gate.begin()).toBe(false);
      gate.record("failure", true);
    }
    // A canceled probe may be retried; a successful one reopens and resets the penalty.
    clock.advance(5000);
    expect(gate.begin()).toBe(true);
    gate.record("canceled", true);
    expect(gate.state()).toBe("probe-ready");
    expect(gate.begin()).toBe(true);
    gate.record("success", true);
    expect(gate.state()).toBe("open");
    gate.record("failure", gate.begin());
    expect(gate.readyInMs()).toBe(1000);
  });

  it("ignores late outcomes of requests sent before the gate closed, and honours canEject", () => {
    const clock = createFakeClock();
    const gate = createFailureAccrualGate(
      {
        maxFailures: 2,
        minReadyEndpoints: 0,
        backoff: { minMs: 100, maxMs: 100, jitterRatio: 0, respectRetryAfterHint: false },
      },
      { clock },
    );
    gate.record("failure", false);
    gate.record("failure", false, () => false);
    expect(gate.state()).toBe("open");
    gate.record("failure", false);
    expect(gate.state()).toBe("closed");
    gate.record("success", false);
    expect(gate.state()).toBe("closed");
  });
});
