import { destination, ipAddressFromString } from "@inmesh/proto";

/** A clock tests move by hand. */
export interface FakeClock {
  now(): number;
  advance(ms: number): void;
  set(ms: number): void;
}

export function createFakeClock(start = 0): FakeClock {
  let t = start;
  return {
    now: () => t,
    advance(ms) {
      t += ms;
    },
    set(ms) {
      t = ms;
    },
  };
}

/** mulberry32: a seeded PRNG so simulations are reproducible (tests only; the SDK uses secureRandom). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Polls `predicate` every 5 ms until it holds; bounded by `timeoutMs`. */
export async function waitFor(predicate: () => boolean, timeoutMs = 5000, what = "condition"): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

export function weightedAddr(
  address: string,
  extra: Partial<destination.WeightedAddr> = {},
): destination.WeightedAddr {
  const colon = address.lastIndexOf(":");
  const host = address.slice(0, colon).replace(/^\[|\]$/g, "");
  const port = Number(address.slice(colon + 1));
  return destination.WeightedAddr.fromPartial({
    addr: { ip: ipAddressFromString(host), port },
    weight: 10000,
    ...extra,
  } as never);
}

export function addUpdate(
  addrs: destination.WeightedAddr[],
  metricLabels: Record<string, string> = {},
): destination.Update {
  return { update: { $case: "add", value: { addrs, metricLabels } } };
}

export function removeUpdate(addresses: string[]): destination.Update {
  return {
    update: {
      $case: "remove",
      value: {
        addrs: addresses.map((address) => {
          const colon = address.lastIndexOf(":");
          const host = address.slice(0, colon).replace(/^\[|\]$/g, "");
          return { ip: ipAddressFromString(host), port: Number(address.slice(colon + 1)) };
        }),
      },
    },
  };
}

export function noEndpoints(exists: boolean): destination.Update {
  return { update: { $case: "noEndpoints", value: { exists } } };
}

export function seconds(s: number): { seconds: bigint; nanos: number } {
  const whole = Math.floor(s);
  return { seconds: BigInt(whole), nanos: Math.round((s - whole) * 1e9) };
}
