// Checks the package layering from design.md: each @inmesh package may import only the packages listed
// for it (all strictly lower layers), runtime packages never import the tools, and a few security rules
// hold in published sources. Exits non-zero with one line per violation.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const L0 = ["core", "proto"];
const L1 = ["identity", "policy", "destination"];
const L2 = ["http", "grpc", "admin"];
const L3 = ["express", "fastify", "otel"];

/** What each package may import from @inmesh; anything not named here is a violation. */
const allowed = {
  core: [],
  proto: ["core"],
  identity: L0,
  policy: L0,
  destination: L0,
  http: [...L0, ...L1],
  grpc: [...L0, ...L1],
  admin: [...L0, ...L1],
  express: [...L0, ...L1, "http"],
  fastify: [...L0, ...L1, "http"],
  otel: ["core"],
  mesh: [...L0, ...L1, ...L2, ...L3],
  "control-plane": [...L0, ...L1, ...L2, ...L3, "mesh"],
  testing: [...L0, ...L1, ...L2, ...L3, "mesh", "control-plane"],
  cli: [...L0, ...L1, ...L2, ...L3, "mesh", "control-plane", "testing"],
};
/** Host libraries that must be peer dependencies so users bring their own copy. */
const peerOnly = {
  grpc: ["@grpc/grpc-js"],
  express: ["express"],
  fastify: ["fastify"],
  otel: ["@opentelemetry/api"],
};
const forbiddenDependencies = ["node-forge"];

const problems = [];
const packagesDir = join(root, "packages");
const packages = readdirSync(packagesDir).filter((name) => statSync(join(packagesDir, name)).isDirectory());

function sourceFiles(dir) {
  let files = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) files = files.concat(sourceFiles(path));
    else if (/\.(ts|mts|js|mjs)$/.test(entry.name) && !/\.test\.ts$/.test(entry.name)) files.push(path);
  }
  return files;
}

for (const name of packages) {
  const manifest = JSON.parse(readFileSync(join(packagesDir, name, "package.json"), "utf8"));
  const permitted = allowed[name];
  if (!permitted) {
    problems.push(
      `packages/${name}: not in the layer table of scripts/check-layers.mjs (design.md); add it there`,
    );
    continue;
  }
  const declared = { ...manifest.dependencies, ...manifest.peerDependencies };
  for (const dependency of Object.keys({ ...declared, ...manifest.devDependencies })) {
    if (forbiddenDependencies.includes(dependency))
      problems.push(`packages/${name}: depends on ${dependency}, which is banned`);
  }
  for (const dependency of Object.keys(declared)) {
    const target = dependency.startsWith("@inmesh/") ? dependency.slice("@inmesh/".length) : undefined;
    if (target && !permitted.includes(target))
      problems.push(`packages/${name}: depends on @inmesh/${target}, which is not below it`);
  }
  for (const host of peerOnly[name] ?? []) {
    if (manifest.dependencies?.[host])
      problems.push(`packages/${name}: ${host} must be a peerDependency, not a dependency`);
  }
  const srcDir = join(packagesDir, name, "src");
  let files = [];
  try {
    files = sourceFiles(srcDir);
  } catch {
    continue;
  }
  for (const file of files) {
    const text = readFileSync(file, "utf8");
    const where = relative(root, file);
    for (const match of text.matchAll(/(?:from\s+|import\s*\(\s*|import\s+)["']@inmesh\/([a-z-]+)/g)) {
      const target = match[1];
      if (target !== name && !permitted.includes(target))
        problems.push(`${where}: imports @inmesh/${target}, which is not below @inmesh/${name}`);
    }
    if (/\bMath\.random\s*\(/.test(text))
      problems.push(`${where}: uses Math.random; use secureRandom() from @inmesh/core`);
    if (/["']node-forge["']/.test(text))
      problems.push(`${where}: imports node-forge, which must never verify anything`);
  }
}

if (problems.length > 0) {
  process.stderr.write(`${problems.join("\n")}\n`);
  process.exit(1);
}
process.stdout.write(`layers ok: ${packages.length} packages\n`);
