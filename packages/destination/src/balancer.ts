import { DestinationError, MeshError, MeshErrorCode } from "@inmesh/core";
import { type Clock, defaultRandom, type RandomSource, systemClock } from "./clock.js";
import { type EndpointSet, type EndpointSetDelta, endpointSetDelta, snapshotId } from "./endpoint.js";
import {
  createFailureAccrualGate,
  type FailureAccrualConfig,
  type FailureAccrualGate,
  failureAccrualConfig,
  type GateState,
  sameFailureAccrual,
} from "./failure-accrual.js";
import type { FailureAccrualPolicy, LoadPolicy } from "./outbound-policy.js";
import { DEFAULT_EWMA } from "./outbound-policy.js";

/** Anything with a unique address can be balanced: discovered endpoints, DNS records, test doubles. */
export interface BalancerEndpoint {
  readonly address: string;
}

/** How a picked request ended. `canceled` neither helps nor hurts the endpoint's breaker. */
export type PickOutcome = "success" | "failure" | "canceled";

/**
 * One load-tracked use of an endpoint. Call `onFirstByte()` when the first response byte (first DATA
 * frame) arrives and `onComplete()` when the exchange ends; both are idempotent and safe after the
 * endpoint was removed.
 */
export interface Pick<TEndpoint extends BalancerEndpoint = BalancerEndpoint> {
  readonly endpoint: TEndpoint;
  /**
   * The request was written to a connection: the round-trip time is measured from here. Time spent
   * connecting (a TLS handshake, a queue for a new connection) is not the endpoint's latency, and
   * linkerd2-proxy's balancer never counts it, as it only sends to endpoints already connected; an
   * estimate is peak-EWMA (a slow sample replaces it at once, a fast one barely moves it), so one slow
   * connect would keep an endpoint out of rotation for tens of seconds. Optional and idempotent.
   */
  onSent(): void;
  /** Stops counting the request as pending and records its round-trip time. */
  onFirstByte(): void;
  /** Records the outcome for failure accrual (and the RTT, if no byte arrived first). */
  onComplete(outcome: PickOutcome): void;
}

export interface BalancerOptions<TEndpoint extends BalancerEndpoint> {
  /** Initial endpoints; replace them with `update()`. */
  endpoints?: readonly TEndpoint[] | EndpointSet;
  /** RTT assumed for an endpoint without measurements. @default 30 */
  defaultRttMs?: number;
  /** Time for an old RTT measurement to weigh 1/e. @default 10000 */
  decayMs?: number;
  /** `load` of a policy backend; overrides `defaultRttMs`/`decayMs`. */
  load?: LoadPolicy;
  /** Circuit breaking per endpoint; off by default, as in Linkerd. */
  failureAccrual?: FailureAccrualPolicy | FailureAccrualConfig;
  /** Monotonic clock. @default performance.now */
  clock?: Clock;
  /** Uniform [0,1). @default secureRandom */
  random?: RandomSource;
  /**
   * Called when a breaker's probe got its answer (its endpoint is ready again, or ejected for longer):
   * a caller waiting for a ready endpoint learns of it nowhere else.
   */
  onProbeSettled?: () => void;
}

export interface EndpointLoad {
  readonly address: string;
  /** Current peak-EWMA RTT estimate (decayed to now). */
  readonly rttMs: number;
  readonly pending: number;
  /** rttMs × (pending + 1): what P2C compares. */
  readonly load: number;
  readonly gate: GateState;
}

/**
 * Peak-EWMA power-of-two-choices balancer (Tower `p2c` + `PeakEwma`, contract §8.4). Pure: it never
 * connects anywhere, it only says which endpoint to use and learns from what the caller reports.
 */
