import { type BackoffConfig, backoffDelayMs, DEFAULT_FAILURE_ACCRUAL_BACKOFF } from "./backoff.js";
import { type Clock, defaultRandom, type RandomSource, systemClock } from "./clock.js";
import type {
  BackendDistribution,
  FailureAccrualPolicy,
  HttpRouteSet,
  OutboundPolicy,
} from "./outbound-policy.js";

/**
 * - `open`: takes traffic;
 * - `closed`: ejected until the backoff elapses;
 * - `probe-ready`: the backoff elapsed; exactly one request may be sent as a probe;
 * - `probing`: the probe is in flight; no other request is sent.
 */
export type GateState = "open" | "closed" | "probe-ready" | "probing";

export interface FailureAccrualConfig {
  /** Consecutive failures that close the gate. @default 7 */
  readonly maxFailures: number;
  /** Penalty after each closing; doubles while probes fail. @default 1 s–60 s, jitter 0.5 */
  readonly backoff: BackoffConfig;
  /** Never eject an endpoint if fewer than this many would stay open. @default 0 */
  readonly minReadyEndpoints: number;
}

export const DEFAULT_FAILURE_ACCRUAL: FailureAccrualConfig = Object.freeze({
  maxFailures: 7,
  backoff: DEFAULT_FAILURE_ACCRUAL_BACKOFF,
  minReadyEndpoints: 0,
});

/** The breaker configuration of a policy, or undefined when failure accrual is off. */
export function failureAccrualConfig(
  policy: FailureAccrualPolicy | undefined,
): FailureAccrualConfig | undefined {
  if (!policy || policy.kind === "none") return undefined;
  // `unified` also has a success-rate threshold; only its consecutive-failure part is applied.
  return Object.freeze({
    maxFailures: policy.maxFailures,
    backoff: policy.backoff,
    minReadyEndpoints: policy.minReadyEndpoints,
  });
}

/** True when two settings (undefined: off) would make the same breakers. */
export function sameFailureAccrual(
  a: FailureAccrualConfig | undefined,
  b: FailureAccrualConfig | undefined,
): boolean {
  if (a === b) return true;
  if (a === undefined || b === undefined) return false;
  return (
    a.maxFailures === b.maxFailures &&
    a.minReadyEndpoints === b.minReadyEndpoints &&
    a.backoff.minMs === b.backoff.minMs &&
    a.backoff.maxMs === b.backoff.maxMs &&
    a.backoff.jitterRatio === b.backoff.jitterRatio
  );
}

/**
 * One endpoint's circuit breaker, linkerd2-proxy's `consecutive` failure accrual (contract §8.4): after
 * `maxFailures` consecutive failures the gate closes; after the backoff one probe is let through;
 * success reopens, failure closes again with a doubled backoff.
 */
export interface FailureAccrualGate {
  state(): GateState;
  /** True when a request may be sent now (open, or a probe is allowed). */
  isReady(): boolean;
  /** Marks the start of a request; returns true when that request is the probe. */
  begin(): boolean;
  /**
   * Records an outcome. `probe` says whether the request was the probe (as `begin` returned).
   * `canEject` is asked before closing, so the balancer can honour `minReadyEndpoints`.
   */
  record(outcome: "success" | "failure" | "canceled", probe: boolean, canEject?: () => boolean): void;
  /** Time left until the gate allows a probe; 0 when ready, undefined when probing. */
  readyInMs(): number | undefined;
  readonly consecutiveFailures: number;
}

export interface FailureAccrualGateOptions {
  clock?: Clock;
  random?: RandomSource;
}

export function createFailureAccrualGate(
  config: FailureAccrualConfig,
  options: FailureAccrualGateOptions = {},
): FailureAccrualGate {
  const clock = options.clock ?? systemClock;
  const random = options.random ?? defaultRandom;
  let state: GateState = "open";
  let failures = 0;
  let closings = 0;
  let reopenAt = 0;

  const refresh = () => {
    if (state === "closed" && clock.now() >= reopenAt) state = "probe-ready";
  };
  const close = () => {
    state = "closed";
    reopenAt = clock.now() + backoffDelayMs(config.backoff, closings, random);
    closings += 1;
  };

  return {
    state() {
      refresh();
      return state;
    },
    isReady() {
      refresh();
      return state === "open" || state === "probe-ready";
    },
    begin() {
      refresh();
      if (state === "probe-ready") {
        state = "probing";
        return true;
      }
      return false;
    },
    record(outcome, probe, canEject) {
      refresh();
      if (probe) {
        if (state !== "probing") return;
        if (outcome === "success") {
          state = "open";
          failures = 0;
          closings = 0;
        } else if (outcome === "failure") {
          failures += 1;
          close();
        } else {
          state = "probe-ready";
        }
        return;
      }
      // Responses to requests sent before the gate closed do not move a closed gate.
      if (state !== "open" || outcome === "canceled") return;
      if (outcome === "success") {
        failures = 0;
        return;
      }
      failures += 1;
      if (failures >= config.maxFailures && (canEject?.() ?? true)) close();
    },
    readyInMs() {
      refresh();
      if (state === "open" || state === "probe-ready") return 0;
      if (state === "probing") return undefined;
      return Math.max(0, reopenAt - clock.now());
    },
    get consecutiveFailures() {
      return failures;
    },
  };
}

/**
 * The breaker settings of each balanced backend of a policy, keyed by its discovery path (lowercase):
 * linkerd2-proxy builds every backend of a protocol's routes with that protocol's failure accrual
 * (`http1` or `http2`, or `grpc`), so a Service annotated `balancer.linkerd.io/failure-accrual` breaks
 * per endpoint whichever route a request takes. Opaque and TLS policies, and backends that forward to
 * one address, have no balancer and so no breakers.
 */
export function failureAccrualByBackend(
  policy: OutboundPolicy,
  variant: "http1" | "http2",
): ReadonlyMap<string, FailureAccrualPolicy> {
  const byPath = new Map<string, FailureAccrualPolicy>();
  const protocol = policy.protocol;
  let routes: readonly { rules: readonly { backends: BackendDistribution<unknown> }[] }[];
  let accrual: FailureAccrualPolicy;
  switch (protocol.kind) {
    case "detect": {
      const set: HttpRouteSet = protocol[variant];
      routes = set.routes;
      accrual = set.failureAccrual;
      break;
    }
    case "http1":
    case "http2":
    case "grpc":
      routes = protocol.routes;
      accrual = protocol.failureAccrual;
      break;
    default:
      return byPath;
  }
  for (const route of routes) {
    for (const rule of route.rules) {
      const distribution = rule.backends;
      if (distribution.kind === "empty") continue;
      for (const routeBackend of distribution.backends) {
        const target = routeBackend.backend.target;
        if (target.kind === "balancer") byPath.set(target.path.toLowerCase(), accrual);
      }
    }
  }
  return byPath;
}
