import { constants } from "node:os";
import { isMeshError, MeshErrorCode, type PeerIdentity, type ResourceLabels } from "@inmesh/core";
import { type LabelPairs, sanitizeLabelName } from "./registry.js";

/** Label values that could come from a peer are mapped onto these fixed sets. */
const INVALID = "invalid";
const errnoNames = new Set(Object.keys(constants.errno));
const meshErrorCodes = new Set<string>(Object.values(MeshErrorCode));
/** Discovery labels are from the control plane, not attackers, but a bad controller must not blow up a scrape. */
const MAX_DISCOVERY_LABELS = 16;

export function statusCodeLabel(statusCode: number | undefined): string | undefined {
  if (statusCode === undefined) return undefined;
  return Number.isInteger(statusCode) && statusCode >= 100 && statusCode <= 599
    ? String(statusCode)
    : INVALID;
}

export function grpcStatusLabel(grpcStatus: number | undefined): string | undefined {
  if (grpcStatus === undefined) return undefined;
  return Number.isInteger(grpcStatus) && grpcStatus >= 0 && grpcStatus <= 16 ? String(grpcStatus) : INVALID;
}

export function errnoLabel(errno: string | undefined): string {
  if (errno === undefined || errno === "") return "";
  return errnoNames.has(errno) ? errno : "unknown";
}

/** A bounded name for an error: a MeshError code, an errno name, or `unexpected`. */
export function errorLabel(error: unknown): string | undefined {
  if (error === undefined || error === null) return undefined;
  if (isMeshError(error) && meshErrorCodes.has(error.code)) return error.code;
  const code = (error as { code?: unknown }).code;
  if (typeof code === "string" && errnoNames.has(code)) return code;
  const name = (error as { name?: unknown }).name;
  if (name === "TimeoutError") return MeshErrorCode.DEADLINE;
  if (name === "AbortError") return MeshErrorCode.CANCELED;
  return "unexpected";
}

/**
 * linkerd2-proxy's legacy classification: an error or a 5xx is a failure; for gRPC any status but OK is.
 */
export function classification(
  protocol: "http" | "grpc",
  statusCode: number | undefined,
  grpcStatus: number | undefined,
  error: unknown,
): "success" | "failure" {
  if (error !== undefined && error !== null) return "failure";
  if (protocol === "grpc" && grpcStatus !== undefined) return grpcStatus === 0 ? "success" : "failure";
  if (statusCode === undefined) return "failure";
  return statusCode >= 500 ? "failure" : "success";
}

/** Splits `ip`, `ip:port` or `[ip6]:port`; returns undefined pieces when they are absent. */
export function splitAddress(text: string | undefined): { ip: string | undefined; port: string | undefined } {
  if (!text) return { ip: undefined, port: undefined };
  const bracketed = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(text);
  if (bracketed) return { ip: bracketed[1], port: bracketed[2] };
  const colons = text.split(":").length - 1;
  if (colons === 1) {
    const [ip, port] = text.split(":");
    return { ip, port: /^\d{1,5}$/.test(port ?? "") ? port : undefined };
  }
  return { ip: text, port: undefined };
}

export function targetLabels(address: string | undefined, port: number | undefined): LabelPairs {
  const split = splitAddress(address);
  const targetPort = port !== undefined ? String(port) : split.port;
  const ip = split.ip;
  const addr = ip === undefined ? undefined : `${ip.includes(":") ? `[${ip}]` : ip}:${targetPort ?? "0"}`;
  return [
    ["target_addr", addr],
    ["target_ip", ip],
    ["target_port", targetPort],
  ];
}

/** Server-side TLS labels ([LC] §4.5). */
export function serverTlsLabels(peer: PeerIdentity | undefined): LabelPairs {
  if (!peer) return [];
  switch (peer.kind) {
    case "mesh":
      return [
        ["tls", "true"],
        ["client_id", peer.name],
      ];
    case "tls-anonymous":
      return [
        ["tls", "true"],
        ["client_id", ""],
      ];
    default:
      if (peer.reason === "passthru")
        return [
          ["tls", "opaque"],
          ["sni", peer.sni],
        ];
      return [
        ["tls", "no_identity"],
        ["no_tls_reason", peer.reason],
      ];
  }
}

/** Client-side TLS labels ([LC] §4.5). */
export function clientTlsLabels(serverIdentity: string | undefined, loopback = false): LabelPairs {
  if (serverIdentity !== undefined && serverIdentity !== "")
    return [
      ["tls", "true"],
      ["server_id", serverIdentity],
    ];
  return [
    ["tls", "no_identity"],
    ["no_tls_reason", loopback ? "loopback" : "not_provided_by_service_discovery"],
  ];
}

export function resourceLabels(
  prefix: "srv" | "route" | "authz",
  resource: ResourceLabels | undefined,
): LabelPairs {
  if (!resource) return [];
  return [
    [`${prefix}_group`, resource.group],
    [`${prefix}_kind`, resource.kind],
    [`${prefix}_name`, resource.name],
  ];
}

/** Discovery labels as `dst_*`, sorted so the same endpoint always yields the same series. */
export function discoveryLabels(labels: Readonly<Record<string, string>> | undefined): LabelPairs {
  if (!labels) return [];
  return Object.keys(labels)
    .sort()
    .slice(0, MAX_DISCOVERY_LABELS)
    .map((key) => [`dst_${sanitizeLabelName(key)}`, String(labels[key])] as const);
}
