import { MeshError, MeshErrorCode } from "@inmesh/core";
import type {
  BackendTarget,
  OpaqueRoute,
  OutboundPolicyState,
  RequestPolicy,
  ResourceMetadata,
} from "@inmesh/destination";

/** The route name the policy controller gives the catch-all route of a `Deny` EgressNetwork. */
const HTTP_EGRESS_DENY = "http-egress-deny";

function describeParent(metadata: ResourceMetadata | undefined): string {
  if (!metadata || metadata.isDefault) return "the outbound policy";
  return `${metadata.kind} ${metadata.namespace}/${metadata.name}`;
}

export function egressDenied(target: string, parent: ResourceMetadata | undefined): MeshError {
  return new MeshError(
    MeshErrorCode.EGRESS_DENIED,
    `${describeParent(parent)} does not allow traffic to ${target}`,
    {
      details: {
        target,
        ...(parent && !parent.isDefault
          ? { parentKind: parent.kind, parentName: parent.name, parentNamespace: parent.namespace }
          : {}),
      },
    },
  );
}

function parentOf(state: OutboundPolicyState | undefined): ResourceMetadata | undefined {
  return state?.kind === "policy" ? state.metadata : undefined;
}

/**
 * Whether the chosen HTTP route is the deny route of an EgressNetwork. Linkerd answers it with a
 * synthesized 403; inmesh refuses the call with a typed error instead, so the caller cannot mistake
 * the mesh's refusal for the remote server's answer.
 */
export function httpEgressDenial(
  target: string,
  state: OutboundPolicyState | undefined,
  policy: RequestPolicy,
): MeshError | undefined {
  const parent = parentOf(state);
  if (!(policy.route.isDefault && policy.route.name === HTTP_EGRESS_DENY)) return undefined;
  return egressDenied(target, parent);
}

function opaqueRoutes(state: OutboundPolicyState | undefined): readonly OpaqueRoute[] {
  if (state?.kind !== "policy") return [];
  const protocol = state.protocol;
  if (protocol.kind === "detect") return protocol.opaque;
  if (protocol.kind === "opaque") return protocol.routes;
  return [];
}

/**
 * The TCP view of an outbound policy (for `connect` and for TLS the application does itself): refused
 * when the opaque route forbids it, otherwise the backend its first rule names, if any.
 */
export function opaqueDecision(
  target: string,
  state: OutboundPolicyState | undefined,
):
  | { readonly denied: MeshError }
  | { readonly denied?: undefined; readonly backend: BackendTarget | undefined } {
  const rule = opaqueRoutes(state)[0]?.rules[0];
  if (!rule) return { backend: undefined };
  if (rule.filters.some((filter) => filter.kind === "forbidden" || filter.kind === "invalid")) {
    return { denied: egressDenied(target, parentOf(state)) };
  }
  const distribution = rule.backends;
  const first =
    distribution.kind === "first-available" || distribution.kind === "random-available"
      ? distribution.backends[0]
      : undefined;
  return { backend: first?.backend.target };
}

/** The EgressNetwork an address's policy comes from, as metric labels; undefined for anything else. */
export function egressParent(
  state: OutboundPolicyState | undefined,
): { group: string; kind: string; name: string; namespace: string } | undefined {
  const parent = parentOf(state);
  if (!parent || parent.isDefault || parent.kind !== "EgressNetwork") return undefined;
  return { group: parent.group, kind: parent.kind, name: parent.name, namespace: parent.namespace };
}
