import { isIPv4, isIPv6 } from "node:net";
import { ConfigError } from "./errors.js";

/** An IP network with the address held as a bigint (32 bits for IPv4, 128 for IPv6). */
export interface Cidr {
  readonly family: 4 | 6;
  readonly address: bigint;
  readonly prefixLength: number;
}

/** Parses an IPv4 or IPv6 address into its numeric value, or returns undefined. */
export function parseIpAddress(text: string): { family: 4 | 6; value: bigint } | undefined {
  if (isIPv4(text)) {
    let value = 0n;
    for (const octet of text.split(".")) value = (value << 8n) | BigInt(Number(octet));
    return { family: 4, value };
  }
  if (!isIPv6(text)) return undefined;
  let input = text.toLowerCase();
  const zone = input.indexOf("%");
  if (zone >= 0) input = input.slice(0, zone);
  // A trailing dotted IPv4 part (::ffff:1.2.3.4) becomes two hextets.
  const lastColon = input.lastIndexOf(":");
  const tail = input.slice(lastColon + 1);
  if (tail.includes(".")) {
    const v4 = parseIpAddress(tail);
    if (!v4) return undefined;
    const high = (v4.value >> 16n).toString(16);
    const low = (v4.value & 0xffffn).toString(16);
    input = `${input.slice(0, lastColon + 1)}${high}:${low}`;
  }
  const [head = "", rest] = input.split("::");
  const headParts = head === "" ? [] : head.split(":");
  const restParts = rest === undefined || rest === "" ? [] : rest.split(":");
  const missing = 8 - headParts.length - restParts.length;
  const hextets = rest === undefined ? headParts : [...headParts, ...Array(missing).fill("0"), ...restParts];
  if (hextets.length !== 8) return undefined;
  let value = 0n;
  for (const hextet of hextets) value = (value << 16n) | BigInt(Number.parseInt(hextet, 16));
  return { family: 6, value };
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
