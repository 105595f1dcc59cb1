/**
 * Linkerd compiles control-plane regexes (route path, header and query matches, ServiceProfile
 * `pathRegex`) with Rust's `regex` crate. We match them with RE2 (re2js), whose syntax and leftmost-first
 * semantics are close to Rust's and which, like Rust's, runs in time linear in the input. This turns a
 * Rust pattern into the RE2 pattern with the same meaning, or refuses it, so that a pattern is never
 * silently given a different meaning. It lives in core (pure string work, no engine) because policy,
 * destination and the dev control plane must agree on it and cannot import one another.
 *
 * - Refused as Rust refuses them (the resource is invalid in Linkerd too): look-around, back-references
 *   and octal escapes (`\1`, `\0`), `\Q…\E`, an unescaped `{` that is not a repetition.
 * - Refused because RE2 would read them differently from Rust: nested classes `[a[bc]]` (RE2: a literal
 *   `[`), class set operations `&&` `--` `~~`, word-boundary forms `\<` `\>` `\b{…}` (RE2: literals),
 *   `{,n}` (RE2: a literal).
 * - Refused although Rust accepts them (documented deviation; RE2 has no equivalent): `(?x)`, `(?u)`,
 *   `(?R)`, `\u`/`\U` escapes, Unicode properties RE2 does not know (RE2 reports them).
 * - Translated: `\d` → `\p{Nd}` and `\D` → `\P{Nd}` (Rust's `\d` is Unicode). Accepted as written, same
 *   meaning in both: `(?P<n>…)`, `(?<n>…)`, `\A`, `\z`, inline flags `i m s U` anywhere (also `(?i:…)`
 *   and `(?-i)`), POSIX classes `[[:alpha:]]`, `\pL`, `\p{Greek}`, `\x{…}`, escaped punctuation.
 * - Remaining difference (decided, documented): `\w`, `\W`, `\s`, `\S`, `\b`, `\B` are Unicode-aware in
 *   Rust and ASCII in RE2, so they differ on non-ASCII characters only. Header values reach a regex only
 *   when they are visible ASCII, and paths on the wire are ASCII (percent-encoded), so the inputs that
 *   Linkerd and we compare are ASCII in practice.
 *
 * `fullMatchIsLeftmostFirst` is true when any full match of the pattern is also the leftmost-first match
 * from position 0 (no alternation, no choice of repetition count except a greedy one at the very end).
 * Linkerd requires the leftmost-first match to span the whole value, which differs from "some full match
 * exists" for patterns such as `a|ab` or `/api/.*?`; for the others one anchored DFA run decides.
 */
export type RustRegexTranslation =
  | { readonly ok: true; readonly source: string; readonly fullMatchIsLeftmostFirst: boolean }
  | { readonly ok: false; readonly error: string };

const REPETITION = /^\{(\d+)(,(\d*))?\}/;

function refuse(error: string): RustRegexTranslation {
  return { ok: false, error };
}

export function translateRustRegex(pattern: string): RustRegexTranslation {
  let out = "";
  let inClass = false;
  let ambiguous = false;
  let i = 0;
  while (i < pattern.length) {
    const ch = pattern[i] as string;
    if (ch === "\\") {
      const next = pattern[i + 1];
      if (next === undefined) return refuse("regex ends with a backslash");
      if (next >= "0" && next <= "9") return refuse("back-references and octal escapes are not supported");
      if (next === "Q" || next === "E") return refuse("\\Q…\\E quoting is not supported");
      if (next === "<" || next === ">") return refuse(`\\${next} word boundaries are not supported`);
      if ((next === "b" || next === "B") && pattern[i + 2] === "{")
        return refuse(`\\${next}{…} word boundaries are not supported`);
      if (next === "u" || next === "U") return refuse(`\\${next} escapes are not supported; use \\x{…}`);
      if ((next === "p" || next === "P" || next === "x") && pattern[i + 2] === "{") {
        // `\p{Greek}`, `\x{1F600}`: the braces belong to the escape, not a repetition.
        const close = pattern.indexOf("}", i + 3);
        if (close < 0) return refuse(`unclosed \\${next}{…}`);
        out += pattern.slice(i, close + 1);
        i = close + 1;
        continue;
      }
      if (next === "d" || next === "D") {
        out += next === "d" ? "\\p{Nd}" : "\\P{Nd}";
        i += 2;
        continue;
      }
      out += ch + next;
      i += 2;
      continue;
    }
    if (inClass) {
      if (ch === "]") inClass = false;
      else if (ch === "[") {
        if (pattern[i + 1] !== ":") return refuse("nested character classes are not supported");
        const end = pattern.indexOf(":]", i + 2);
        if (end < 0) return refuse("unclosed POSIX class");
        out += pattern.slice(i, end + 2);
        i = end + 2;
        continue;
      } else if ((ch === "&" || ch === "-" || ch === "~") && pattern[i + 1] === ch) {
        return refuse("character class set operations are not supported");
      }
      out += ch;
      i += 1;
      continue;
    }
    if (ch === "[") {
      inClass = true;
      out += ch;
      i += 1;
      // A leading `]` (after an optional `^`) is a literal in both Rust and RE2.
      if (pattern[i] === "^") {
        out += "^";
        i += 1;
      }
      if (pattern[i] === "]") {
        out += "]";
        i += 1;
      }
      continue;
    }
    if (ch === "(" && pattern[i + 1] === "?") {
      const rest = pattern.slice(i + 2);
      if (rest.startsWith("<=") || rest.startsWith("<!")) return refuse("look-behind is not supported");
      if (rest.startsWith("=") || rest.startsWith("!")) return refuse("look-ahead is not supported");
      if (rest.startsWith("P<") || rest.startsWith("<") || rest.startsWith(":")) {
        out += "(?";
        i += 2;
        continue;
      }
      const flags = /^([a-zA-Z-]*)[:)]/.exec(rest);
      if (flags === null) return refuse("unsupported group syntax");
      const group = flags[1] ?? "";
      for (const flag of group) {
        if (!"imsU-".includes(flag)) return refuse(`unsupported regex flag (?${flag})`);
      }
      if (group.includes("U")) ambiguous = true;
      out += `(?${group}`;
      i += 2 + group.length;
      continue;
    }
    if (ch === "{") {
      const repetition = REPETITION.exec(pattern.slice(i));
      if (repetition === null) return refuse("a literal { must be escaped");
      const quantifier = repetition[0];
      out += quantifier;
      i += quantifier.length;
      if (repetition[2] !== undefined && i < pattern.length) ambiguous = true;
      continue;
    }
    if (ch === "|" || ch === "?") ambiguous = true;
    // A greedy `*` or `+` as the very last token cannot stop short of a full match; anywhere else a
    // repetition may end on a shorter leftmost-first match.
    if ((ch === "*" || ch === "+") && i !== pattern.length - 1) ambiguous = true;
    out += ch;
    i += 1;
  }
  if (inClass) return refuse("unclosed character class");
  return { ok: true, source: out, fullMatchIsLeftmostFirst: !ambiguous };
}
