/**
 * Control-plane regexes match in time linear in the input (issue 11). Each hostile pattern runs through
 * the compiled evaluator (route matching happens before authorization, so any caller can send these
 * inputs) and is timed against a trivial pattern on an input of the same length in the same run; the
 * budget is a ratio, so a loaded machine slows both sides alike. A backtracking engine fails the small
 * 24-character round already (`(a+)+$` takes 2^24 steps there), before the 10,000-character round
 * would hang.
 */
import { performance } from "node:perf_hooks";
import { translateRustRegex } from "@inmesh/core";
import type { inbound } from "@inmesh/proto";
import { describe, expect, it } from "vitest";
import { compileServerPolicy } from "../src/index.js";
import { compileRustRegex, fullMatch } from "../src/regex.js";
import { authz, facts, httpRouteMsg, pathRegex, request, serverMsg } from "./builders.js";

/** Hostile time may be this many times the trivial pattern's time per kilobyte of input. */
const RATIO_BUDGET = 50;
/** Sanity cap for one 10,000-character match, whatever the trivial pattern took. */
const ABSOLUTE_CAP_MS = 1_000;

const detect = (...routes: inbound.HttpRoute[]) =>
  compileServerPolicy(
    serverMsg({ authorizations: [authz({ name: "all" })], protocol: { kind: "detect", routes } }),
  );

function pathPolicy(pattern: string) {
  const policy = detect(httpRouteMsg({ name: "r", rules: [{ matches: [pathRegex(pattern)] }] }));
  return (input: string) => policy.authorizeHttp(facts(request({ path: input }))).allowed;
}

function headerPolicy(pattern: string) {
  const policy = detect(
    httpRouteMsg({
      name: "r",
      rules: [
        {
          matches: [
            {
              path: undefined,
              headers: [{ name: "x-h", value: { $case: "regex", value: pattern } }],
              queryParams: [],
              method: undefined,
            },
          ],
        },
      ],
    }),
  );
  return (input: string) => policy.authorizeHttp(facts(request({ headers: { "x-h": input } }))).allowed;
}

