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

/** Whether drawing again could pick another backend. */
function hasChoice(distribution: BackendDistribution<AnyFilter>): boolean {
  if (distribution.kind !== "random-available") return false;
  let candidates = 0;
  for (const backend of distribution.backends) if (backend.weight > 0) candidates += 1;
  return candidates > 1;
}

/**
 * For a rule that splits traffic, the function a retry calls to draw its backend again (group and the
 * backend's request header filters); undefined when there is nothing to choose.
 */
export function redistributor(
  call: CallState,
  policy: RequestPolicy,
  registry: TargetRegistry,
): (() => void) | undefined {
  const distribution = policy.backends;
  if (!distribution || !hasChoice(distribution)) return undefined;
  return () => {
    const backend = selectBackend<AnyFilter>(distribution);
    if (!backend) return;
    call.group = backendGroup(registry, backend);
    const filters = backend.filters.length > 0 ? [...policy.filters, ...backend.filters] : policy.filters;
    const modifiers: HeaderModifier[] = [];
    for (const filter of filters) if (filter.kind === "request-header-modifier") modifiers.push(filter);
    call.headerFilters = modifiers;
  };
}
