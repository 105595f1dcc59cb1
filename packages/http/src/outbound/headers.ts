import { MeshError, MeshErrorCode } from "@inmesh/core";

/** Request headers as ordered `[lower-case name, value]` pairs; repeated names stay repeated. */
export type HeaderPairs = [string, string][];

function pushValue(pairs: HeaderPairs, name: string, value: unknown): void {
  if (value === undefined || value === null) return;
  const lower = name.toLowerCase();
  if (Array.isArray(value)) {
    for (const item of value) if (item !== undefined && item !== null) pairs.push([lower, String(item)]);
    return;
  }
  pairs.push([lower, String(value)]);
}

/**
 * Normalizes the header shapes undici accepts in dispatch options (a record, a flat `[k, v, …]` array,
 * or an iterable of pairs such as `Headers`) into pairs.
 */
export function headerPairs(headers: unknown): HeaderPairs {
  const pairs: HeaderPairs = [];
  if (headers === undefined || headers === null) return pairs;
  if (Array.isArray(headers)) {
    if (headers.length > 0 && !Array.isArray(headers[0])) {
      if (headers.length % 2 !== 0)
        throw new MeshError(MeshErrorCode.INVALID_ARG, "headers array must have an even length");
      for (let i = 0; i < headers.length; i += 2) pushValue(pairs, String(headers[i]), headers[i + 1]);
      return pairs;
    }
    for (const entry of headers as unknown[][]) pushValue(pairs, String(entry[0]), entry[1]);
    return pairs;
  }
  if (typeof headers === "object" && Symbol.iterator in headers) {
    for (const entry of headers as Iterable<[string, unknown]>) pushValue(pairs, String(entry[0]), entry[1]);
    return pairs;
  }
  if (typeof headers === "object") {
    for (const [name, value] of Object.entries(headers as Record<string, unknown>))
      pushValue(pairs, name, value);
    return pairs;
  }
  throw new MeshError(MeshErrorCode.INVALID_ARG, "headers must be an object, an array or an iterable");
}

/** First value of a header (names are lower-case). */
export function getHeader(pairs: HeaderPairs, name: string): string | undefined {
  for (const [key, value] of pairs) if (key === name) return value;
  return undefined;
}

export function removeHeaders(pairs: HeaderPairs, names: ReadonlySet<string>): HeaderPairs {
  return pairs.filter(([key]) => !names.has(key));
}

export function setHeader(pairs: HeaderPairs, name: string, value: string): void {
  const lower = name.toLowerCase();
  let written = false;
  for (let i = 0; i < pairs.length; i += 1) {
    const pair = pairs[i] as [string, string];
    if (pair[0] !== lower) continue;
    if (written) {
      pairs.splice(i, 1);
      i -= 1;
    } else {
      pair[1] = value;
      written = true;
    }
  }
  if (!written) pairs.push([lower, value]);
}

/** Flat `[name, value, …]` array, the shape undici accepts without further conversion. */
export function flattenHeaders(pairs: HeaderPairs): string[] {
  const flat: string[] = new Array(pairs.length * 2);
  for (let i = 0; i < pairs.length; i += 1) {
    const pair = pairs[i] as [string, string];
    flat[2 * i] = pair[0];
    flat[2 * i + 1] = pair[1];
  }
  return flat;
}

/** Reads a response header value from undici's header record (values may be arrays). */
export function responseHeader(
  headers: Record<string, string | string[] | undefined> | undefined,
  name: string,
): string | undefined {
  const value = headers?.[name];
  return Array.isArray(value) ? value[0] : value;
}

/** `grpc-status` as a number, or undefined when absent or malformed. */
export function grpcStatusOf(
  headers: Record<string, string | string[] | undefined> | undefined,
): number | undefined {
  const raw = responseHeader(headers, "grpc-status");
  if (raw === undefined || !/^\d{1,2}$/.test(raw.trim())) return undefined;
  return Number(raw.trim());
}

export function isGrpcContentType(value: string | undefined): boolean {
  return value !== undefined && /^application\/grpc(?:[+;]|$)/i.test(value.trim());
}
