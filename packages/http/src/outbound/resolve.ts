import { hasMeshErrorCode, isLoopbackHost, MeshErrorCode } from "@inmesh/core";
import type { AddressCache } from "./dns.js";
import { classifyHost, type NameContext, type OutboundName } from "./names.js";
import type { TargetRegistry } from "./targets.js";

/** Where an outbound call goes once its name is understood. */
export type OutboundDecision =
  /** Not meshed (loopback, or no policy controller to ask about addresses): sent as addressed. */
  | { readonly kind: "passthrough" }
  /** A Service: discovery, balancing, mTLS. */
  | {
      readonly kind: "service";
      readonly authority: string;
      /** The Host the application wrote, when a short name was completed. */
      readonly hostHeader?: string | undefined;
    }
  /** An address (typed, or an external name resolved): its OutboundPolicy, looked up by address, decides. */
  | {
      readonly kind: "address";
      /** The Host the application addressed. */
      readonly authority: string;
      readonly address: { readonly key: string; readonly ip: string; readonly port: number };
    };

const PASSTHROUGH: OutboundDecision = Object.freeze({ kind: "passthrough" });
/** How long a short name that named no Service is remembered as external. */
const ABSENT_TTL_MS = 30_000;
const MAX_REMEMBERED = 1024;

export interface ResolverOptions {
  readonly names: NameContext;
  readonly discoveryTimeoutMs: number;
  /** Whether addresses and external names can be looked up (a policy controller is configured). */
  readonly policyByAddress: boolean;
}

/**
 * Turns a classified name into a decision. Full Service names and typed addresses decide at once;
 * a short name waits (bounded) for discovery to say whether the Service exists, else it is the
 * external name it would resolve to in a pod; an external name waits for its address.
 */
export class OutboundResolver {
  readonly #registry: TargetRegistry;
  readonly #options: ResolverOptions;
  readonly #dns: AddressCache;
  readonly #absent = new Map<string, number>();

  constructor(registry: TargetRegistry, options: ResolverOptions, dns: AddressCache) {
    this.#registry = registry;
    this.#options = options;
    this.#dns = dns;
  }

  /** The decision if it needs no waiting, else undefined (call `resolve`). */
  now(name: OutboundName): OutboundDecision | undefined {
    switch (name.kind) {
      case "service":
        if (!name.searched) return this.#fullName(name);
        return this.#isAbsent(name.authority) ? undefined : this.#knownService(name);
      case "address":
        return this.#options.policyByAddress
          ? this.#address(name.authority, name.ip, name.port)
          : PASSTHROUGH;
      case "external": {
        if (!this.#options.policyByAddress) return PASSTHROUGH;
        const ip = this.#dns.cached(name.host);
        return ip === undefined ? undefined : this.#addressOf(name.authority, ip, name.port);
      }
    }
  }

  /** `originalHost` is the host as the application wrote it (for a short name found to be external). */
  async resolve(name: OutboundName, originalHost: string): Promise<OutboundDecision> {
    const immediate = this.now(name);
    if (immediate) return immediate;
    if (name.kind === "service") {
      if (!this.#isAbsent(name.authority) && (await this.#serviceExists(name.authority)))
        return searchedService(name);
      // Searched and not a Service: the resolver would try the name itself next.
      const absolute = classifyHost(`${originalHost.replace(/\.$/, "")}.`, name.port, this.#options.names);
      if (!absolute) return PASSTHROUGH;
      return this.resolve(absolute, originalHost);
    }
    if (name.kind === "external") {
      const ip = await this.#dns.resolve(name.host, this.#options.discoveryTimeoutMs);
      return this.#addressOf(name.authority, ip, name.port);
    }
    return PASSTHROUGH;
  }

  // Names come from a bounded per-origin cache, so their decisions can be kept with them.
  readonly #decisions = new WeakMap<OutboundName, OutboundDecision>();

  #fullName(name: Extract<OutboundName, { kind: "service" }>): OutboundDecision {
    let decision = this.#decisions.get(name);
    if (!decision) {
      decision = Object.freeze({ kind: "service", authority: name.authority });
      this.#decisions.set(name, decision);
    }
    return decision;
  }

  #knownService(name: Extract<OutboundName, { kind: "service" }>): OutboundDecision | undefined {
    // Known once discovery answered; until then the caller waits in `resolve`.
    const target = this.#registry.peek(name.authority);
    return target?.isReady && target.group.exists ? searchedService(name) : undefined;
  }

  async #serviceExists(authority: string): Promise<boolean> {
    const target = this.#registry.target(authority);
    try {
      // A fresh signal: AbortSignal.any over one long-lived signal would pile up dependants on it.
      await target.ready(new AbortController().signal, this.#options.discoveryTimeoutMs);
    } catch (error) {
      if (!hasMeshErrorCode(error, MeshErrorCode.DESTINATION_NOT_FOUND)) throw error;
      this.#remember(authority);
      return false;
    }
    if (target.group.exists) return true;
    this.#remember(authority);
    return false;
  }

  #remember(authority: string): void {
    if (this.#absent.size >= MAX_REMEMBERED) this.#absent.clear();
    this.#absent.set(authority, performance.now() + ABSENT_TTL_MS);
  }

  #isAbsent(authority: string): boolean {
    const until = this.#absent.get(authority);
    if (until === undefined) return false;
    if (until > performance.now()) return true;
    this.#absent.delete(authority);
    return false;
  }

  #addressOf(authority: string, ip: string, port: number): OutboundDecision {
    // A name that resolves to loopback never leaves the pod through the proxy.
    if (isLoopbackHost(ip)) return PASSTHROUGH;
    return { kind: "address", authority, address: addressKey(ip, port) };
  }

  #address(authority: string, ip: string, port: number): OutboundDecision {
    return { kind: "address", authority, address: addressKey(ip, port) };
  }
}

function searchedService(name: Extract<OutboundName, { kind: "service" }>): OutboundDecision {
  return { kind: "service", authority: name.authority, hostHeader: `${name.written}:${name.port}` };
}

function addressKey(ip: string, port: number): { key: string; ip: string; port: number } {
  return { key: ip.includes(":") ? `[${ip}]:${port}` : `${ip}:${port}`, ip, port };
}
