/**
 * Lets plain `node` run the TypeScript sources of this repo for the policy benchmarks:
 *   node --import ./test/bench/policy-ts-loader.mjs test/bench/policy-alloc.mjs
 * `@inmesh/<pkg>` resolves to packages/<pkg>/src/index.ts, `./x.js` to `./x.ts` when only the .ts exists,
 * and .ts files are transpiled (types stripped) with the repo's TypeScript. Registers itself as the hooks
 * module (node:module register), so one file is enough.
 */
import { existsSync, readFileSync } from "node:fs";
import { register } from "node:module";
import { fileURLToPath, pathToFileURL } from "node:url";
import { isMainThread } from "node:worker_threads";

const packages = new URL("../../packages/", import.meta.url);

if (isMainThread) register(import.meta.url);

export async function resolve(specifier, context, next) {
  const scoped = /^@inmesh\/([^/]+)$/.exec(specifier);
  if (scoped) {
    return { url: new URL(`${scoped[1]}/src/index.ts`, packages).href, shortCircuit: true };
  }
  if (
    (specifier.startsWith("./") || specifier.startsWith("../")) &&
    specifier.endsWith(".js") &&
    context.parentURL
  ) {
    const candidate = new URL(specifier.replace(/\.js$/, ".ts"), context.parentURL);
    if (
      !existsSync(fileURLToPath(new URL(specifier, context.parentURL))) &&
      existsSync(fileURLToPath(candidate))
    ) {
      return { url: candidate.href, shortCircuit: true };
    }
  }
  return next(specifier, context);
}

let ts;
export async function load(url, context, next) {
  if (!url.endsWith(".ts")) return next(url, context);
  ts ??= (
    await import(
      pathToFileURL(
        fileURLToPath(new URL("../../node_modules/typescript/lib/typescript.js", import.meta.url)),
      ).href
    )
  ).default;
  const source = readFileSync(fileURLToPath(url), "utf8");
  const output = ts.transpileModule(source, {
    fileName: fileURLToPath(url),
    compilerOptions: {
      module: ts.ModuleKind.ESNext,
      target: ts.ScriptTarget.ES2022,
      verbatimModuleSyntax: true,
      sourceMap: false,
    },
  });
  return { format: "module", source: output.outputText, shortCircuit: true };
}
