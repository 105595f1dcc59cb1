// Rewrites every README code block marked `<!-- example: path -->` with the current text of that file,
// so samples stay the real, type-checked and tested example files. test/readme-examples.test.ts fails
// when a README is out of date; run `pnpm docs:sync` to fix it.
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const readmes = [
  "README.md",
  ...readdirSync(join(root, "packages")).map((name) => join("packages", name, "README.md")),
];
const markedBlock = /(<!-- example: ([^\s]+) -->\s*\n```(?:ts|typescript)\n)([\s\S]*?)(```)/g;

let changed = 0;
for (const readme of readmes) {
  const path = join(root, readme);
  let text;
  try {
    text = readFileSync(path, "utf8");
  } catch {
    continue;
  }
  const next = text.replace(markedBlock, (_match, head, file, _code, tail) => {
    const source = readFileSync(join(dirname(path), file), "utf8");
    return `${head}${source.endsWith("\n") ? source : `${source}\n`}${tail}`;
  });
  if (next !== text) {
    writeFileSync(path, next);
    changed += 1;
    process.stdout.write(`updated ${readme}\n`);
  }
}
process.stdout.write(`${changed} README(s) updated\n`);
