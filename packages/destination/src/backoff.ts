import { defaultRandom, type RandomSource } from "./clock.js";

/** Linkerd's `ExponentialBackoff`: `min · 2^attempt`, capped at `max`, plus `jitterRatio · base · U[0,1)`. */
export interface BackoffConfig {
  readonly minMs: number;
  readonly maxMs: number;
  readonly jitterRatio: number;
  /** Only carried through from the policy; the SDK never reads `Retry-After` for route retries yet. */
  readonly respectRetryAfterHint: boolean;
}

/** What the policy controller always sends for route retries (contract §7.2). */
export const DEFAULT_ROUTE_RETRY_BACKOFF: BackoffConfig = Object.freeze({
  minMs: 25,
  maxMs: 250,
  jitterRatio: 1,
  respectRetryAfterHint: false,
});

/** Failure-accrual defaults of the `consecutive` mode (contract §8.4). */
export const DEFAULT_FAILURE_ACCRUAL_BACKOFF: BackoffConfig = Object.freeze({
  minMs: 1000,
  maxMs: 60_000,
  jitterRatio: 0.5,
  respectRetryAfterHint: false,
});

/**
 * Delay before retry number `attempt` (0 for the first retry). Matches linkerd `exp-backoff`: the
 * jittered value is capped at `maxMs`.
 */
export function backoffDelayMs(
  config: BackoffConfig,
  attempt: number,
  random: RandomSource = defaultRandom,
): number {
  const exponent = Math.min(Math.max(0, Math.floor(attempt)), 52);
  const base = Math.min(config.maxMs, config.minMs * 2 ** exponent);
  const jitter = config.jitterRatio > 0 ? base * config.jitterRatio * random() : 0;
  return Math.min(config.maxMs, base + jitter);
}

/** A stateful iterator over `backoffDelayMs`, one per retried request. */
export interface RetryBackoff {
  /** Delay before the next retry; each call advances the attempt. */
  next(): number;
  reset(): void;
  readonly attempts: number;
}

export function createRetryBackoff(
  config: BackoffConfig,
  random: RandomSource = defaultRandom,
): RetryBackoff {
  let attempts = 0;
  return {
    next() {
      const delay = backoffDelayMs(config, attempts, random);
      attempts += 1;
      return delay;
    },
    reset() {
      attempts = 0;
    },
    get attempts() {
      return attempts;
    },
  };
}
