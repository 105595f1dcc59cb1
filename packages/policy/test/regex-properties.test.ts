/**
 * Linkerd's regex rule (the leftmost-first match must span the whole value) on RE2 agrees with a
 * leftmost-first backtracking engine (V8, sticky, on short inputs where it is fast) for random patterns
 * over a small grammar: literals, classes, `.`, groups, alternation, greedy and lazy quantifiers. This
 * checks both the one-DFA-run shortcut and the leftmost-first end check.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { compileRustRegex, fullMatch } from "../src/regex.js";

interface Piece {
  readonly src: string;
  readonly nullable: boolean;
}

const atom: fc.Arbitrary<Piece> = fc
  .constantFrom("a", "b", "/", ".", "[ab]", "[^a]", "\\/")
  .map((src) => ({ src, nullable: false }));
const QUANTIFIERS = ["", "", "", "*", "+", "?", "{1,2}", "{2}", "*?", "+?", "??"];
const nullableAfter = (q: string) => q.startsWith("*") || q.startsWith("?");

/**
 * A repeated group whose body can match empty is where ECMAScript (which rejects empty iterations) and
 * RE2/Rust (which allow them) legitimately differ, so the grammar only repeats non-nullable pieces.
 */
const pattern: fc.Arbitrary<string> = fc
  .letrec<{ expr: Piece; term: Piece; piece: Piece }>((tie) => ({
    piece: fc.oneof(
      { weight: 4, arbitrary: atom },
      { weight: 1, arbitrary: tie("expr").map((e) => ({ src: `(${e.src})`, nullable: e.nullable })) },
      { weight: 1, arbitrary: tie("expr").map((e) => ({ src: `(?:${e.src})`, nullable: e.nullable })) },
    ),
    term: fc.tuple(tie("piece"), fc.constantFrom(...QUANTIFIERS)).map(([p, q]) => {
      const quantifier = p.nullable ? "" : q;
      return { src: p.src + quantifier, nullable: p.nullable || nullableAfter(quantifier) };
    }),
    expr: fc.oneof(
      {
        weight: 3,
        arbitrary: fc
          .array(tie("term"), { minLength: 1, maxLength: 4 })
          .map((t) => ({ src: t.map((x) => x.src).join(""), nullable: t.every((x) => x.nullable) })),
      },
      {
        weight: 1,
        arbitrary: fc
          .tuple(tie("term"), tie("term"))
          .map(([x, y]) => ({ src: `${x.src}|${y.src}`, nullable: x.nullable || y.nullable })),
      },
    ),
  }))
  .expr.map((e) => e.src);

const input = fc.array(fc.constantFrom("a", "b", "/"), { maxLength: 10 }).map((c) => c.join(""));

function backtracking(source: string, value: string): boolean {
  const re = new RegExp(source, "y");
  re.lastIndex = 0;
  const m = re.exec(value);
  return m !== null && m[0].length === value.length;
}

describe("full-match rule on RE2 ≡ leftmost-first backtracking", () => {
  it("agrees on random patterns and inputs", () => {
    fc.assert(
      fc.property(pattern, fc.array(input, { minLength: 1, maxLength: 8 }), (source, values) => {
        const compiled = compileRustRegex(source);
        if (typeof compiled === "string") throw new Error(compiled);
        for (const value of values) {
          expect(fullMatch(compiled, value), `${source} on ${JSON.stringify(value)}`).toBe(
            backtracking(source, value),
          );
        }
      }),
      { numRuns: 2000 },
    );
  });
});
