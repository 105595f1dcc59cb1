import { isIPv4 } from "node:net";
import { ConfigError } from "./errors.js";

/** An IP network with the address held as a bigint (32 bits for IPv4, 128 for IPv6). */
export interface Cidr {
  readonly family: 4 | 6;
  readonly address: bigint;
  readonly prefixLength: number;
}

/**
 * Dotted IPv4 text (as net.isIPv4 accepts it: no leading zeros) as its unsigned 32-bit value, or
 * undefined. Plain number arithmetic, for callers on a connection's path (clientFacts).
 */
export function ipv4Word(text: string): number | undefined {
  if (!isIPv4(text)) return undefined;
  let word = 0;
  let octet = 0;
  for (let i = 0; i < text.length; i += 1) {
    const code = text.charCodeAt(i);
    if (code === 0x2e) {
      word = word * 256 + octet;
      octet = 0;
    } else {
      octet = octet * 10 + (code - 0x30);
    }
  }
  return word * 256 + octet;
}

/** Parses an IPv4 or IPv6 address into its numeric value, or returns undefined. */
export function parseIpAddress(text: string): { family: 4 | 6; value: bigint } | undefined {
  const v4 = ipv4Word(text);
  if (v4 !== undefined) return { family: 4, value: BigInt(v4) };
  const hextets = ipv6Hextets(text);
  if (hextets === undefined) return undefined;
  let value = 0n;
  for (const hextet of hextets) value = (value << 16n) | BigInt(hextet);
  return { family: 6, value };
}

const HEXTET = /^[0-9a-f]{1,4}$/i;
const ZONE = /^[0-9a-z.:-]+$/i;

/**
 * The eight 16-bit groups of IPv6 text (RFC 4291 §2.2: hextets, at most one `::`, a dotted IPv4 tail),
 * with a `%zone` suffix dropped; undefined for anything net.isIPv6 refuses. Read here rather than
 * checked with net.isIPv6 first: that call compiles a large regular expression the first time, ~5 ms
 * of every meshed service's start (S11), where this needs two small ones.
 */
function ipv6Hextets(text: string): number[] | undefined {
  const zone = text.indexOf("%");
  if (zone >= 0 && !ZONE.test(text.slice(zone + 1))) return undefined;
  const address = zone >= 0 ? text.slice(0, zone) : text;
  const halves = address.split("::");
  if (halves.length > 2) return undefined;
  const compressed = halves.length === 2;
  const head = groupsOf(halves[0] as string, !compressed);
  const tail = compressed ? groupsOf(halves[1] as string, true) : [];
  if (head === undefined || tail === undefined) return undefined;
  const explicit = head.length + tail.length;
  if (compressed ? explicit > 7 : explicit !== 8) return undefined;
  return [...head, ...new Array<number>(8 - explicit).fill(0), ...tail];
}

/** `a:b:c` into its groups; a dotted IPv4 last group (when `lastMayBeIpv4`) counts as two. */
function groupsOf(part: string, lastMayBeIpv4: boolean): number[] | undefined {
  if (part === "") return [];
  const fields = part.split(":");
  const groups: number[] = [];
  for (let i = 0; i < fields.length; i += 1) {
    const field = fields[i] as string;
    if (HEXTET.test(field)) {
      groups.push(Number.parseInt(field, 16));
      continue;
    }
    const v4 = lastMayBeIpv4 && i === fields.length - 1 ? ipv4Word(field) : undefined;
    if (v4 === undefined) return undefined;
    groups.push(v4 >>> 16, v4 & 0xffff);
  }
  return groups;
}

/** Parses `10.0.0.0/8`, `fd00::/8`, or a bare address (a /32 or /128). Throws ConfigError when invalid. */
export function parseCidr(text: string): Cidr {
  const trimmed = text.trim();
  const slash = trimmed.indexOf("/");
  const addressText = slash < 0 ? trimmed : trimmed.slice(0, slash);
  const ip = parseIpAddress(addressText);
  if (!ip) throw new ConfigError(`invalid network "${text}": not an IP address`);
  const maxPrefix = ip.family === 4 ? 32 : 128;
  let prefixLength = maxPrefix;
  if (slash >= 0) {
    const prefixText = trimmed.slice(slash + 1);
    if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > maxPrefix) {
      throw new ConfigError(`invalid network "${text}": prefix length must be 0..${maxPrefix}`);
    }
    prefixLength = Number(prefixText);
  }
  const bits = BigInt(maxPrefix - prefixLength);
  const address = (ip.value >> bits) << bits;
  return { family: ip.family, address, prefixLength };
}

export function cidrContains(network: Cidr, family: 4 | 6, value: bigint): boolean {
  if (network.family !== family) return false;
  const bits = BigInt((family === 4 ? 32 : 128) - network.prefixLength);
  return value >> bits === network.address >> bits;
}

export function formatCidr(network: Cidr): string {
  return `${formatIpAddress(network.family, network.address)}/${network.prefixLength}`;
}

export function formatIpAddress(family: 4 | 6, value: bigint): string {
  if (family === 4) {
    return [24n, 16n, 8n, 0n].map((shift) => ((value >> shift) & 0xffn).toString()).join(".");
  }
  const hextets: string[] = [];
  for (let shift = 112n; shift >= 0n; shift -= 16n) hextets.push(((value >> shift) & 0xffffn).toString(16));
  // Compress the longest run of zero hextets, as RFC 5952 asks.
  let bestStart = -1;
  let bestLength = 0;
  for (let i = 0; i < 8; ) {
    if (hextets[i] !== "0") {
      i += 1;
      continue;
    }
    let j = i;
    while (j < 8 && hextets[j] === "0") j += 1;
    if (j - i > bestLength && j - i > 1) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  if (bestStart < 0) return hextets.join(":");
  const left = hextets.slice(0, bestStart).join(":");
  const right = hextets.slice(bestStart + bestLength).join(":");
  return `${left}::${right}`;
}

export function isLoopbackHost(host: string): boolean {
  const bare = host
    .replace(/^\[|\]$/g, "")
    .replace(/\.$/, "")
    .toLowerCase();
  if (bare === "localhost") return true;
  const ip = parseIpAddress(bare);
  if (!ip) return false;
  if (ip.family === 4) return ip.value >> 24n === 127n;
  return ip.value === 1n;
}