export interface Balancer<TEndpoint extends BalancerEndpoint = BalancerEndpoint> {
  /** Replaces the endpoint list. Kept addresses keep their load; removed ones drain (in-flight picks complete normally). */
  update(endpoints: readonly TEndpoint[] | EndpointSet): void;
  /** Picks an endpoint; throws `DestinationError` `MESH_ERR_DESTINATION_NO_ENDPOINTS` when none is ready. */
  pick(): Pick<TEndpoint>;
  /** Like `pick()`, but undefined instead of throwing. */
  tryPick(): Pick<TEndpoint> | undefined;
  /** Endpoints known (ready or not). */
  size(): number;
  /** Endpoints a pick may choose now. */
  readyCount(): number;
  /** When nothing is ready: time until a breaker allows a probe (undefined if none will by itself). */
  nextReadyInMs(): number | undefined;
  loads(): readonly EndpointLoad[];
  /**
   * Replaces the circuit-breaking settings (an OutboundPolicy update). The same settings keep every
   * breaker as it is; different ones start every endpoint afresh with an open gate, and undefined or
   * `none` turns breaking off. Loads are kept either way.
   */
  setFailureAccrual(policy: FailureAccrualPolicy | FailureAccrualConfig | undefined): void;
}

interface Slot<TEndpoint> {
  endpoint: TEndpoint;
  /** Position in `slots`, kept so that a removal is a swap with the last slot. */
  index: number;
  rttMs: number;
  updatedAt: number;
  pending: number;
  gate: FailureAccrualGate | undefined;
}

function accrualOf(
  input: FailureAccrualPolicy | FailureAccrualConfig | undefined,
): FailureAccrualConfig | undefined {
  const accrual = input && "kind" in input ? failureAccrualConfig(input) : input;
  if (accrual && !(Number.isInteger(accrual.maxFailures) && accrual.maxFailures >= 1)) {
    throw new MeshError(
      MeshErrorCode.INVALID_ARG,
      `invalid failure accrual: maxFailures=${accrual.maxFailures}`,
    );
  }
  return accrual;
}

function isEndpointSet(value: unknown): value is EndpointSet {
  return typeof value === "object" && value !== null && !Array.isArray(value) && "exists" in value;
}

/** What a pick needs from its balancer, shared by all of its picks. */
interface PickOwner<TEndpoint extends BalancerEndpoint> {
  readonly clock: Clock;
  observe(slot: Slot<TEndpoint>, sampleMs: number, now: number): void;
  /** Records an outcome on the breaker the pick began on, if the slot still has it. */
  settle(slot: Slot<TEndpoint>, gate: FailureAccrualGate, outcome: PickOutcome, probe: boolean): void;
}

/** One pick as one object: it is made on every request, so no closures (a context and three functions). */
class SlotPick<TEndpoint extends BalancerEndpoint> implements Pick<TEndpoint> {
  readonly endpoint: TEndpoint;
  readonly #owner: PickOwner<TEndpoint>;
  readonly #slot: Slot<TEndpoint>;
  /** The breaker the pick began on: new settings replace it, and an outcome is not carried across. */
  readonly #gate: FailureAccrualGate | undefined;
  readonly #probe: boolean;
  #startedAt: number;
  #sent = false;
  #measured = false;
  #completed = false;

  constructor(owner: PickOwner<TEndpoint>, slot: Slot<TEndpoint>) {
    this.endpoint = slot.endpoint;
    this.#owner = owner;
    this.#slot = slot;
    this.#startedAt = owner.clock.now();
    const gate = slot.gate;
    this.#gate = gate;
    this.#probe = gate?.begin() ?? false;
    slot.pending += 1;
  }

