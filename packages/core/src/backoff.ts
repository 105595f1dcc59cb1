import { ConfigError } from "./errors.js";
import { secureRandom } from "./random.js";

export interface BackoffOptions {
  /** First delay. @default 100 */
  minMs?: number;
  /** Upper bound of any delay. @default 60000 */
  maxMs?: number;
  /** Fraction of the delay added at random, 0..1. @default 0.1 */
  jitterRatio?: number;
}

export interface Backoff {
  /** Delay before the next attempt; grows exponentially until `maxMs`. */
  next(): number;
  /** Start over after a success. */
  reset(): void;
  readonly attempts: number;
}

/** Exponential backoff with jitter, as Linkerd's control-plane clients use (100 ms → 60 s, jitter 0.1). */
export function createBackoff(options: BackoffOptions = {}): Backoff {
  const minMs = options.minMs ?? 100;
  const maxMs = options.maxMs ?? 60_000;
  const jitterRatio = options.jitterRatio ?? 0.1;
  if (!(minMs > 0) || !(maxMs >= minMs) || !(jitterRatio >= 0 && jitterRatio <= 1)) {
    throw new ConfigError(`invalid backoff: minMs=${minMs} maxMs=${maxMs} jitterRatio=${jitterRatio}`);
  }
  let attempts = 0;
  return {
    next() {
      const base = Math.min(maxMs, minMs * 2 ** Math.min(attempts, 32));
      attempts += 1;
      // Jitter must survive the cap: at the ceiling it is taken off instead of added, so a fleet that
      // lost the control plane together does not retry in lockstep every maxMs (reliability R3).
      const spread = base * jitterRatio * secureRandom();
      return base + spread <= maxMs ? base + spread : maxMs - spread;
    },
    reset() {
      attempts = 0;
    },
    get attempts() {
      return attempts;
    },
  };
}
