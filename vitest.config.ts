import { readdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

const packagesDir = fileURLToPath(new URL("./packages/", import.meta.url));
const packageNames = readdirSync(packagesDir, { withFileTypes: true })
  .filter((entry) => entry.isDirectory())
  .map((entry) => entry.name);

// Tests run against sources: each @inmesh/x import resolves to packages/x/src, so no build is needed.
const alias = packageNames.flatMap((name) => [
  { find: new RegExp(`^@inmesh/${name}$`), replacement: `${packagesDir}${name}/src/index.ts` },
  { find: new RegExp(`^@inmesh/${name}/(.+)$`), replacement: `${packagesDir}${name}/src/$1.ts` },
]);

export default defineConfig({
  resolve: { alias },
  test: {
    include: [
      "packages/*/src/**/*.test.ts",
      "packages/*/test/**/*.test.ts",
      "test/**/*.test.ts",
      "examples/**/*.test.ts",
    ],
    exclude: ["**/node_modules/**", "**/dist/**", "test/bench/**"],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    pool: "forks",
    reporters: ["default"],
  },
});