/** Median wall time of a few runs, after one warm-up run (which also builds RE2's DFA states). */
function medianMs(run: () => unknown): number {
  run();
  const times: number[] = [];
  for (let i = 0; i < 5; i += 1) {
    const start = performance.now();
    run();
    times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  return times[2] as number;
}

interface Attack {
  name: string;
  match: (input: string) => boolean;
  input: (length: number) => string;
  trivial: (input: string) => boolean;
}

const fill = (prefix: string, unit: string, suffix: string) => (length: number) =>
  prefix +
  unit.repeat(Math.max(1, Math.ceil((length - prefix.length - suffix.length) / unit.length))) +
  suffix;

const trivialPath = pathPolicy("/[a-z0-9/!]*");
const trivialHeader = headerPolicy("[a-z0-9!]*");

const ATTACKS: Attack[] = [
  {
    name: "nested quantifiers (a*)*b",
    match: pathPolicy("/(a*)*b"),
    input: fill("/", "a", ""),
    trivial: trivialPath,
  },
  {
    name: "alternation overlap (a|aa)+c",
    match: pathPolicy("/(a|aa)+c"),
    input: fill("/", "a", "!"),
    trivial: trivialPath,
  },
  { name: "(a|a)*b", match: pathPolicy("/(a|a)*b"), input: fill("/", "a", "!"), trivial: trivialPath },
  { name: "(a+)+$", match: pathPolicy("/(a+)+$"), input: fill("/", "a", "!"), trivial: trivialPath },
  {
    name: "/api/([a-z0-9]+/?)+$",
    match: pathPolicy("/api/([a-z0-9]+/?)+$"),
    input: fill("/api/", "a", "!"),
    trivial: trivialPath,
  },
  {
    name: "/api/([a-z0-9]+/?)+$ on a path it matches (leftmost-first end is read too)",
    match: pathPolicy("/api/([a-z0-9]+/?)+$"),
    input: fill("/api/", "ab/", ""),
    trivial: trivialPath,
  },
  {
    name: "header value (x+x+)+y",
    match: headerPolicy("(x+x+)+y"),
    input: fill("", "x", ""),
    trivial: trivialHeader,
  },
  {
    name: "header value ([a-z]+)*!",
    match: headerPolicy("([a-z]+)*!"),
    input: fill("", "a", "?"),
    trivial: trivialHeader,
  },
];

describe("control-plane regexes run in linear time (ReDoS)", () => {
  it("times every hostile pattern class against a trivial pattern, 24 and 10,000 characters", () => {
    const report: string[] = [];
    for (const length of [24, 10_000]) {
      for (const attack of ATTACKS) {
        const input = attack.input(length);
        const trivialMs = medianMs(() => attack.trivial(input));
        const hostileMs = medianMs(() => attack.match(input));
        const kb = Math.max(input.length / 1024, 1 / 1024);
        // A floor of 0.05 ms per run keeps timer resolution from making the short round flaky.
        const budgetMs = Math.max(trivialMs, 0.05) * RATIO_BUDGET;
        report.push(
          `${attack.name} @${input.length}: ${(hostileMs / kb).toFixed(3)} ms/KB vs trivial ${(trivialMs / kb).toFixed(3)} ms/KB`,
        );
        expect(hostileMs, `${attack.name} at ${input.length} characters`).toBeLessThanOrEqual(budgetMs);
        expect(hostileMs).toBeLessThan(ABSOLUTE_CAP_MS);
      }
    }
    console.log(report.join("\n"));
  });
});

describe("Rust regex syntax on RE2", () => {
  const accepts = (pattern: string, value: string) => {
    const compiled = compileRustRegex(pattern);
    if (typeof compiled === "string") throw new Error(compiled);
    return fullMatch(compiled, value);
  };

  it("accepts Rust constructs RE2 reads the same way", () => {
    expect(accepts("[[:alpha:]]+", "abc")).toBe(true);
    expect(accepts("a(?i)b", "aB")).toBe(true);
    expect(accepts("a(?i)b", "AB")).toBe(false);
    expect(accepts("(?i:x)y", "Xy")).toBe(true);
    expect(accepts("(?P<id>[0-9]+)/(?<name>[a-z]+)", "12/ab")).toBe(true);
    expect(accepts("\\Aa\\z", "a")).toBe(true);
    expect(accepts("\\pL+", "été")).toBe(true);
    expect(accepts("\\x{41}\\-\\~", "A-~")).toBe(true);
    expect(accepts("\\x{1F600}", "\u{1F600}")).toBe(true);
    // Outside the BMP, through the leftmost-first end check (offsets are UTF-16 units, like length).
    expect(accepts("/\\x{1F600}+a?", "/\u{1F600}\u{1F600}")).toBe(true);
    expect(accepts("/\\x{1F600}+a?", "/\u{1F600}\u{1F600}a")).toBe(true);
    expect(accepts("/.|/..", "/\u{1F600}")).toBe(true);
    expect(accepts("\\p{Greek}+[\\p{Lu}]", "αβA")).toBe(true);
    expect(accepts("\\P{Greek}", "a")).toBe(true);
    expect(accepts("[]a]+", "]a")).toBe(true);
    expect(accepts("a{2,3}", "aaa")).toBe(true);
  });

  it("translates \\d to Unicode decimal digits, as Rust's \\d is", () => {
    expect(accepts("\\d+", "12\u0663")).toBe(true);
    expect(accepts("[\\d]", "\u0663")).toBe(true);
    expect(accepts("\\D", "\u0663")).toBe(false);
  });

  it("keeps Linkerd's leftmost-first rule: the first match found must span the whole value", () => {
    expect(accepts("a|ab", "ab")).toBe(false);
    expect(accepts("ab|a", "ab")).toBe(true);
    expect(accepts("/api/.*?", "/api/x")).toBe(false);
    expect(accepts("/api/.*", "/api/x")).toBe(true);
    expect(accepts("a?(ab)?", "ab")).toBe(false);
    expect(accepts("(?U)a+", "aa")).toBe(false);
    expect(accepts("/v[0-9]+/x", "/v12/x")).toBe(true);
  });

  it.each([
    ["(?=a)", "look-ahead"],
    ["(?<!a)b", "look-behind"],
    ["(a)\\1", "back-references"],
    ["\\0", "octal"],
    ["\\Qa.b\\E", "quoting"],
    ["[a[bc]]", "nested character classes"],
    ["[a-z&&[^aeiou]]", "set operations"],
    ["[a-c--b]", "set operations"],
    ["\\<word\\>", "word boundaries"],
    ["\\b{start}x", "word boundaries"],
    ["a{,3}", "literal {"],
    ["/api/{id}", "literal {"],
    ["(?x) a b", "flag"],
    ["\\u0041", "escapes"],
    ["(ab", "missing closing"],
  ])("refuses %s (%s)", (pattern, reason) => {
    const compiled = compileRustRegex(pattern);
    expect(typeof compiled).toBe("string");
    expect(compiled).toContain(reason);
  });

  it("compiles each pattern once", () => {
    expect(compileRustRegex("/same/[0-9]+")).toBe(compileRustRegex("/same/[0-9]+"));
  });

  it("marks full-match-is-leftmost-first only where no choice can end a match early", () => {
    const deterministic = (p: string) => {
      const t = translateRustRegex(p);
      return t.ok && t.fullMatchIsLeftmostFirst;
    };
    expect(deterministic("/api/v1/[a-z]+")).toBe(true);
    expect(deterministic("/x{3}")).toBe(true);
    expect(deterministic("/a+/b")).toBe(false);
    expect(deterministic("/a{1,3}b")).toBe(false);
    expect(deterministic("/a|/b")).toBe(false);
    expect(deterministic("/a*?")).toBe(false);
    expect(deterministic("[|*+?]\\|\\*")).toBe(true);
  });
});
