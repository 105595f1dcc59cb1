import { defineConfig, type Options } from "tsup";

/** Shared build for every @inmesh package: ESM only, declarations, Node 20 target. */
export function packageBuild(entry: Record<string, string> = { index: "src/index.ts" }, extra: Options = {}) {
  return defineConfig({
    entry,
    format: ["esm"],
    dts: true,
    // No source maps: the sources are not published, and maps with embedded sources were most of the size.
    sourcemap: false,
    clean: true,
    target: "node20",
    platform: "node",
    splitting: false,
    treeshake: true,
    ...extra,
  });
}
