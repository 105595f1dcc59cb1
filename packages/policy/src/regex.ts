import { createRequire } from "node:module";
import { translateRustRegex } from "@inmesh/core";
import type { RE2JS } from "re2js";

// re2js (≈0.8 MiB of heap, ≈35 ms to load) is loaded by the first policy that has a regex: most
// services' policies have none. Its CommonJS build loads synchronously on every supported Node.
let re2: typeof RE2JS | undefined;
function loadRe2(): typeof RE2JS {
  re2 ??= (createRequire(import.meta.url)("re2js") as typeof import("re2js")).RE2JS;
  return re2;
}

/**
 * A control-plane regex compiled for RE2 (re2js): matching is linear in the input, so a hostile path or
 * header value cannot stall the event loop the way V8's backtracking engine can (`(a+)+$`). The Rust →
 * RE2 translation and what it refuses are described in @inmesh/core's `translateRustRegex`.
 */
export interface RustRegex {
  readonly pattern: string;
  readonly re: RE2JS;
  /** When false, a full match must be confirmed to be the leftmost-first one (see `fullMatch`). */
  readonly fullMatchIsLeftmostFirst: boolean;
}

/**
 * One compiled matcher per pattern: policies are recompiled on every update and routes repeat the same
 * patterns, and RE2 compilation (and its lazily built DFA) costs far more than a Map lookup. Bounded so
 * that a stream of distinct patterns cannot grow it without limit; the oldest entry goes first.
 */
const CACHE_LIMIT = 4096;
const cache = new Map<string, RustRegex>();

/** RE2's repetition cap and program size bound the work per pattern; this bounds the pattern text. */
export const MAX_REGEX_LENGTH = 4096;

/** True when `pattern` is compiled and cached: compiling a policy that uses it costs a Map lookup. */
export function isRustRegexCached(pattern: string): boolean {
  return cache.has(pattern);
}

/** Compiles a Rust-syntax regex for full matching, or returns why it is refused. */
export function compileRustRegex(pattern: string): RustRegex | string {
  const cached = cache.get(pattern);
  if (cached !== undefined) return cached;
  const quoted = JSON.stringify(pattern.length > 200 ? `${pattern.slice(0, 200)}…` : pattern);
  if (pattern.length > MAX_REGEX_LENGTH) {
    return `invalid regular expression ${quoted}: longer than ${MAX_REGEX_LENGTH} characters`;
  }
  const translated = translateRustRegex(pattern);
  if (!translated.ok) return `invalid regular expression ${quoted}: ${translated.error}`;
  let re: RE2JS;
  try {
    re = loadRe2().compile(translated.source);
  } catch (error) {
    return `invalid regular expression ${quoted}: ${(error as Error).message}`;
  }
  const compiled: RustRegex = Object.freeze({
    pattern,
    re,
    fullMatchIsLeftmostFirst: translated.fullMatchIsLeftmostFirst,
  });
  if (cache.size >= CACHE_LIMIT) {
    const oldest = cache.keys().next().value;
    if (oldest !== undefined) cache.delete(oldest);
  }
  cache.set(pattern, compiled);
  return compiled;
}

const ANCHOR_START = 1;

/**
 * True when the leftmost-first match of `regex` in `value` starts at 0 and ends at the end, which is how
 * Linkerd checks route regexes (`find` + start/end check, not an anchored search). `testExact` (one
 * anchored DFA run, no capture arrays) decides alone unless the pattern has a choice that could make the
 * leftmost-first match shorter than a full one (`a|ab`); then the match end is read as well.
 */
export function fullMatch(regex: RustRegex, value: string): boolean {
  if (!regex.re.testExact(value)) return false;
  if (regex.fullMatchIsLeftmostFirst) return true;
  const [found, groups] = regex.re.re2().matchWithGroup(value, 0, value.length, ANCHOR_START, 1) as [
    boolean,
    number[] | null,
  ];
  return found && groups !== null && groups[1] === value.length;
}
