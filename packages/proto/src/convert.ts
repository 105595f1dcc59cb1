import { ConfigError, formatIpAddress, parseIpAddress } from "@inmesh/core";
import type { Duration } from "./gen/google/protobuf/duration.js";
import type { Timestamp } from "./gen/google/protobuf/timestamp/timestamp.js";
import type { IPAddress, IPNetwork, TcpAddress } from "./gen/net.js";

export function durationFromMs(ms: number): Duration {
  const whole = Math.floor(ms / 1000);
  return { seconds: BigInt(whole), nanos: Math.round((ms - whole * 1000) * 1_000_000) };
}

/** Milliseconds in a Duration, or undefined when absent or negative. */
export function durationToMs(duration: Duration | undefined): number | undefined {
  if (!duration) return undefined;
  const ms = Number(duration.seconds) * 1000 + duration.nanos / 1_000_000;
  return Number.isFinite(ms) && ms >= 0 ? ms : undefined;
}

export function timestampFromMs(ms: number): Timestamp {
  const whole = Math.floor(ms / 1000);
  return { seconds: BigInt(whole), nanos: Math.round((ms - whole * 1000) * 1_000_000) };
}

export function timestampToMs(timestamp: Timestamp | undefined): number | undefined {
  if (!timestamp) return undefined;
  return Number(timestamp.seconds) * 1000 + Math.floor(timestamp.nanos / 1_000_000);
}

const U64 = (1n << 64n) - 1n;

/** `10.0.0.1` → `{ipv4: 0x0A000001}`; IPv6 splits into the high (`first`) and low (`last`) 64 bits. */
export function ipAddressFromString(text: string): IPAddress {
  const ip = parseIpAddress(text);
  if (!ip) throw new ConfigError(`"${text}" is not an IP address`);
  if (ip.family === 4) return { ip: { $case: "ipv4", value: Number(ip.value) } };
  return { ip: { $case: "ipv6", value: { first: ip.value >> 64n, last: ip.value & U64 } } };
}

export function ipAddressToString(address: IPAddress | undefined): string | undefined {
  const ip = address?.ip;
  if (!ip) return undefined;
  if (ip.$case === "ipv4") return formatIpAddress(4, BigInt(ip.value >>> 0));
  return formatIpAddress(6, ((ip.value.first & U64) << 64n) | (ip.value.last & U64));
}

export function tcpAddressFromString(host: string, port: number): TcpAddress {
  return { ip: ipAddressFromString(host), port };
}

/** `host:port` (IPv6 in brackets), or undefined when the address is absent. */
export function tcpAddressToString(address: TcpAddress | undefined): string | undefined {
  const host = ipAddressToString(address?.ip);
  if (host === undefined || address === undefined) return undefined;
  return host.includes(":") ? `[${host}]:${address.port}` : `${host}:${address.port}`;
}

export function ipNetworkFromString(cidr: string): IPNetwork {
  const slash = cidr.indexOf("/");
  const host = slash < 0 ? cidr : cidr.slice(0, slash);
  const ip = ipAddressFromString(host);
  const max = ip.ip?.$case === "ipv4" ? 32 : 128;
  const prefixLen = slash < 0 ? max : Number(cidr.slice(slash + 1));
  if (!Number.isInteger(prefixLen) || prefixLen < 0 || prefixLen > max)
    throw new ConfigError(`"${cidr}" has an invalid prefix length`);
  return { ip, prefixLen };
}

export function ipNetworkToString(network: IPNetwork | undefined): string | undefined {
  const host = ipAddressToString(network?.ip);
  return host === undefined || network === undefined ? undefined : `${host}/${network.prefixLen}`;
}
