import { deferHeadersDistinct } from "./message.js";

/** Linkerd's inbound identity header: the verified client identity, or absent (contract §5). */
export const L5D_CLIENT_ID = "l5d-client-id";
/** HTTP/1 requests a client proxy upgraded to HTTP/2 carry their original version here (contract §5). */
export const L5D_ORIG_PROTO = "l5d-orig-proto";
export const L5D_PROXY_ERROR = "l5d-proxy-error";

type HeaderObject = Record<string, string | string[] | undefined>;

/**
 * Removes every `l5d-client-id` the client sent (any case, any count) and sets the verified identity, if
 * any, so the application and route matching see only what mTLS proved (Linkerd `set_identity_header`).
 * Edits Node's header object and the raw list; an HTTP/1 `message` gets a `headersDistinct` built lazily
 * from the edited raw list (node:http would build it from the raw headers it counted while parsing, and
 * building it for every request cost ~6% of CPU). Costs nothing for a plaintext request that sent no such
 * header.
 */
export function setClientIdHeader(
  headers: HeaderObject,
  rawHeaders: string[] | undefined,
  identity: string | undefined,
  message?: object,
): void {
  const spoofed = headers[L5D_CLIENT_ID] !== undefined;
  if (!spoofed && identity === undefined) return;
  if (message !== undefined) deferHeadersDistinct(message);
  if (spoofed) {
    delete headers[L5D_CLIENT_ID];
    if (rawHeaders !== undefined) removeRawHeader(rawHeaders, L5D_CLIENT_ID);
  }
  if (identity !== undefined) {
    headers[L5D_CLIENT_ID] = identity;
    rawHeaders?.push(L5D_CLIENT_ID, identity);
  }
}

/**
 * The header editor route filters (`RequestHeaderModifier`) use on an inbound request: every change shows
 * in Node's header object, in the raw list and in `headersDistinct`, exactly as the `l5d-client-id` scrub
 * does, so the application cannot read the client's originals anywhere. `distinct()` is materialized on
 * the first edit (before the raw list changes, since node:http builds it lazily from the raw list).
 */
export function requestHeaderMutator(
  headers: HeaderObject,
  rawHeaders: string[] | undefined,
  distinct?: () => Record<string, string[] | undefined>,
): {
  append(name: string, value: string): void;
  set(name: string, value: string): void;
  delete(name: string): void;
} {
  let distinctHeaders: Record<string, string[] | undefined> | undefined;
  let materialized = false;
  const distinctObject = () => {
    if (!materialized) {
      materialized = true;
      distinctHeaders = distinct?.();
    }
    return distinctHeaders;
  };
  return {
    append(name, value) {
      const target = distinctObject();
      const existing = headers[name];
      if (existing === undefined) headers[name] = name === "set-cookie" ? [value] : value;
      else if (Array.isArray(existing)) existing.push(value);
      else headers[name] = `${existing}, ${value}`;
      if (target !== undefined) {
        const values = target[name];
        if (values === undefined) target[name] = [value];
        else values.push(value);
      }
      rawHeaders?.push(name, value);
    },
    set(name, value) {
      const target = distinctObject();
      headers[name] = name === "set-cookie" ? [value] : value;
      if (target !== undefined) target[name] = [value];
      if (rawHeaders !== undefined) {
        removeRawHeader(rawHeaders, name);
        rawHeaders.push(name, value);
      }
    },
    delete(name) {
      const target = distinctObject();
      delete headers[name];
      if (target !== undefined) delete target[name];
      if (rawHeaders !== undefined) removeRawHeader(rawHeaders, name);
    },
  };
}

export type OrigProto = "HTTP/1.1" | "HTTP/1.0";

/**
 * Reads and removes `l5d-orig-proto` from an HTTP/2 request, as Linkerd's `Downgrade` does: `HTTP/1.1…`
 * or `HTTP/1.0…` (optionally `; absolute-form`) make the request an HTTP/1.x one whose response must
 * echo the header; any other value is dropped and the request stays HTTP/2.
 */
export function takeOrigProto(
  headers: HeaderObject,
  rawHeaders: string[] | undefined,
): { readonly version: OrigProto | undefined; readonly absoluteForm: boolean } | undefined {
  const value = headers[L5D_ORIG_PROTO];
  if (value === undefined) return undefined;
  delete headers[L5D_ORIG_PROTO];
  if (rawHeaders !== undefined) removeRawHeader(rawHeaders, L5D_ORIG_PROTO);
  const text = Array.isArray(value) ? (value[0] ?? "") : value;
  const version: OrigProto | undefined = text.startsWith("HTTP/1.1")
    ? "HTTP/1.1"
    : text.startsWith("HTTP/1.0")
      ? "HTTP/1.0"
      : undefined;
  // Linkerd checks bytes 10..23 of the value for "absolute-form".
  const absoluteForm = text.length >= 23 && text.slice(10, 23) === "absolute-form";
  return { version, absoluteForm };
}

function removeRawHeader(rawHeaders: string[], lowerName: string): void {
  let write = 0;
  for (let read = 0; read + 1 < rawHeaders.length; read += 2) {
    const name = rawHeaders[read]!;
    if (name.length === lowerName.length && name.toLowerCase() === lowerName) continue;
    rawHeaders[write] = name;
    rawHeaders[write + 1] = rawHeaders[read + 1]!;
    write += 2;
  }
  rawHeaders.length = write;
}

/** Hop-by-hop fields HTTP/1 carries and HTTP/2 forbids (node:http2 throws on them), lowercase. */
export const CONNECTION_SPECIFIC_FIELDS: readonly string[] = [
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
];

/**
 * The request path and query of a request target. An absolute-form target (`http://host/p?q`) yields its
 * path; `*` and empty targets yield `/`.
 */
export function splitTarget(target: string): { path: string; query: string } {
  let start = 0;
  if (target.charCodeAt(0) !== 0x2f) {
    const scheme = target.indexOf("://");
    if (scheme > 0) {
      const slash = target.indexOf("/", scheme + 3);
      const question = target.indexOf("?", scheme + 3);
      if (slash < 0 || (question >= 0 && question < slash)) {
        return { path: "/", query: question < 0 ? "" : target.slice(question + 1) };
      }
      start = slash;
    } else {
      return { path: "/", query: "" };
    }
  }
  const question = target.indexOf("?", start);
  if (question < 0) return { path: start === 0 ? target : target.slice(start), query: "" };
  return { path: target.slice(start, question), query: target.slice(question + 1) };
}
