import { MeshError, MeshErrorCode } from "@inmesh/core";

const BARE_VALUE = /^[A-Za-z0-9_./:,@%+-]*$/;
const KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * Quotes a value so `node --env-file` (Node 20.18+), and the dotenv package, read it back unchanged:
 * bare when safe, single quotes (literal) for one-liners such as JSON, double quotes for multi-line values
 * such as PEM bundles (Node keeps the newlines), backticks as the last resort.
 */
export function formatDotenvValue(value: string): string {
  if (BARE_VALUE.test(value)) return value;
  const multiline = value.includes("\n") || value.includes("\r");
  if (!multiline && !value.includes("'")) return `'${value}'`;
  // Double quotes expand \n escapes, so a backslash would not survive them.
  if (!value.includes('"') && !value.includes("\\") && !value.includes("\r")) return `"${value}"`;
  if (!value.includes("`") && !value.includes("\r")) return `\`${value}\``;
  throw new MeshError(
    MeshErrorCode.INVALID_ARG,
    `value cannot be written to a dotenv file: ${JSON.stringify(value)}`,
  );
}

/** `KEY=value` lines in insertion order, ending with a newline. */
export function formatDotenv(variables: Readonly<Record<string, string>>): string {
  let out = "";
  for (const [key, value] of Object.entries(variables)) {
    if (!KEY.test(key))
      throw new MeshError(
        MeshErrorCode.INVALID_ARG,
        `invalid environment variable name ${JSON.stringify(key)}`,
      );
    out += `${key}=${formatDotenvValue(value)}\n`;
  }
  return out;
}
