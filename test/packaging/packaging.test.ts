import { execFile } from "node:child_process";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

// What a new user gets from npm: every public package is packed as it would be published, the tarballs
// are installed with plain npm into a fresh project outside the workspace (third-party dependencies come
// from the registry), and there each package is required, imported, and its README example compiled with
// strict settings. Needs `pnpm run build` first (scripts/test-all.sh builds before testing).

const run = promisify(execFile);
const root = fileURLToPath(new URL("../..", import.meta.url));
const packagesDir = join(root, "packages");

interface PublicPackage {
  readonly dir: string;
  readonly name: string;
  readonly manifest: Record<string, unknown> & { exports?: Record<string, unknown> };
}

const publicPackages: PublicPackage[] = readdirSync(packagesDir, { withFileTypes: true })
  .filter((entry) => entry.isDirectory() && existsSync(join(packagesDir, entry.name, "package.json")))
  .map((entry) => {
    const dir = join(packagesDir, entry.name);
    const manifest = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
    return { dir, name: manifest.name as string, manifest };
  })
  .filter((pkg) => pkg.manifest.private !== true);

/** Third-party packages the README examples and the strict type check need, as a user would add them. */
const userDependencies: Record<string, string> = {
  "@grpc/grpc-js": "^1.14.0",
  "@grpc/proto-loader": "^0.8.0",
  "@opentelemetry/api": "^1.9.0",
  "@opentelemetry/context-async-hooks": "^2.0.0",
  "@opentelemetry/core": "^2.0.0",
  "@opentelemetry/sdk-trace-base": "^2.0.0",
  express: "^5.1.0",
  fastify: "^5.4.0",
  undici: "^7.16.0",
};
const userDevDependencies: Record<string, string> = {
  "@types/express": "^5.0.0",
  "@types/node": "^20.19.0",
  typescript: "~5.9.3",
};

/** The files each README includes as its example (`<!-- example: path -->`), relative to the repo. */
function readmeExamples(): string[] {
  const files = new Set<string>();
  for (const readme of [
    "README.md",
    ...publicPackages.map((pkg) => relative(root, join(pkg.dir, "README.md"))),
  ]) {
    const path = join(root, readme);
    if (!existsSync(path)) continue;
    for (const match of readFileSync(path, "utf8").matchAll(/<!-- example: ([^\s]+) -->/g))
      files.add(relative(root, join(dirname(path), match[1] as string)));
  }
  return [...files].sort();
}

let project: string;
let tarballs: string;
const missingBuild = publicPackages
  .map((pkg) => join(pkg.dir, "dist", "index.js"))
  .filter((file) => !existsSync(file))
  .map((file) => relative(root, file));

async function node(args: string[], options: { cwd?: string } = {}) {
  return run(process.execPath, args, { cwd: options.cwd ?? project, maxBuffer: 16 * 1024 * 1024 });
}

