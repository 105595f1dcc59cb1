import { performance } from "node:perf_hooks";
import type {
  ClientFacts,
  HttpAllowedDecision,
  HttpRateLimitedDecision,
  LocalRateLimiter,
  RateLimitScope,
  ResourceMeta,
} from "./types.js";

/**
 * `HTTPLocalRateLimitPolicy` (Linkerd 2.17) as linkerd2-proxy enforces it (`server-policy/local_rate_limit.rs`,
 * governor's `Quota::per_second`): each limit admits `rps` requests per second with a burst of `rps`,
 * starting full. The total limit is checked first (and spends a request even if a later limit refuses);
 * then a client whose identity has an override is checked against that override's limit (one limiter
 * shared by every identity of the override) and nothing else; other clients against the per-identity limit,
 * keyed by identity (clients without one share a key).
 */

/** The converted policy: limits in requests per second (0 = no limit). */
export interface IrRateLimit {
  readonly meta: ResourceMeta | undefined;
  readonly totalRps: number;
  readonly identityRps: number;
  readonly overrides: readonly { readonly rps: number; readonly identities: readonly string[] }[];
}

export interface RateLimiterOptions {
  /** Monotonic clock in milliseconds. @default performance.now */
  nowMs?: () => number;
  /** Most identities whose per-identity state is kept at once. @default 10000 */
  maxTrackedIdentities?: number;
}

export const DEFAULT_MAX_TRACKED_IDENTITIES = 10_000;
/** The key shared by every client without an identity (identities never contain NUL). */
const NO_IDENTITY = "\u0000";

/*
 * GCRA, the algorithm governor implements: one number per limit, the theoretical arrival time (TAT) of the
 * next request. A request at `now` conforms when `max(tat, now) - now <= (burst - 1) × interval`; it then
 * moves the TAT one interval later. With burst = rps this is a token bucket of `rps` tokens refilled at
 * `rps` per second.
 */

interface Limit {
  readonly rps: number;
  readonly intervalMs: number;
  readonly toleranceMs: number;
  readonly scope: RateLimitScope;
}

function limit(rps: number, scope: RateLimitScope): Limit {
  const intervalMs = 1000 / rps;
  return Object.freeze({ rps, intervalMs, toleranceMs: (rps - 1) * intervalMs, scope });
}

export function createRateLimiter(ir: IrRateLimit, options: RateLimiterOptions = {}): LocalRateLimiter {
  const nowMs = options.nowMs ?? (() => performance.now());
  const maxTracked = options.maxTrackedIdentities ?? DEFAULT_MAX_TRACKED_IDENTITIES;
  const total = ir.totalRps > 0 ? limit(ir.totalRps, "total") : undefined;
  const perIdentity = ir.identityRps > 0 ? limit(ir.identityRps, "identity") : undefined;
  const overrideLimits: Limit[] = [];
  const overrideOf = new Map<string, number>();
  for (const override of ir.overrides) {
    if (!(override.rps > 0)) continue;
    const index = overrideLimits.length;
    overrideLimits.push(limit(override.rps, "identity"));
    for (const identity of override.identities)
      if (!overrideOf.has(identity)) overrideOf.set(identity, index);
  }
  // State: TATs in one Float64Array (slot 0 total, then overrides, then per-identity slots), so updating a
  // limit stores a double in place instead of boxing it: an admitted request allocates nothing.
  const identityBase = 1 + overrideLimits.length;
  const tats = new Float64Array(identityBase + (perIdentity === undefined ? 0 : maxTracked)).fill(
    Number.NEGATIVE_INFINITY,
  );
  const identitySlots = new Map<string, number>();
  const freeSlots: number[] = [];
  for (let slot = tats.length - 1; slot >= identityBase; slot -= 1) freeSlots.push(slot);

  // Denials are built on first use per (allowed decision, limit) and reused: nothing per refused request.
  const denials = new WeakMap<HttpAllowedDecision, Map<Limit, HttpRateLimitedDecision>>();
  const denial = (decision: HttpAllowedDecision, which: Limit): HttpRateLimitedDecision => {
    let byLimit = denials.get(decision);
    if (byLimit === undefined) {
      byLimit = new Map();
      denials.set(decision, byLimit);
    }
    let made = byLimit.get(which);
    if (made === undefined) {
      const kind = which === total ? "total" : which === perIdentity ? "per-identity" : "override";
      made = Object.freeze({
        allowed: false,
        reason: "rate-limited",
        server: decision.server,
        route: decision.route,
        authz: decision.authz,
        routeKind: decision.routeKind,
        filters: decision.filters,
        audit: false,
        httpStatus: 429,
        grpcStatus: 8,
        message: `${kind} rate limit exceeded: ${which.rps}rps`,
        rateLimit: Object.freeze({ meta: ir.meta, scope: which.scope, rps: which.rps }),
      } satisfies HttpRateLimitedDecision);
      byLimit.set(which, made);
    }
    return made;
  };

  /** Frees the per-identity states that carry nothing (back to a full burst), else the oldest ones. */
  const makeRoom = (now: number) => {
    for (const [key, slot] of identitySlots) {
      if ((tats[slot] as number) <= now) {
        identitySlots.delete(key);
        freeSlots.push(slot);
      }
    }
    if (freeSlots.length > 0) return;
    const batch = Math.max(1, maxTracked >> 4);
    for (const [key, slot] of identitySlots) {
      if (freeSlots.length >= batch) break;
      identitySlots.delete(key);
      freeSlots.push(slot);
    }
  };

  /** One GCRA step on a slot: spends a request and returns true when it conforms. */
  const take = (slot: number, which: Limit, now: number): boolean => {
    const tat = tats[slot] as number;
    const base = Math.max(tat, now);
    if (base - now > which.toleranceMs) return false;
    tats[slot] = base + which.intervalMs;
    return true;
  };

  return Object.freeze({
    meta: ir.meta,
    check(decision: HttpAllowedDecision, client: ClientFacts): HttpRateLimitedDecision | undefined {
      const now = nowMs();
      if (total !== undefined && !take(0, total, now)) return denial(decision, total);
      const identity = client.identity;
      if (identity !== undefined) {
        const index = overrideOf.get(identity);
        if (index !== undefined) {
          const which = overrideLimits[index] as Limit;
          return take(1 + index, which, now) ? undefined : denial(decision, which);
        }
      }
      if (perIdentity !== undefined) {
        const key = identity ?? NO_IDENTITY;
        let slot = identitySlots.get(key);
        if (slot === undefined) {
          if (freeSlots.length === 0) makeRoom(now);
          slot = freeSlots.pop() as number;
          tats[slot] = Number.NEGATIVE_INFINITY;
          identitySlots.set(key, slot);
        }
        if (!take(slot, perIdentity, now)) return denial(decision, perIdentity);
      }
      return undefined;
    },
    get trackedIdentities() {
      return identitySlots.size;
    },
  });
}
