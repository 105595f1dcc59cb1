/** UTF-8 byte length without allocating (Linkerd's route scores count bytes). */
export function utf8Length(text: string): number {
  let bytes = 0;
  for (let i = 0; i < text.length; i += 1) {
    const code = text.charCodeAt(i);
    if (code < 0x80) bytes += 1;
    else if (code < 0x800) bytes += 2;
    else if (code >= 0xd800 && code <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        bytes += 4;
        i += 1;
      } else bytes += 3;
    } else bytes += 3;
  }
  return bytes;
}

/** ASCII case-insensitive comparison of `text[start, start + pattern.length)` with `pattern`. */
export function asciiEqualsIgnoreCaseAt(text: string, start: number, pattern: string): boolean {
  if (start < 0 || start + pattern.length > text.length) return false;
  for (let i = 0; i < pattern.length; i += 1) {
    let a = text.charCodeAt(start + i);
    let b = pattern.charCodeAt(i);
    if (a === b) continue;
    if (a >= 0x41 && a <= 0x5a) a += 0x20;
    if (b >= 0x41 && b <= 0x5a) b += 0x20;
    if (a !== b) return false;
  }
  return true;
}

const decoder = new TextDecoder("utf-8", { fatal: false });

/**
 * `application/x-www-form-urlencoded` decoding as Rust's `form_urlencoded` does it: `+` is a space,
 * `%XX` a byte (a malformed escape stays literal), then UTF-8 with replacement characters.
 */
export function formDecode(text: string): string {
  if (text.indexOf("%") < 0 && text.indexOf("+") < 0) return text;
  const bytes: number[] = [];
  for (let i = 0; i < text.length; i += 1) {
    const code = text.charCodeAt(i);
    if (code === 0x2b) bytes.push(0x20);
    else if (
      code === 0x25 &&
      i + 2 < text.length &&
      isHex(text.charCodeAt(i + 1)) &&
      isHex(text.charCodeAt(i + 2))
    ) {
      bytes.push(Number.parseInt(text.slice(i + 1, i + 3), 16));
      i += 2;
    } else if (code < 0x80) bytes.push(code);
    else {
      const end = code >= 0xd800 && code <= 0xdbff && i + 1 < text.length ? i + 2 : i + 1;
      for (const byte of Buffer.from(text.slice(i, end), "utf8")) bytes.push(byte);
      i = end - 1;
    }
  }
  return decoder.decode(Uint8Array.from(bytes));
}

function isHex(code: number): boolean {
  return (code >= 0x30 && code <= 0x39) || (code >= 0x41 && code <= 0x46) || (code >= 0x61 && code <= 0x66);
}

/** True when every character is visible ASCII or tab: the values Linkerd lets a header regex see. */
export function isVisibleAscii(value: string): boolean {
  for (let i = 0; i < value.length; i += 1) {
    const code = value.charCodeAt(i);
    if ((code < 0x20 && code !== 0x09) || code > 0x7e) return false;
  }
  return true;
}

/**
 * A list the evaluator reads by index on every request: typed read-only but left unfrozen. Node 20's V8
 * reads an element of a frozen array through its generic keyed-load stub (~70 instructions, about five
 * times a plain array's element load), and a decision reads several (routes, authorizations, networks).
 * The objects in it stay frozen; the lists never leave the package.
 */
export function indexedList<T>(items: T[]): readonly T[] {
  return items;
}
