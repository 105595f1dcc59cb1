import type { PeerIdentity } from "./peer.js";

/**
 * A neutral, read-mostly view of one call, shared by the HTTP and gRPC adapters, so mesh logic never
 * depends on Express, Fastify, undici or grpc-js types.
 */
export interface MeshCall {
  readonly protocol: "http" | "grpc";
  readonly direction: "inbound" | "outbound";
  readonly method: string;
  /** Host (and port) the caller addressed: `:authority` or `Host`. */
  readonly authority: string;
  /** Path without the query string. */
  readonly path: string;
  /** Raw query string without the leading `?`, or "" when absent. */
  readonly query: string;
  readonly headers: Headers;
  readonly peer: PeerIdentity;
  /** Client IP address as seen on the socket; IPv4-mapped IPv6 already converted to IPv4. */
  readonly clientAddress: string;
  readonly signal?: AbortSignal;
}

/** Converts `::ffff:10.0.0.1` to `10.0.0.1`, as Linkerd does before matching networks. */
export function normalizeClientAddress(address: string | undefined): string {
  if (!address) return "";
  const lower = address.toLowerCase();
  if (lower.startsWith("::ffff:") && lower.includes(".")) return lower.slice(7);
  return lower;
}
