import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

// README code samples are copies of real example files, which `pnpm typecheck` checks and tests run.
// A block is tied to its file by a marker line just before it: <!-- example: path/from/the/readme -->.
const root = fileURLToPath(new URL("..", import.meta.url));
const readmes = [
  "README.md",
  ...readdirSync(join(root, "packages")).map((name) => join("packages", name, "README.md")),
].filter((path) => {
  try {
    readFileSync(join(root, path));
    return true;
  } catch {
    return false;
  }
});

const markedBlock = /<!-- example: ([^\s]+) -->\s*\n```(?:ts|typescript)\n([\s\S]*?)```/g;

describe("README examples are the example files, verbatim", () => {
  for (const readme of readmes) {
    const text = readFileSync(join(root, readme), "utf8");
    const blocks = [...text.matchAll(markedBlock)];
    it(`${readme} has no unmarked TypeScript block`, () => {
      const allTsBlocks = text.match(/```(?:ts|typescript)\n/g) ?? [];
      expect(allTsBlocks.length).toBe(blocks.length);
    });
    for (const [, file, code] of blocks) {
      it(`${readme} → ${file}`, () => {
        const source = readFileSync(join(root, readme, "..", file as string), "utf8");
        expect(code).toBe(source);
      });
    }
  }
});
