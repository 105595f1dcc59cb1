import { MeshError, MeshErrorCode } from "@inmesh/core";
import { type Clock, systemClock } from "./clock.js";

export interface RetryBudgetOptions {
  /** Retries allowed per original request, 0..1000. @default 0.2 */
  retryRatio?: number;
  /** Retries always allowed per second, averaged over `ttlMs`, whatever the request rate. @default 10 */
  minRetriesPerSecond?: number;
  /** Window over which deposits count, 1 s..60 s. @default 10000 */
  ttlMs?: number;
  /** Monotonic clock. @default performance.now */
  clock?: Clock;
}

/** The validated parameters of a budget. */
export interface RetryBudgetConfig {
  readonly retryRatio: number;
  readonly minRetriesPerSecond: number;
  readonly ttlMs: number;
}

/**
 * Tower's `TpsBudget`, as linkerd2-proxy uses for ServiceProfile retries: every original request
 * deposits, every retry withdraws. Shared by all requests to one profile.
 */
export interface RetryBudget {
  readonly config: RetryBudgetConfig;
  /** Record one original (non-retry) request. */
  deposit(): void;
  /** Ask for one retry; false when the budget is exhausted (the retry must not be sent). */
  tryWithdraw(): boolean;
  /** Withdrawals possible right now (for metrics and tests). */
  available(): number;
}

export const DEFAULT_RETRY_BUDGET: RetryBudgetConfig = Object.freeze({
  retryRatio: 0.2,
  minRetriesPerSecond: 10,
  ttlMs: 10_000,
});

const WINDOWS = 10;

/**
 * Validates a budget as linkerd `service-profiles/src/proto.rs` does: ttl within [1 s, 60 s], ratio
 * within [0, 1000]. Returns undefined for an invalid budget, which means "no retries".
 */
export function validateRetryBudget(config: {
  retryRatio: number;
  minRetriesPerSecond: number;
  ttlMs: number | undefined;
}): RetryBudgetConfig | undefined {
  const { retryRatio, minRetriesPerSecond, ttlMs } = config;
  if (ttlMs === undefined || !(ttlMs >= 1000 && ttlMs <= 60_000)) return undefined;
  if (!(retryRatio >= 0 && retryRatio <= 1000)) return undefined;
  if (!Number.isInteger(minRetriesPerSecond) || minRetriesPerSecond < 0) return undefined;
  return Object.freeze({ retryRatio, minRetriesPerSecond, ttlMs });
}

export function createRetryBudget(options: RetryBudgetOptions = {}): RetryBudget {
  const requested = {
    retryRatio: options.retryRatio ?? DEFAULT_RETRY_BUDGET.retryRatio,
    minRetriesPerSecond: options.minRetriesPerSecond ?? DEFAULT_RETRY_BUDGET.minRetriesPerSecond,
    ttlMs: options.ttlMs ?? DEFAULT_RETRY_BUDGET.ttlMs,
  };
  const config = validateRetryBudget(requested);
  if (!config) {
    throw new MeshError(
      MeshErrorCode.INVALID_ARG,
      `invalid retry budget: retryRatio=${requested.retryRatio} (0..1000), minRetriesPerSecond=${requested.minRetriesPerSecond}, ttlMs=${requested.ttlMs} (1000..60000)`,
      { details: requested },
    );
  }
  const clock = options.clock ?? systemClock;

  // The ratio arrives as a protobuf float; Tower divides in f32, so 0.2 gives 5 withdrawals per deposit,
  // where doubles would give 4.99999… and truncate to 4.
  const ratio = Math.fround(config.retryRatio);
  let depositAmount: number;
  let withdrawAmount: number;
  if (ratio === 0) {
    depositAmount = 0;
    withdrawAmount = 1;
  } else if (ratio <= 1) {
    depositAmount = 1;
    withdrawAmount = Math.trunc(Math.fround(1 / ratio));
  } else {
    depositAmount = 1000;
    withdrawAmount = Math.trunc(Math.fround(1000 / ratio));
  }
  withdrawAmount = Math.max(1, withdrawAmount);
  // Tower truncates the ttl to whole seconds for the reserve.
  const reserve = config.minRetriesPerSecond * Math.floor(config.ttlMs / 1000) * withdrawAmount;
  const windowMs = config.ttlMs / WINDOWS;
  const slots = new Array<number>(WINDOWS).fill(0);
  let index = 0;
  let generationTime = clock.now();
  let writer = 0;

  // The ring holds the last WINDOWS windows; the current one accumulates in `writer`, and its slot is
  // cleared when it becomes current, so the sum covers exactly `ttlMs`. Tower's TpsBudget restarts its
  // window clock at each expiry and so, under steady traffic (an expiry a little more than one window
  // after the last), advances two slots per window: deposits and withdrawals then expire after about
  // half the ttl, and the reserve of `minRetriesPerSecond × ttl` comes back twice as often (R15 measured
  // ~20 retries a second beyond the ratio instead of 10). Windows here advance on their own boundaries.
  const expire = () => {
    const now = clock.now();
    const windows = Math.floor((now - generationTime) / windowMs);
    if (windows < 1) return;
    slots[index] = writer;
    writer = 0;
    // A full turn or more clears everything; older slots are zero already after one.
    const steps = Math.min(windows, WINDOWS);
    for (let step = 1; step <= steps; step += 1) slots[(index + step) % WINDOWS] = 0;
    index = (index + windows) % WINDOWS;
    generationTime += windows * windowMs;
  };

  const sum = () => {
    let total = writer + reserve;
    for (const slot of slots) total += slot;
    return total;
  };

  return {
    config,
    deposit() {
      expire();
      writer += depositAmount;
    },
    tryWithdraw() {
      expire();
      if (sum() >= withdrawAmount) {
        writer -= withdrawAmount;
        return true;
      }
      return false;
    },
    available() {
      expire();
      return Math.max(0, Math.floor(sum() / withdrawAmount));
    },
  };
}
