import { describe, expect, it } from "vitest";
import { closeOnce, createBackoff, delay, secureRandom } from "../src/index.js";

describe("lifecycle and backoff", () => {
  it("close is idempotent and single-flight", async () => {
    let calls = 0;
    const resource = closeOnce(async () => {
      calls += 1;
      await delay(5);
    });
    const [a, b] = [resource.close(), resource.close()];
    expect(a).toBe(b);
    await a;
    await resource[Symbol.asyncDispose]();
    expect(calls).toBe(1);
    expect(resource.closed).toBe(true);
  });

  it("delay rejects with the signal's reason", async () => {
    const controller = new AbortController();
    const pending = delay(10_000, controller.signal);
    controller.abort(new Error("stop"));
    await expect(pending).rejects.toThrow("stop");
  });

  it("backoff grows exponentially with jitter, never above max, still jittered at max", () => {
    const backoff = createBackoff({ minMs: 100, maxMs: 60_000, jitterRatio: 0.1 });
    let base = 100;
    for (let attempt = 0; attempt < 20; attempt += 1) {
      const next = backoff.next();
      const expectedBase = Math.min(60_000, base);
      expect(next).toBeLessThanOrEqual(60_000);
      if (expectedBase * 1.1 <= 60_000) {
        expect(next).toBeGreaterThanOrEqual(expectedBase);
        expect(next).toBeLessThanOrEqual(expectedBase * 1.1);
      } else {
        expect(next).toBeGreaterThanOrEqual(60_000 * 0.9);
      }
      base *= 2;
    }
    const atCeiling = new Set(Array.from({ length: 50 }, () => backoff.next()));
    expect(atCeiling.size).toBeGreaterThan(1);
    backoff.reset();
    expect(backoff.next()).toBeLessThan(111);
    expect(() => createBackoff({ minMs: 0 })).toThrow();
  });

  it("secureRandom stays in [0, 1)", () => {
    for (let i = 0; i < 1000; i += 1) {
      const value = secureRandom();
      expect(value).toBeGreaterThanOrEqual(0);
      expect(value).toBeLessThan(1);
    }
  });
});
