import {
  type BackendDistribution,
  type GrpcFilter,
  type HeaderModifier,
  type HttpFilter,
  type OpaqueFilter,
  type RequestPolicy,
  type RouteBackend,
  selectBackend,
} from "@inmesh/destination";
import type { CallState } from "./state.js";
import type { EndpointGroup, TargetRegistry } from "./targets.js";

type AnyFilter = HttpFilter | GrpcFilter | OpaqueFilter;

/** The endpoint group a route backend balances over. */
export function backendGroup(registry: TargetRegistry, backend: RouteBackend<AnyFilter>): EndpointGroup {
  const target = backend.backend.target;
  return target.kind === "forward"
    ? registry.forwardGroup(target.endpoint)
    : registry.group(target.path.toLowerCase());
}

const choices = new WeakMap<BackendDistribution<AnyFilter>, boolean>();

/** Whether drawing again could pick another backend (cached per compiled distribution). */
export function hasBackendChoice(distribution: BackendDistribution<AnyFilter> | undefined): boolean {
  if (distribution?.kind !== "random-available") return false;
  let known = choices.get(distribution);
  if (known === undefined) {
    let candidates = 0;
    for (const backend of distribution.backends) if (backend.weight > 0) candidates += 1;
    known = candidates > 1;
    choices.set(distribution, known);
  }
  return known;
}

/** Draws the call's backend again from its policy's split: the group and the backend's request filters. */
export function redistribute(call: CallState, policy: RequestPolicy, registry: TargetRegistry): void {
  const distribution = policy.backends;
  if (!distribution) return;
  const backend = selectBackend<AnyFilter>(distribution);
  if (!backend) return;
  call.group = backendGroup(registry, backend);
  const filters = backend.filters.length > 0 ? [...policy.filters, ...backend.filters] : policy.filters;
  const modifiers: HeaderModifier[] = [];
  for (const filter of filters) if (filter.kind === "request-header-modifier") modifiers.push(filter);
  call.headerFilters = modifiers;
}