describe("packages as a new user installs them from npm", () => {
  beforeAll(async () => {
    if (missingBuild.length > 0)
      throw new Error(`run \`pnpm run build\` before this test: missing ${missingBuild.join(", ")}`);
    // Outside the workspace, so nothing resolves through pnpm's links or the monorepo's node_modules.
    project = mkdtempSync(join(tmpdir(), "inmesh-packaging-"));
    tarballs = join(project, "tarballs");
    mkdirSync(tarballs);
    mkdirSync(join(project, "examples"));
    // pnpm pack turns workspace:^ into real version ranges, as publishing does.
    for (const pkg of publicPackages) {
      await run("pnpm", ["pack", "--pack-destination", tarballs], { cwd: pkg.dir });
    }
    const files = readdirSync(tarballs);
    const dependencies: Record<string, string> = { ...userDependencies };
    for (const pkg of publicPackages) {
      const file = files.find((name) => name.startsWith(`${pkg.name.replace("@", "").replace("/", "-")}-`));
      if (!file) throw new Error(`no tarball for ${pkg.name} in ${files.join(", ")}`);
      dependencies[pkg.name] = `file:./tarballs/${file}`;
    }
    writeFileSync(
      join(project, "package.json"),
      JSON.stringify(
        {
          name: "inmesh-user",
          private: true,
          type: "module",
          dependencies,
          devDependencies: userDevDependencies,
        },
        null,
        2,
      ),
    );
    // One install for everything; the user's npm, not pnpm.
    await run("npm", ["install", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"], {
      cwd: project,
      maxBuffer: 16 * 1024 * 1024,
      env: { ...process.env, npm_config_workspaces: "false" },
    });
  }, 600_000);

  afterAll(() => {
    if (project) rmSync(project, { recursive: true, force: true });
  });

  it("each tarball holds dist, README, LICENSE and package.json, and no source maps", async () => {
    for (const file of readdirSync(tarballs)) {
      const { stdout } = await run("tar", ["-tzf", join(tarballs, file)]);
      const entries = stdout.trim().split("\n");
      expect(entries, file).toContain("package/LICENSE");
      expect(entries, file).toContain("package/README.md");
      expect(entries, file).toContain("package/dist/index.js");
      expect(entries, file).toContain("package/dist/index.d.ts");
      expect(
        entries.filter((entry) => entry.endsWith(".map")),
        file,
      ).toEqual([]);
    }
    // @inmesh/proto bundles @bufbuild/protobuf's wire code, so it ships that code's notices.
    const proto = readdirSync(tarballs).find((name) => name.startsWith("inmesh-proto-"));
    const { stdout: protoEntries } = await run("tar", ["-tzf", join(tarballs, proto ?? "missing")]);
    expect(protoEntries.split("\n")).toContain("package/THIRD-PARTY-NOTICES.md");
    const license = readFileSync(join(project, "node_modules", "@inmesh", "mesh", "LICENSE"), "utf8");
    expect(license).toContain("Apache License");
    expect(license).toContain("Version 2.0");
  });

  it("each package.json says where the code lives and keeps publish-time fields", () => {
    for (const pkg of publicPackages) {
      const installed = JSON.parse(
        readFileSync(join(project, "node_modules", pkg.name, "package.json"), "utf8"),
      ) as Record<string, unknown>;
      expect(installed.license, pkg.name).toBe("Apache-2.0");
      expect(installed.repository, pkg.name).toMatchObject({
        type: "git",
        directory: relative(root, pkg.dir),
      });
      expect(typeof installed.homepage, pkg.name).toBe("string");
      expect(installed.bugs, pkg.name).toBeDefined();
      expect(JSON.stringify(installed), pkg.name).not.toContain("workspace:");
    }
  });

  it("host libraries a package works without are optional peers, so npm does not install them for everyone", () => {
    const optionalPeers: Record<string, string> = {
      "@inmesh/express": "express",
      "@inmesh/fastify": "fastify",
      "@inmesh/otel": "@opentelemetry/api",
    };
    for (const [name, peer] of Object.entries(optionalPeers)) {
      const installed = JSON.parse(readFileSync(join(project, "node_modules", name, "package.json"), "utf8"));
      expect(installed.peerDependencies?.[peer], name).toBeDefined();
      expect(installed.peerDependenciesMeta?.[peer]?.optional, name).toBe(true);
    }
  });

  it("no dist file ends with a sourceMappingURL comment", () => {
    for (const pkg of publicPackages) {
      const dist = join(project, "node_modules", pkg.name, "dist");
      for (const file of readdirSync(dist).filter((name) => name.endsWith(".js"))) {
        expect(readFileSync(join(dist, file), "utf8"), `${pkg.name}/dist/${file}`).not.toContain(
          "sourceMappingURL",
        );
      }
    }
  });

  it("every package loads with require() (CommonJS) and import (ESM)", async () => {
    const names = publicPackages.map((pkg) => pkg.name);
    writeFileSync(
      join(project, "require-all.cjs"),
      `for (const name of ${JSON.stringify(names)}) {
  const exports = require(name);
  if (Object.keys(exports).length === 0) throw new Error(name + " has no exports through require()");
}
console.log("required", ${names.length});
`,
    );
    writeFileSync(
      join(project, "import-all.mjs"),
      `for (const name of ${JSON.stringify(names)}) {
  const exports = await import(name);
  if (Object.keys(exports).length === 0) throw new Error(name + " has no exports through import");
}
console.log("imported", ${names.length});
`,
    );
    const required = await node(["--no-warnings", "require-all.cjs"]);
    expect(required.stdout).toBe(`required ${names.length}\n`);
    const imported = await node(["import-all.mjs"]);
    expect(imported.stdout).toBe(`imported ${names.length}\n`);
    const { stdout } = await node([
      "--no-warnings",
      "-e",
      "const { createMesh } = require('@inmesh/mesh'); console.log(typeof createMesh)",
    ]);
    expect(stdout).toBe("function\n");
  });

  it.each(["nodenext", "bundler"] as const)(
    "every README example type-checks with skipLibCheck: false under %s resolution",
    async (resolution) => {
      const examples = readmeExamples();
      expect(examples.length).toBeGreaterThanOrEqual(publicPackages.length - 1);
      const copied: string[] = [];
      for (const example of examples) {
        const target = join(project, "examples", example.replace(/[\\/]/g, "__"));
        copyFileSync(join(root, example), target.replace(/\.ts$/, ".ts"));
        copied.push(basename(target));
      }
      // Every package's declarations, including those no README example imports (the CLI).
      writeFileSync(
        join(project, "examples", "all-packages.ts"),
        publicPackages
          .map(
            (pkg, index) =>
              `import type * as package${index} from "${pkg.name}";\nexport type { package${index} };\n`,
          )
          .join(""),
      );
      copied.push("all-packages.ts");
      // examples/readme/grpc-*.ts import their neighbour ./authors-proto.js.
      copyFileSync(
        join(root, "examples/readme/authors-proto.ts"),
        join(project, "examples", "authors-proto.ts"),
      );
      const compilerOptions =
        resolution === "nodenext"
          ? { module: "nodenext", moduleResolution: "nodenext" }
          : { module: "preserve", moduleResolution: "bundler" };
      writeFileSync(
        join(project, `tsconfig.${resolution}.json`),
        JSON.stringify({
          compilerOptions: {
            ...compilerOptions,
            target: "es2022",
            lib: ["es2023"],
            types: ["node"],
            strict: true,
            skipLibCheck: false,
            noEmit: true,
            esModuleInterop: true,
          },
          include: ["examples/*.ts"],
        }),
      );
      const tsc = join(project, "node_modules/typescript/bin/tsc");
      // The check covers every example and the packages' own declarations.
      const listed = (await node([tsc, "-p", `tsconfig.${resolution}.json`, "--listFilesOnly"])).stdout;
      for (const file of copied) expect(listed).toContain(`examples/${file}`);
      for (const pkg of publicPackages)
        expect(listed, pkg.name).toContain(`node_modules/${pkg.name}/dist/index.d.ts`);
      const result = await node([tsc, "-p", `tsconfig.${resolution}.json`]).catch(
        (error: { stdout?: string; stderr?: string }) => error,
      );
      expect(`${result.stdout ?? ""}${result.stderr ?? ""}`, copied.join(", ")).toBe("");
    },
    180_000,
  );

  it("a user's own test written with @inmesh/testing proves an allowed and a denied call", async () => {
    // The @inmesh/testing README example as a user has it: compiled with the user's TypeScript, run by
    // node's test runner, against the installed tarballs only.
    const userDir = join(project, "user-test");
    mkdirSync(userDir, { recursive: true });
    copyFileSync(
      join(packagesDir, "testing", "test", "readme-example.ts"),
      join(userDir, "books.policy.test.ts"),
    );
    const tsc = join(project, "node_modules/typescript/bin/tsc");
    await node([
      tsc,
      "--module",
      "nodenext",
      "--target",
      "es2022",
      "--strict",
      "--types",
      "node",
      "--outDir",
      join(userDir, "out"),
      join(userDir, "books.policy.test.ts"),
    ]);
    const result = await node([
      "--test",
      "--test-reporter=tap",
      join(userDir, "out", "books.policy.test.js"),
    ]).catch((error: { stdout?: string; stderr?: string; code?: number }) => error);
    const output = `${result.stdout ?? ""}${result.stderr ?? ""}`;
    expect(output).toMatch(/^ok \d+ - web may POST to books$/m);
    expect(output).toMatch(/^ok \d+ - stranger may not$/m);
    expect(output).toMatch(/^# fail 0$/m);
  }, 120_000);

  it("npx inmesh --version and --help work from the installed CLI", async () => {
    const cliVersion = JSON.parse(readFileSync(join(packagesDir, "cli", "package.json"), "utf8")).version;
    const version = await run("npx", ["--no-install", "inmesh", "--version"], { cwd: project });
    expect(version.stdout).toBe(`${cliVersion}\n`);
    const help = await run("npx", ["--no-install", "inmesh", "--help"], { cwd: project });
    expect(help.stdout).toContain("usage: inmesh <command>");
    for (const command of ["control-plane", "env", "check"]) expect(help.stdout).toContain(command);
  });
});
