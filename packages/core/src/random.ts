import { randomInt } from "node:crypto";

const RESOLUTION = 2 ** 32;

/** Uniform float in [0, 1) from the CSPRNG; the SDK never uses Math.random. */
export function secureRandom(): number {
  return randomInt(0, RESOLUTION) / RESOLUTION;
}
