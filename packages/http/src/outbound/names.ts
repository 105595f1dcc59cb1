import { isIP } from "node:net";
import { isLoopbackHost } from "@inmesh/core";

/** How the pod's resolver would read a name: its namespace and cluster domain (resolv.conf search path). */
export interface NameContext {
  /** `.svc.<clusterDomain>`. */
  readonly clusterSuffix: string;
  readonly clusterDomain: string;
  /** The pod's namespace, for one-label names (`books`); undefined turns the search path off. */
  readonly searchNamespace: string | undefined;
}

/** What an outbound target names, decided from the host alone (no I/O). */
export type OutboundName =
  /** A Service (`books.bookshop.svc.cluster.local:80`); `searched` when completed from a short name. */
  | {
      readonly kind: "service";
      readonly authority: string;
      readonly searched: boolean;
      /** The host as the application wrote it. */
      readonly written: string;
      readonly host: string;
      readonly port: number;
    }
  /** An IP the application addressed: a cluster IP, a pod IP or an external address. */
  | { readonly kind: "address"; readonly authority: string; readonly ip: string; readonly port: number }
  /** Any other DNS name: resolved, then treated as its address (egress). */
  | { readonly kind: "external"; readonly authority: string; readonly host: string; readonly port: number };

const DNS_NAME = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

/**
 * Classifies `host` and `port` the way a pod's traffic would be meshed. Loopback (`localhost`, 127/8,
 * ::1) is never intercepted by Linkerd and returns undefined. Short names follow the search path a pod
 * gets (`<ns>.svc.<domain>`, `svc.<domain>`, `<domain>`): `books` → `books.<ns>.svc.<domain>`,
 * `books.bookshop` → `books.bookshop.svc.<domain>`, `books.bookshop.svc` → `books.bookshop.svc.<domain>`.
 * A name with a trailing dot is absolute and never searched.
 */
export function classifyHost(rawHost: string, port: number, context: NameContext): OutboundName | undefined {
  let host = rawHost.toLowerCase();
  if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
  if (host === "" || !(port >= 1 && port <= 65535)) return undefined;
  if (isIP(host) !== 0) {
    if (isLoopbackHost(host)) return undefined;
    const authority = isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
    return { kind: "address", authority, ip: host, port };
  }
  const absolute = host.endsWith(".");
  if (absolute) host = host.slice(0, -1);
  if (!DNS_NAME.test(host) || host === "localhost" || host.endsWith(".localhost")) return undefined;
  const { clusterSuffix, clusterDomain, searchNamespace } = context;
  if (host.endsWith(clusterSuffix)) {
    // At least `<svc>.<ns>` before `.svc.<domain>`.
    const labels = host.slice(0, -clusterSuffix.length).split(".");
    if (labels.length >= 2) return service(host, host, port, false);
  }
  if (!absolute && searchNamespace !== undefined) {
    const labels = host.split(".");
    if (labels.length === 1) return service(`${host}.${searchNamespace}${clusterSuffix}`, host, port, true);
    if (labels.length === 2) return service(`${host}${clusterSuffix}`, host, port, true);
    if (labels.length === 3 && labels[2] === "svc")
      return service(`${host}.${clusterDomain}`, host, port, true);
  }
  return { kind: "external", authority: `${host}:${port}`, host, port };
}

function service(host: string, written: string, port: number, searched: boolean): OutboundName {
  return { kind: "service", authority: `${host}:${port}`, searched, written, host, port };
}

/** Classifies an `http:` or `https:` origin (URL or string); undefined for anything else. */
export function classifyOrigin(
  origin: unknown,
  context: NameContext,
): { readonly name: OutboundName; readonly secure: boolean } | undefined {
  let url: URL;
  if (origin instanceof URL) url = origin;
  else if (typeof origin === "string") {
    try {
      url = new URL(origin);
    } catch {
      return undefined;
    }
  } else return undefined;
  const secure = url.protocol === "https:";
  if (!secure && url.protocol !== "http:") return undefined;
  const port = url.port === "" ? (secure ? 443 : 80) : Number(url.port);
  const name = classifyHost(url.hostname, port, context);
  return name ? { name, secure } : undefined;
}

/** Parses `host:port` (`[v6]:port` for IPv6), as `mesh.connect` and the agent take targets. */
export function splitHostPort(target: string): { host: string; port: number } | undefined {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^\s:[\]/]+)):(\d{1,5})$/.exec(target.trim());
  if (!match) return undefined;
  const port = Number(match[3]);
  if (port < 1 || port > 65535) return undefined;
  return { host: (match[1] ?? match[2]) as string, port };
}
