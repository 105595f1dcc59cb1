import { readdirSync } from "node:fs";
import { availableParallelism } from "node:os";
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
    // Vitest's default, one worker less than the cores, is a single worker on a 2-core machine, which
    // leaves a core idle while tests wait on sockets, timers and child processes: two halve the run.
    // Tests never share a fixed address (ports come from each worker's own slice, see @inmesh/testing).
    maxWorkers: Math.max(2, availableParallelism() - 1),
    reporters: ["default"],
  },
});
