import { secureRandom } from "@inmesh/core";

/** A monotonic clock in milliseconds. Injected in tests so time can be driven without sleeping. */
export interface Clock {
  now(): number;
}

/** A source of uniform floats in [0, 1). Injected in tests for deterministic runs. */
export type RandomSource = () => number;

/** `performance.now()`: monotonic, unaffected by wall-clock jumps. */
export const systemClock: Clock = { now: () => performance.now() };

export const defaultRandom: RandomSource = secureRandom;
