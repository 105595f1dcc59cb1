/**
 * Linkerd compiles route regexes with Rust's `regex` crate. This turns that syntax into a JavaScript
 * RegExp for the common subset and refuses the rest, so a pattern is never silently given a different
 * meaning:
 * - refused as Rust refuses them (the policy becomes invalid in Linkerd too): look-around and
 *   back-references;
 * - translated: `(?P<name>…)` → `(?<name>…)`, `\A` → `^`, `\z` → `$`, leading flag groups `(?i)`, `(?s)`,
 *   `(?m)`;
 * - refused although Rust accepts them (documented deviation): inline flags elsewhere, `(?x)`, `(?U)`,
 *   POSIX classes `[[:alpha:]]`, class set operations `&&`/`--`/`~~`, `\pL`-style one-letter classes,
 *   `\Q…\E`, `\z`-like escapes JavaScript does not know.
 * Remaining semantic difference: `\d`, `\w`, `\s`, `\b` are Unicode-aware in Rust and ASCII in JavaScript;
 * paths and header values compared here are ASCII.
 */
export type RegexTranslation = { ok: true; source: string; flags: string } | { ok: false; error: string };

const JS_ESCAPABLE = "^$\\.*+?()[]{}|/";

export function translateRustRegex(pattern: string): RegexTranslation {
  let flags = "";
  let i = 0;
  // Leading global flag groups such as (?i) or (?is).
  for (;;) {
    const m = /^\(\?([imsxU-]+)\)/.exec(pattern.slice(i));
    if (!m) break;
    const group = m[1] ?? "";
    if (group.includes("-") || group.includes("x") || group.includes("U")) {
      return { ok: false, error: `unsupported regex flags (?${group})` };
    }
    for (const flag of group) if (!flags.includes(flag)) flags += flag;
    i += m[0].length;
  }

  let out = "";
  let inClass = false;
  while (i < pattern.length) {
    const ch = pattern[i] as string;
    if (ch === "\\") {
      const next = pattern[i + 1];
      if (next === undefined) return { ok: false, error: "regex ends with a backslash" };
      if (/[1-9]/.test(next) || next === "k")
        return { ok: false, error: "back-references are not supported" };
      if (next === "Q" || next === "E") return { ok: false, error: "\\Q…\\E quoting is not supported" };
      if (!inClass && next === "A") {
        out += "^";
        i += 2;
        continue;
      }
      if (!inClass && next === "z") {
        out += "$";
        i += 2;
        continue;
      }
      if ((next === "p" || next === "P") && pattern[i + 2] !== "{") {
        return { ok: false, error: "one-letter Unicode classes (\\pL) are not supported" };
      }
      if (next === "Z" || next === "G") return { ok: false, error: `\\${next} is not supported` };
      if (next === "x" && pattern[i + 2] === "{") {
        // Rust's \x{10FFFF} is \u{10FFFF} in a Unicode-mode JavaScript regex.
        out += "\\u";
        i += 2;
        continue;
      }
      if (!/[0-9A-Za-z]/.test(next) && !JS_ESCAPABLE.includes(next) && !(inClass && next === "-")) {
        // Rust lets any punctuation be escaped; Unicode-mode JavaScript only syntax characters.
        out += `\\u{${(next.codePointAt(0) ?? 0).toString(16)}}`;
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
        if (pattern[i + 1] === ":")
          return { ok: false, error: "POSIX classes ([[:alpha:]]) are not supported" };
        return { ok: false, error: "nested character classes are not supported" };
      } else if ((ch === "&" || ch === "-" || ch === "~") && pattern[i + 1] === ch) {
        return { ok: false, error: "character class set operations are not supported" };
      }
      out += ch;
      i += 1;
      continue;
    }
    if (ch === "[") {
      inClass = true;
      out += ch;
      i += 1;
      // A leading `]` (or `^]`) is a literal in Rust; JavaScript needs it escaped.
      if (pattern[i] === "^") {
        out += "^";
        i += 1;
      }
      if (pattern[i] === "]") {
        out += "\\]";
        i += 1;
      }
      continue;
    }
    if (ch === "(" && pattern[i + 1] === "?") {
      const rest = pattern.slice(i + 2);
      if (rest.startsWith("P<")) {
        out += "(?<";
        i += 4;
        continue;
      }
      if (rest.startsWith("<") && (rest[1] === "=" || rest[1] === "!")) {
        return { ok: false, error: "look-behind is not supported" };
      }
      if (rest.startsWith("=") || rest.startsWith("!"))
        return { ok: false, error: "look-ahead is not supported" };
      if (rest.startsWith(":") || rest.startsWith("<")) {
        out += "(?";
        i += 2;
        continue;
      }
      return { ok: false, error: "inline flags are only supported at the start of a regex" };
    }
    out += ch;
    i += 1;
  }
  if (inClass) return { ok: false, error: "unclosed character class" };
  return { ok: true, source: out, flags };
}

/**
 * Compiles a Rust-syntax regex for full matching. The sticky flag lets `fullMatch` test a match at
 * position 0 without allocating a result array.
 */
export function compileRustRegex(pattern: string): RegExp | string {
  const translated = translateRustRegex(pattern);
  if (!translated.ok) return `invalid regular expression ${JSON.stringify(pattern)}: ${translated.error}`;
  try {
    return new RegExp(translated.source, `${translated.flags}uy`);
  } catch (error) {
    return `invalid regular expression ${JSON.stringify(pattern)}: ${(error as Error).message}`;
  }
}

/**
 * True when the leftmost-first match of `re` in `value` starts at 0 and ends at the end, which is how
 * Linkerd checks route regexes (`find` + start/end check, not an anchored search).
 */
export function fullMatch(re: RegExp, value: string): boolean {
  re.lastIndex = 0;
  return re.test(value) && re.lastIndex === value.length;
}
