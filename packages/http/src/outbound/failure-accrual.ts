import { debuglog } from "node:util";
import {
  type Balancer,
  createBalancer,
  type Endpoint,
  type FailureAccrualPolicy,
  failureAccrualByBackend,
  type RoutingModel,
} from "@inmesh/destination";

const debug = debuglog("mesh");

const OFF: FailureAccrualPolicy = Object.freeze({ kind: "none" });
const NO_BACKENDS: ReadonlyMap<string, FailureAccrualPolicy> = new Map();

/**
 * The balancer of one endpoint group and its per-endpoint breakers (circuit breaking, contract §8.4).
 * While every endpoint is ejected a waiting request would hear of nothing (no discovery update comes,
 * no connect backoff ends), so the group is woken when a breaker lets its probe through, and again
 * when the probe's answer settles the breaker either way.
 */
export class GroupBreakers {
  readonly balancer: Balancer<Endpoint>;
  readonly #wake: () => void;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(wake: () => void) {
    this.#wake = wake;
    this.balancer = createBalancer<Endpoint>({ onProbeSettled: () => this.#wakeSoon() });
  }

  /** New settings from the outbound policy; the same settings again leave every breaker as it is. */
  configure(policy: FailureAccrualPolicy): void {
    if (this.#closed) return;
    this.balancer.setFailureAccrual(policy);
  }

  /** A request found no ready endpoint: wake the group when the first breaker allows a probe. */
  noneReady(): void {
    if (this.#closed || this.#timer) return;
    const inMs = this.balancer.nextReadyInMs();
    // undefined: nothing will become ready by itself (no endpoints, or a probe in flight: its answer wakes).
    if (inMs === undefined) return;
    this.#timer = setTimeout(
      () => {
        this.#timer = undefined;
        if (!this.#closed) this.#wake();
      },
      Math.max(1, Math.ceil(inMs)),
    );
    this.#timer.unref();
  }

  #wakeSoon(): void {
    if (this.#closed) return;
    // After the probe's completion has been recorded, not from inside it.
    queueMicrotask(() => {
      if (!this.#closed) this.#wake();
    });
  }

  close(): void {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}

/** What a logical target tells about its routing. */
export interface RoutingSource {
  readonly authority: string;
  routingModel(): RoutingModel;
  /** Calls `listener` after each ServiceProfile or OutboundPolicy answer, and with `true` once closed. */
  onRoutingChange(listener: (closed: boolean) => void): void;
}

/** What the settings are applied to: an endpoint group, when one is open for the path. */
export interface BreakerSink {
  setFailureAccrual(policy: FailureAccrualPolicy): void;
}

/**
 * Breaker settings per backend, from the OutboundPolicy of every target that routes to it. linkerd2-proxy
 * builds each backend of a protocol's routes with that protocol's failure accrual
 * (`balancer.linkerd.io/failure-accrual*` on the parent Service), and none for ServiceProfile routes.
 * Endpoint groups are shared by discovery path here, so when two parents route to one path with
 * different settings, the path's own Service wins, then the parent that asked first.
 */
export class BackendFailureAccrual {
  readonly #byParent = new Map<string, ReadonlyMap<string, FailureAccrualPolicy>>();
  readonly #sinkOf: (path: string) => BreakerSink | undefined;

  constructor(sinkOf: (path: string) => BreakerSink | undefined) {
    this.#sinkOf = sinkOf;
  }

  /** Follows a target's routing answers until it closes. */
  follow(target: RoutingSource): void {
    const authority = target.authority;
    target.onRoutingChange((closed) => {
      if (closed) this.#set(authority, NO_BACKENDS);
      else this.#set(authority, backendsOf(target.routingModel()));
    });
    this.#set(authority, backendsOf(target.routingModel()));
  }

  /** The settings for a group opened now for `path`. */
  policyFor(path: string): FailureAccrualPolicy {
    const own = this.#byParent.get(path)?.get(path);
    if (own) return own;
    for (const backends of this.#byParent.values()) {
      const policy = backends.get(path);
      if (policy) return policy;
    }
    return OFF;
  }

  #set(authority: string, backends: ReadonlyMap<string, FailureAccrualPolicy>): void {
    const previous = this.#byParent.get(authority);
    if (backends.size === 0) this.#byParent.delete(authority);
    else this.#byParent.set(authority, backends);
    const touched = new Set([...(previous?.keys() ?? []), ...backends.keys()]);
    for (const path of touched) {
      const sink = this.#sinkOf(path);
      if (!sink) continue;
      const policy = this.policyFor(path);
      try {
        sink.setFailureAccrual(policy);
      } catch (error) {
        // The policy was validated when compiled; keep the last settings rather than fail requests.
        debug("outbound %s: failure accrual for %s refused: %s", authority, path, (error as Error)?.message);
      }
    }
  }
}

function backendsOf(model: RoutingModel): ReadonlyMap<string, FailureAccrualPolicy> {
  // The HTTP adapter routes with the HTTP/1 route set, as the route interceptor selects.
  return model?.kind === "policy" ? failureAccrualByBackend(model, "http1") : NO_BACKENDS;
}
