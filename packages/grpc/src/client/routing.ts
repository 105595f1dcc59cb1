import { Metadata, status as Status, type StatusObject } from "@grpc/grpc-js";
import { MeshError, type MeshErrorCode, secureRandom } from "@inmesh/core";
import type {
  FailureAccrualPolicy,
  GrpcFilter,
  HeaderModifier,
  HttpFilter,
  OpaqueFilter,
  OutboundPolicyState,
} from "@inmesh/destination";

type AnyFilter = HttpFilter | GrpcFilter | OpaqueFilter;

/** Marks a status the mesh produced (not the server), with its MESH_ERR code. */
export const MESH_ERROR_METADATA_KEY = "inmesh-error-code";

/** linkerd2-proxy names the error of a response it synthesized in this header (and in `grpc-message`). */
export const L5D_PROXY_ERROR = "l5d-proxy-error";

/** grpc-js refuses text metadata outside printable ASCII; an error message may hold anything. */
function headerText(text: string): string {
  const printable = text.replace(/[^\x20-\x7e]/g, "?");
  return printable.length > 1024 ? `${printable.slice(0, 1021)}...` : printable;
}

/** A status the mesh made up: `details` as `[MESH_ERR_*] message`, the code in {@link MESH_ERROR_METADATA_KEY}. */
export function meshStatus(code: Status, error: MeshError): StatusObject {
  const metadata = new Metadata();
  metadata.set(MESH_ERROR_METADATA_KEY, error.code);
  metadata.set(L5D_PROXY_ERROR, headerText(error.message));
  return { code, details: `[${error.code}] ${error.message}`, metadata };
}

/**
 * A status linkerd2-proxy would answer with (no route, injected failure): its code and `grpc-message`
 * as the proxy sends them, with `l5d-proxy-error`, and our code when the proxy reports an error.
 */
export function proxyStatus(code: Status, message: string, meshCode?: MeshErrorCode): StatusObject {
  const metadata = new Metadata();
  if (meshCode !== undefined) metadata.set(MESH_ERROR_METADATA_KEY, meshCode);
  metadata.set(L5D_PROXY_ERROR, headerText(message));
  return { code, details: message, metadata };
}

/** Whether the mesh, not the server, produced this status (the retry interceptor never retries those by code). */
export function isSynthesized(status: StatusObject): boolean {
  return status.metadata !== undefined && status.metadata.get(L5D_PROXY_ERROR).length > 0;
}

/** Linkerd answers a call no GRPCRoute matches with NOT_FOUND (`SyntheticHttpResponse::not_found`, "no route"). */
export function noRouteStatus(authority: string): StatusObject {
  return proxyStatus(Status.NOT_FOUND, `logical service ${authority}: no route`);
}

/** The first failure-injector filter that fires for this call, as its gRPC status. */
export function injectedFailure(filters: readonly AnyFilter[]): StatusObject | undefined {
  for (const filter of filters) {
    if (filter.kind !== "failure-injector" || !(secureRandom() < filter.ratio)) continue;
    // An HTTP injector on a gRPC call: Linkerd's synthetic response carries INTERNAL with the message.
    const code = "code" in filter ? filter.code : Status.INTERNAL;
    return proxyStatus(code as Status, filter.message);
  }
  return undefined;
}

function hasHeaderModifiers(filters: readonly AnyFilter[]): boolean {
  for (const filter of filters) if (filter.kind === "request-header-modifier") return true;
  return false;
}

/** grpc-js metadata takes lowercase `[0-9a-z_.-]` names and printable ASCII values; HTTP allows more. */
const METADATA_NAME = /^[0-9a-z_.-]+$/;
const METADATA_VALUE = /^[\x20-\x7e]*$/;

function legal(name: string, value?: string): boolean {
  return (
    METADATA_NAME.test(name) &&
    !name.endsWith("-bin") &&
    !name.startsWith("grpc-") &&
    (value === undefined || METADATA_VALUE.test(value))
  );
}

function applyModifier(metadata: Metadata, modifier: HeaderModifier): void {
  // Gateway API order: set replaces, add appends, remove deletes. What grpc-js metadata cannot carry
  // (binary names, reserved grpc-* names, non-ASCII values) is left out rather than failing the call.
  for (const [name, value] of modifier.set) if (legal(name, value)) metadata.set(name, value);
  for (const [name, value] of modifier.add) if (legal(name, value)) metadata.add(name, value);
  for (const name of modifier.remove) if (legal(name)) metadata.remove(name);
}

/**
 * The request metadata after the route's and the backend's request-header-modifier filters (a copy when
 * any applies, so the caller's metadata and the next attempt's are untouched).
 */
export function modifyRequestMetadata(metadata: Metadata, filters: readonly AnyFilter[]): Metadata {
  if (!hasHeaderModifiers(filters)) return metadata;
  const copy = metadata.clone();
  for (const filter of filters) if (filter.kind === "request-header-modifier") applyModifier(copy, filter);
  return copy;
}

/**
 * Failure accrual of the policy for gRPC calls (HTTP/2): the `grpc` protocol's, `detect`'s HTTP/2 set,
 * or `http2`'s; off otherwise.
 */
export function grpcFailureAccrual(policy: OutboundPolicyState | undefined): FailureAccrualPolicy {
  if (policy?.kind !== "policy") return NO_ACCRUAL;
  const protocol = policy.protocol;
  switch (protocol.kind) {
    case "grpc":
    case "http2":
      return protocol.failureAccrual;
    case "detect":
      return protocol.http2.failureAccrual;
    default:
      return NO_ACCRUAL;
  }
}

const NO_ACCRUAL: FailureAccrualPolicy = Object.freeze({ kind: "none" });

/** Backend discovery paths the policy's routes name (groups for other paths can be closed). */
export function backendPaths(policy: OutboundPolicyState | undefined): Set<string> {
  const paths = new Set<string>();
  if (policy?.kind !== "policy") return paths;
  const protocol = policy.protocol;
  const routes =
    protocol.kind === "grpc" || protocol.kind === "http2"
      ? protocol.routes
      : protocol.kind === "detect"
        ? protocol.http2.routes
        : [];
  for (const route of routes) {
    for (const rule of route.rules) {
      const distribution = rule.backends;
      if (distribution.kind === "empty") continue;
      for (const backend of distribution.backends) {
        const target = backend.backend.target;
        if (target.kind === "balancer") paths.add(target.path.toLowerCase());
      }
    }
  }
  return paths;
}

/** Linkerd's Display of a `Duration` in its timeout errors (`500ms`, `2s`). */
export function formatDuration(ms: number): string {
  return ms >= 1000 && ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`;
}

export function timeoutError(
  kind: "request" | "response" | "idle",
  timeoutMs: number,
  responseStarted: boolean,
  authority: string,
): MeshError {
  const what =
    kind === "request"
      ? `request timeout: ${formatDuration(timeoutMs)}`
      : kind === "response"
        ? `response stream timeout: ${formatDuration(timeoutMs)}`
        : `idle timeout: ${formatDuration(timeoutMs)}`;
  const message = responseStarted
    ? `timed out processing response stream: ${what}`
    : `timed out waiting for response headers: ${what}`;
  return new MeshError("MESH_ERR_DEADLINE", message, { details: { authority, timeoutMs, kind } });
}