  onSent(): void {
    if (this.#sent || this.#measured) return;
    this.#sent = true;
    this.#startedAt = this.#owner.clock.now();
  }

  onFirstByte(): void {
    if (this.#measured) return;
    this.#measured = true;
    const slot = this.#slot;
    slot.pending = Math.max(0, slot.pending - 1);
    const now = this.#owner.clock.now();
    this.#owner.observe(slot, Math.max(0, now - this.#startedAt), now);
  }

  onComplete(outcome: PickOutcome): void {
    if (this.#completed) return;
    this.#completed = true;
    this.onFirstByte();
    if (this.#gate) this.#owner.settle(this.#slot, this.#gate, outcome, this.#probe);
  }
}

export function createBalancer<TEndpoint extends BalancerEndpoint>(
  options: BalancerOptions<TEndpoint> = {},
): Balancer<TEndpoint> {
  const defaultRttMs = options.load?.defaultRttMs ?? options.defaultRttMs ?? DEFAULT_EWMA.defaultRttMs;
  const decayMs = options.load?.decayMs ?? options.decayMs ?? DEFAULT_EWMA.decayMs;
  if (!(defaultRttMs >= 0 && Number.isFinite(defaultRttMs)) || !(decayMs > 0 && Number.isFinite(decayMs))) {
    throw new MeshError(
      MeshErrorCode.INVALID_ARG,
      `invalid balancer: defaultRttMs=${defaultRttMs} decayMs=${decayMs}`,
    );
  }
  const clock = options.clock ?? systemClock;
  const random = options.random ?? defaultRandom;
  let accrual = accrualOf(options.failureAccrual);

  let slots: Slot<TEndpoint>[] = [];
  let byAddress = new Map<string, Slot<TEndpoint>>();

  // Tower's RttEstimate::decay: an update with a zero sample, so idle estimates drift towards 0.
  const decayedRtt = (slot: Slot<TEndpoint>, now: number): number => {
    const elapsed = now - slot.updatedAt;
    if (elapsed <= 0) return slot.rttMs;
    slot.rttMs *= Math.exp(-elapsed / decayMs);
    slot.updatedAt = now;
    return slot.rttMs;
  };

  // Tower's RttEstimate::update: a sample above the estimate replaces it (the peak); otherwise EWMA.
  const observe = (slot: Slot<TEndpoint>, sampleMs: number, now: number) => {
    if (slot.rttMs < sampleMs) {
      slot.rttMs = sampleMs;
    } else {
      const elapsed = Math.max(0, now - slot.updatedAt);
      const decay = Math.exp(-elapsed / decayMs);
      slot.rttMs = slot.rttMs * decay + sampleMs * (1 - decay);
    }
    slot.updatedAt = now;
  };

  const load = (slot: Slot<TEndpoint>, now: number) => decayedRtt(slot, now) * (slot.pending + 1);

  const isReady = (slot: Slot<TEndpoint>) => slot.gate === undefined || slot.gate.isReady();

  const openCount = () => {
    let count = 0;
    for (const slot of slots) if (slot.gate === undefined || slot.gate.state() === "open") count += 1;
    return count;
  };

  const newSlot = (endpoint: TEndpoint, now: number, index: number): Slot<TEndpoint> => ({
    endpoint,
    index,
    rttMs: defaultRttMs,
    updatedAt: now,
    pending: 0,
    gate: accrual ? createFailureAccrualGate(accrual, { clock, random }) : undefined,
  });

  /** `snapshotId` of the EndpointSet last applied, when the slots mirror one. */
  let appliedSetId: number | undefined;

  /** One update's changes, in time proportional to them (a single-address update on 10,000 endpoints). */
  const applyDelta = (delta: EndpointSetDelta) => {
    for (const address of delta.removed) {
      const slot = byAddress.get(address);
      if (slot === undefined) continue;
      byAddress.delete(address);
      const last = slots.pop() as Slot<TEndpoint>;
      if (last !== slot) {
        last.index = slot.index;
        slots[slot.index] = last;
      }
    }
    const now = clock.now();
    for (const endpoint of delta.upserted as unknown as readonly TEndpoint[]) {
      const existing = byAddress.get(endpoint.address);
      if (existing) {
        existing.endpoint = endpoint;
      } else {
        const slot = newSlot(endpoint, now, slots.length);
        slots.push(slot);
        byAddress.set(endpoint.address, slot);
      }
    }
  };

  const update = (input: readonly TEndpoint[] | EndpointSet) => {
    if (isEndpointSet(input)) {
      // The same set again (a consumer re-balancing after a connect backoff) changes nothing.
      if (appliedSetId !== undefined && snapshotId(input) === appliedSetId) return;
      const delta = endpointSetDelta(input, appliedSetId);
      appliedSetId = snapshotId(input);
      if (delta !== undefined) {
        applyDelta(delta);
        return;
      }
    } else {
      appliedSetId = undefined;
    }
    const list = (isEndpointSet(input) ? input.endpoints : input) as readonly TEndpoint[];
    const now = clock.now();
    const next = new Map<string, Slot<TEndpoint>>();
    const nextSlots: Slot<TEndpoint>[] = [];
    for (const endpoint of list) {
      if (next.has(endpoint.address)) continue;
      const existing = byAddress.get(endpoint.address);
      let slot: Slot<TEndpoint>;
      if (existing) {
        existing.endpoint = endpoint;
        existing.index = nextSlots.length;
        slot = existing;
      } else {
        slot = newSlot(endpoint, now, nextSlots.length);
      }
      next.set(endpoint.address, slot);
      nextSlots.push(slot);
    }
    byAddress = next;
    slots = nextSlots;
  };

  const owner: PickOwner<TEndpoint> = {
    clock,
    observe,
    settle(slot, gate, outcome, probe) {
      // A removed endpoint's breaker is gone with it; `byAddress` no longer holds this slot.
      if (slot.gate !== gate || byAddress.get(slot.endpoint.address) !== slot) return;
      const minReady = accrual?.minReadyEndpoints ?? 0;
      gate.record(outcome, probe, () => openCount() - 1 >= minReady);
      if (probe) options.onProbeSettled?.();
    },
  };
  const makePick = (slot: Slot<TEndpoint>): Pick<TEndpoint> => new SlotPick(owner, slot);

  /** Power of two choices over `candidates` (at least two): two distinct uniform picks, lower load wins. */
  const twoChoices = (candidates: readonly Slot<TEndpoint>[]): [Slot<TEndpoint>, Slot<TEndpoint>] => {
    const n = candidates.length;
    const i = Math.min(n - 1, Math.floor(random() * n));
    let j = Math.min(n - 2, Math.floor(random() * (n - 1)));
    if (j >= i) j += 1;
    return [candidates[i] as Slot<TEndpoint>, candidates[j] as Slot<TEndpoint>];
  };

  const choose = (a: Slot<TEndpoint>, b: Slot<TEndpoint>) => {
    const now = clock.now();
    return makePick(load(a, now) <= load(b, now) ? a : b);
  };

  /** Pairs drawn among all slots before falling back to listing the ready ones. */
  const SAMPLING_ATTEMPTS = 4;

  const tryPick = (): Pick<TEndpoint> | undefined => {
    if (accrual && slots.length > 2) {
      // Rejection sampling: a pair drawn among all slots and kept only when both are ready is a uniform
      // pair of ready slots, as P2C over the ready list would draw, without listing the ready slots on
      // every request (O(endpoints) time and garbage per pick with 10,000 endpoints).
      for (let attempt = 0; attempt < SAMPLING_ATTEMPTS; attempt += 1) {
        const [a, b] = twoChoices(slots);
        if (isReady(a) && isReady(b)) return choose(a, b);
      }
    }
    let ready: Slot<TEndpoint>[] = slots;
    if (accrual) {
      ready = [];
      for (const slot of slots) if (isReady(slot)) ready.push(slot);
    }
    const n = ready.length;
    if (n === 0) return undefined;
    if (n === 1) return makePick(ready[0] as Slot<TEndpoint>);
    const [a, b] = twoChoices(ready);
    return choose(a, b);
  };

  if (options.endpoints) update(options.endpoints);

  return {
    update,
    tryPick,
    pick() {
      const picked = tryPick();
      if (picked) return picked;
      throw new DestinationError(
        MeshErrorCode.DESTINATION_NO_ENDPOINTS,
        slots.length === 0
          ? "no endpoints to balance over"
          : `all ${slots.length} endpoints are ejected by failure accrual`,
        { details: { endpoints: slots.length } },
      );
    },
    size: () => slots.length,
    readyCount() {
      let count = 0;
      for (const slot of slots) if (isReady(slot)) count += 1;
      return count;
    },
    nextReadyInMs() {
      let soonest: number | undefined;
      for (const slot of slots) {
        const inMs = slot.gate ? slot.gate.readyInMs() : 0;
        if (inMs !== undefined && (soonest === undefined || inMs < soonest)) soonest = inMs;
      }
      return soonest;
    },
    setFailureAccrual(policy) {
      const next = accrualOf(policy);
      if (sameFailureAccrual(accrual, next)) return;
      accrual = next;
      for (const slot of slots)
        slot.gate = accrual ? createFailureAccrualGate(accrual, { clock, random }) : undefined;
    },
    loads() {
      const now = clock.now();
      return slots.map((slot) => {
        const rttMs = decayedRtt(slot, now);
        return Object.freeze({
          address: slot.endpoint.address,
          rttMs,
          pending: slot.pending,
          load: rttMs * (slot.pending + 1),
          gate: slot.gate?.state() ?? "open",
        });
      });
    },
  };
}
