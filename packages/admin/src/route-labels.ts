import { isMeshError, MeshErrorCode, type ResourceLabels } from "@inmesh/core";
import type { LabelPairs } from "./registry.js";

/**
 * Labels of linkerd2-proxy's outbound route families (`outbound/src/metrics.rs`, `route/metrics/
 * labels.rs`): `parent_*` (the Service addressed), `route_*`, `backend_*`, and on the statuses families
 * `http_status` or `grpc_status` plus `error`. linkerd-viz's `stat-outbound` groups by `parent_name`,
 * `parent_port`, `route_name`, `route_kind`, `backend_name`, `backend_port`, the status and `error`.
 */

const SERVICE_AUTHORITY = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.svc(\.[^:]*)?$/;

export interface ParentRef {
  readonly labels: LabelPairs;
  readonly namespace: string;
  readonly port: string;
  readonly hostname: string;
}

/** The parent a call addressed: a Service from `<svc>.<ns>.svc.<domain>:<port>`, else a default parent. */
export function parentRef(authority: string): ParentRef {
  const colon = authority.lastIndexOf(":");
  const hasPort = colon > 0 && !authority.endsWith("]") && /^\d{1,5}$/.test(authority.slice(colon + 1));
  const host = (hasPort ? authority.slice(0, colon) : authority).toLowerCase().replace(/\.$/, "");
  const port = hasPort ? authority.slice(colon + 1) : "80";
  const service = SERVICE_AUTHORITY.exec(host);
  if (service) {
    const name = service[1] as string;
    const namespace = service[3] as string;
    return {
      labels: serviceLabels("parent", "core", "Service", namespace, name, port),
      namespace,
      port,
      hostname: host,
    };
  }
  return {
    labels: serviceLabels("parent", "", "default", "", host, port),
    namespace: "",
    port,
    hostname: host,
  };
}

function serviceLabels(
  scope: string,
  group: string,
  kind: string,
  namespace: string,
  name: string,
  port: string,
): LabelPairs {
  return [
    [`${scope}_group`, group],
    [`${scope}_kind`, kind],
    [`${scope}_namespace`, namespace],
    [`${scope}_name`, name],
    [`${scope}_port`, port],
    [`${scope}_section_name`, ""],
  ];
}

/**
 * The route that matched. The controller's synthesized routes (a `default` metadata, or no route at all)
 * are `route_kind="default"` with an empty group and namespace, as the proxy labels `Meta::Default`.
 */
export function routeLabels(
  route: ResourceLabels | undefined,
  namespace: string,
  protocol: "http" | "grpc",
): LabelPairs {
  const extra = route as
    | (ResourceLabels & { readonly namespace?: unknown; readonly isDefault?: unknown })
    | undefined;
  if (route === undefined || extra?.isDefault === true || route.kind === "") {
    return [
      ["route_group", ""],
      ["route_kind", "default"],
      ["route_namespace", ""],
      ["route_name", route?.name || protocol],
    ];
  }
  const routeNamespace =
    typeof extra?.namespace === "string" && extra.namespace !== "" ? extra.namespace : namespace;
  return [
    ["route_group", route.group],
    ["route_kind", route.kind],
    ["route_namespace", routeNamespace],
    ["route_name", route.name],
  ];
}

/** The backend the attempt went to: the Service discovery named for the endpoint set, else the parent. */
export function backendLabels(
  endpointLabels: Readonly<Record<string, string>> | undefined,
  parent: ParentRef,
): LabelPairs {
  const service = endpointLabels?.service;
  const namespace = endpointLabels?.namespace;
  if (service !== undefined && namespace !== undefined) {
    return serviceLabels("backend", "core", "Service", namespace, service, parent.port);
  }
  return parent.labels.map(([name, value]) => [name.replace(/^parent_/, "backend_"), value] as const);
}

const GRPC_STATUS_NAMES = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
] as const;

/** `grpc_status` as the proxy spells it (`OK`, `UNAVAILABLE`…); empty when no status arrived. */
export function grpcStatusName(code: number | undefined): string {
  if (code === undefined) return "";
  return Number.isInteger(code) && code >= 0 && code <= 16 ? (GRPC_STATUS_NAMES[code] as string) : "UNKNOWN";
}

/** `http_status`: the status code, empty when the request ended in an error before a response. */
export function httpStatusValue(statusCode: number | undefined): string {
  return statusCode !== undefined && Number.isInteger(statusCode) && statusCode >= 100 && statusCode <= 599
    ? String(statusCode)
    : "";
}

/** The proxy's route `error` label values; empty when there was none. */
export function routeErrorValue(error: unknown): string {
  if (error === undefined || error === null) return "";
  if (isMeshError(error)) {
    switch (error.code) {
      case MeshErrorCode.DEADLINE:
        return "REQUEST_TIMEOUT";
      case MeshErrorCode.CANCELED:
        return "CANCEL";
      case MeshErrorCode.DESTINATION_NO_ENDPOINTS:
      case MeshErrorCode.DESTINATION_UNREACHABLE:
      case MeshErrorCode.DESTINATION_NOT_FOUND:
      case MeshErrorCode.IDENTITY_EXPIRED:
      case MeshErrorCode.IDENTITY_NOT_READY:
        return "FAIL_FAST";
      default:
        return "UNKNOWN";
    }
  }
  const name = (error as { name?: unknown }).name;
  if (name === "TimeoutError") return "REQUEST_TIMEOUT";
  if (name === "AbortError") return "CANCEL";
  const code = (error as { code?: unknown }).code;
  if (code === "ECONNREFUSED" || code === "ECONNRESET" || code === "EPIPE" || code === "ETIMEDOUT")
    return "IO";
  return "UNKNOWN";
}
