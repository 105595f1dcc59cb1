import { ConfigError } from "./errors.js";
import { type Cidr, isLoopbackHost, parseCidr } from "./net.js";

export type Env = Readonly<Record<string, string | undefined>>;

function invalid(variable: string, value: string, why: string): ConfigError {
  return new ConfigError(`${variable}=${JSON.stringify(value)} is invalid: ${why}`, {
    details: { variable },
  });
}

/** Returns the trimmed value, or undefined when unset or blank. */
export function readEnv(env: Env, variable: string): string | undefined {
  const value = env[variable]?.trim();
  return value === undefined || value === "" ? undefined : value;
}

export function requireEnv(env: Env, variable: string): string {
  const value = readEnv(env, variable);
  if (value === undefined)
    throw new ConfigError(`${variable} is required but not set`, { details: { variable } });
  return value;
}

const DURATION_UNITS_MS: Readonly<Record<string, number>> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

/** Parses Linkerd's duration format `<n>(ms|s|m|h|d)` into milliseconds. */
export function parseDurationMs(variable: string, value: string): number {
  const match = /^(\d+)(ms|s|m|h|d)$/.exec(value.trim());
  if (!match) throw invalid(variable, value, "expected a duration like 100ms, 10s, 5m, 1h or 1d");
  return Number(match[1]) * (DURATION_UNITS_MS[match[2] as string] as number);
}

/** Parses a comma-separated list of ports and `a-b` ranges, as Linkerd's port annotations and env do. */
export function parsePortList(variable: string, value: string): ReadonlySet<number> {
  const ports = new Set<number>();
  for (const raw of value.split(",")) {
    const item = raw.trim();
    if (item === "") continue;
    const range = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(item);
    if (!range) throw invalid(variable, value, `"${item}" is not a port or port range`);
    const low = Number(range[1]);
    const high = range[2] === undefined ? low : Number(range[2]);
    if (low < 1 || high > 65535 || low > high) throw invalid(variable, value, `"${item}" is outside 1-65535`);
    if (high - low > 65535) throw invalid(variable, value, "range too large");
    for (let port = low; port <= high; port += 1) ports.add(port);
  }
  return ports;
}

export function parseCidrList(variable: string, value: string): readonly Cidr[] {
  const networks: Cidr[] = [];
  for (const raw of value.split(",")) {
    const item = raw.trim();
    if (item === "") continue;
    try {
      networks.push(parseCidr(item));
    } catch (error) {
      throw invalid(variable, value, (error as Error).message);
    }
  }
  return networks;
}

export function parseBooleanEnv(variable: string, value: string): boolean {
  const lower = value.trim().toLowerCase();
  if (lower === "true" || lower === "1") return true;
  if (lower === "false" || lower === "0") return false;
  throw invalid(variable, value, "expected true or false");
}

export interface HostPort {
  readonly host: string;
  readonly port: number;
}

/** Parses `host:port`, `[v6]:port` and Linkerd's FQDN-with-trailing-dot form `name.:8080`. */
export function parseHostPort(
  variable: string,
  value: string,
  options: {
    /** An address to listen on, where port 0 asks the kernel for a free port (never one to connect to). */
    readonly listen?: boolean;
  } = {},
): HostPort {
  const trimmed = value.trim();
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^\s:[\]]+)):(\d{1,5})$/.exec(trimmed);
  if (!match) throw invalid(variable, value, "expected host:port");
  const port = Number(match[3]);
  const lowest = options.listen === true ? 0 : 1;
  if (port < lowest || port > 65535) throw invalid(variable, value, `port must be ${lowest}-65535`);
  const host = (match[1] ?? match[2] ?? "").replace(/(?<=[^.])\.$/, "");
  return { host, port };
}

/** A control-plane endpoint as the proxy resolves `<NAME>_SVC_ADDR` and `<NAME>_SVC_NAME`. */
export interface ControlPlaneAddress extends HostPort {
  /** Expected server identity and SNI; undefined when the address is loopback (plaintext). */
  readonly serverName: string | undefined;
  readonly plaintext: boolean;
}

/**
 * Mirrors linkerd2-proxy `parse_control_addr`: a loopback address means plaintext, anything else
 * requires a server name, which is both the expected identity and the SNI.
 */
export function parseControlPlaneAddress(env: Env, prefix: string): ControlPlaneAddress | undefined {
  const addrVariable = `${prefix}_SVC_ADDR`;
  const nameVariable = `${prefix}_SVC_NAME`;
  const addr = readEnv(env, addrVariable);
  const name = readEnv(env, nameVariable);
  if (addr === undefined) {
    if (name !== undefined) {
      throw new ConfigError(`${nameVariable} is set but ${addrVariable} is not`, {
        details: { variable: addrVariable },
      });
    }
    return undefined;
  }
  const hostPort = parseHostPort(addrVariable, addr);
  if (isLoopbackHost(hostPort.host)) return { ...hostPort, serverName: name, plaintext: true };
  if (name === undefined) {
    throw new ConfigError(`${nameVariable} is required when ${addrVariable} is not a loopback address`, {
      details: { variable: nameVariable },
    });
  }
  assertDnsName(nameVariable, name);
  return { ...hostPort, serverName: name, plaintext: false };
}

const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** Checks a fully qualified, lower-case DNS-like name such as a Linkerd identity. */
export function isDnsName(name: string): boolean {
  if (name.length === 0 || name.length > 253) return false;
  return name.split(".").every((label) => DNS_LABEL.test(label));
}

export function assertDnsName(variable: string, name: string): void {
  if (!isDnsName(name)) throw invalid(variable, name, "not a lower-case DNS name");
}
