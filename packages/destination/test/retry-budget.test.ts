import { isMeshError, MeshErrorCode } from "@inmesh/core";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { createRetryBudget } from "../src/index.js";
import { createFakeClock } from "./helpers.js";

describe("createRetryBudget (Tower TpsBudget)", () => {
  it("allows minRetriesPerSecond × ttl retries with no traffic at all (the reserve)", () => {
    const clock = createFakeClock();
    const budget = createRetryBudget({ clock });
    let granted = 0;
    for (let i = 0; i < 1000 && budget.tryWithdraw(); i += 1) granted += 1;
    expect(granted).toBe(100); // 10/s over a 10 s ttl
    expect(budget.tryWithdraw()).toBe(false);
  });

  it("R15: under steady traffic that always fails, retries stay at 20% of requests + 10/s (deposits live the whole ttl)", () => {
    const clock = createFakeClock();
    const budget = createRetryBudget({ clock });
    const seconds = 60;
    let requests = 0;
    let retries = 0;
    // 1,000 requests a second, each retried for as long as the budget allows (ServiceProfile retries
    // have no other limit), with a little jitter so no expiry falls exactly on a window boundary.
    for (let t = 0; t < seconds * 1000; t += 1 + (requests % 7 === 0 ? 0.013 : 0)) {
      clock.set(t);
      budget.deposit();
      requests += 1;
      while (budget.tryWithdraw()) retries += 1;
    }
    const allowed = 0.2 * requests + 10 * (seconds + 10); // the reserve once more for the first ttl
    expect(retries).toBeLessThanOrEqual(allowed);
    // And the budget is not stingier than that: within 5% of 20% + 10/s.
    expect(retries).toBeGreaterThanOrEqual(0.95 * (0.2 * requests + 10 * seconds));
  });

  it("adds retryRatio retries per deposited request", () => {
    const clock = createFakeClock();
    const budget = createRetryBudget({ clock, retryRatio: 0.2, minRetriesPerSecond: 0, ttlMs: 10_000 });
    for (let i = 0; i < 1000; i += 1) budget.deposit();
    expect(budget.available()).toBe(200);
    let granted = 0;
    while (granted < 10_000 && budget.tryWithdraw()) granted += 1;
    expect(granted).toBe(200);
  });

  it("treats the float 0.2 as exactly 5 withdrawals per deposit, as Tower's f32 maths does", () => {
    const budget = createRetryBudget({
      clock: createFakeClock(),
      retryRatio: Math.fround(0.2),
      minRetriesPerSecond: 0,
    });
    for (let i = 0; i < 5; i += 1) budget.deposit();
    expect(budget.tryWithdraw()).toBe(true);
    expect(budget.tryWithdraw()).toBe(false);
  });

  it("supports ratios above 1 (up to 1000 retries per request)", () => {
    const budget = createRetryBudget({ clock: createFakeClock(), retryRatio: 3, minRetriesPerSecond: 0 });
    budget.deposit();
    expect(budget.available()).toBe(3);
  });

  it("forgets deposits and withdrawals older than the ttl", () => {
    const clock = createFakeClock();
    const budget = createRetryBudget({ clock, minRetriesPerSecond: 0 });
    for (let i = 0; i < 100; i += 1) budget.deposit();
    expect(budget.available()).toBe(20);
    clock.advance(5_000);
    expect(budget.available()).toBe(20);
    clock.advance(6_000);
    expect(budget.available()).toBe(0);
    // The reserve comes back after withdrawals age out, too.
    const withReserve = createRetryBudget({ clock });
    while (withReserve.tryWithdraw()) {}
    expect(withReserve.available()).toBe(0);
    clock.advance(11_000);
    expect(withReserve.available()).toBe(100);
  });

  it("rejects invalid parameters with MESH_ERR_INVALID_ARG", () => {
    for (const options of [
      { ttlMs: 500 },
      { ttlMs: 61_000 },
      { retryRatio: -1 },
      { retryRatio: 1001 },
      { minRetriesPerSecond: -1 },
    ]) {
      try {
        createRetryBudget(options);
        expect.unreachable();
      } catch (error) {
        expect(isMeshError(error) && error.code).toBe(MeshErrorCode.INVALID_ARG);
      }
    }
  });

  it("R15: under 100% failure at 1000 RPS for 60 s, retries stay within 20% of requests + 10/s (±5%)", () => {
    const clock = createFakeClock();
    const budget = createRetryBudget({ clock });
    let requests = 0;
    let retries = 0;
    for (let ms = 0; ms < 60_000; ms += 1) {
      clock.set(ms);
      requests += 1;
      budget.deposit();
      // Every attempt fails; the request is retried for as long as the budget allows.
      for (let attempt = 0; attempt < 1000 && budget.tryWithdraw(); attempt += 1) retries += 1;
    }
    const allowed = 0.2 * requests + 10 * 60;
    expect(retries).toBeLessThanOrEqual(allowed * 1.05);
    expect(retries).toBeGreaterThanOrEqual(allowed * 0.95);
  });

  it("never grants more than ratio × deposits + the reserve per elapsed ttl (property)", () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.oneof(
            fc.constant({ op: "deposit" as const }),
            fc.constant({ op: "withdraw" as const }),
            fc.integer({ min: 1, max: 3000 }).map((ms) => ({ op: "advance" as const, ms })),
          ),
          { maxLength: 2000 },
        ),
        fc.constantFrom(0, 0.1, 0.2, 0.5, 1),
        fc.integer({ min: 0, max: 20 }),
        (ops, retryRatio, minRetriesPerSecond) => {
          const clock = createFakeClock();
          const budget = createRetryBudget({ clock, retryRatio, minRetriesPerSecond, ttlMs: 10_000 });
          let deposits = 0;
          let granted = 0;
          for (const op of ops) {
            if (op.op === "deposit") {
              budget.deposit();
              deposits += 1;
            } else if (op.op === "withdraw") {
              const before = budget.available();
              const ok = budget.tryWithdraw();
              expect(ok).toBe(before >= 1);
              if (ok) granted += 1;
            } else {
              clock.advance(op.ms);
            }
            expect(budget.available()).toBeGreaterThanOrEqual(0);
          }
          const elapsedTtls = clock.now() / 10_000 + 2;
          expect(granted).toBeLessThanOrEqual(
            retryRatio * deposits + minRetriesPerSecond * 10 * elapsedTtls + 1,
          );
        },
      ),
      { numRuns: 200, interruptAfterTimeLimit: 10_000 },
    );
  });
});
