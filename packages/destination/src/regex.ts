import { translateRustRegex } from "@inmesh/core";
import { RE2JS } from "re2js";
import { LIMITS } from "./limits.js";

/**
 * A control-plane regex compiled for RE2 (re2js): matching is linear in the input, so a hostile path or
 * header value cannot stall the event loop the way V8's backtracking engine can (`(a+)+$`). The Rust →
 * RE2 translation and what it refuses are described in @inmesh/core's `translateRustRegex`. (The same
 * small wrapper exists in @inmesh/policy: the two packages sit side by side and cannot import each other.)
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

const MAX_REGEX_LENGTH = LIMITS.maxRegexLength;

/**
 * Patterns not yet cached that one message may compile (RE2 compiles one in ~0.1 ms). Cache hits are
 * free: a controller re-sending the same routes costs Map lookups.
 */
interface RegexBudget {
  remaining: number;
  exceeded: boolean;
}
let budget: RegexBudget | undefined;

/**
 * Runs `compile` (the conversion of one control-plane message) with at most `LIMITS.maxNewRegexesPerMessage`
 * new regexes; returns whether the budget was exceeded (the patterns past it were refused).
 */
export function withRegexBudget<T>(compile: () => T): { value: T; exceeded: boolean } {
  const saved = budget;
  const current: RegexBudget = { remaining: LIMITS.maxNewRegexesPerMessage, exceeded: false };
  budget = current;
  try {
    return { value: compile(), exceeded: current.exceeded };
  } finally {
    budget = saved;
  }
}

/** Compiles a Rust-syntax regex for full matching, or returns why it is refused. */
export function compileRustRegex(pattern: string): RustRegex | string {
  const cached = cache.get(pattern);
  if (cached !== undefined) return cached;
  if (budget !== undefined) {
    budget.remaining -= 1;
    if (budget.remaining < 0) {
      budget.exceeded = true;
      return `more than ${LIMITS.maxNewRegexesPerMessage} new regexes in one message`;
    }
  }
  const quoted = JSON.stringify(pattern.length > 200 ? `${pattern.slice(0, 200)}…` : pattern);
  if (pattern.length > MAX_REGEX_LENGTH) {
    return `invalid regular expression ${quoted}: longer than ${MAX_REGEX_LENGTH} characters`;
  }
  const translated = translateRustRegex(pattern);
  if (!translated.ok) return `invalid regular expression ${quoted}: ${translated.error}`;
  let re: RE2JS;
  try {
    re = RE2JS.compile(translated.source);
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

/** Unanchored search, for patterns that carry their own anchors (ServiceProfile `^pattern$`). */
export function search(regex: RustRegex, value: string): boolean {
  return regex.re.test(value);
}
