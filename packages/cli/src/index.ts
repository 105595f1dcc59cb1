import { readFileSync } from "node:fs";
import { formatManifestProblem, type ManifestProblem } from "@inmesh/control-plane";
import { isMeshError } from "@inmesh/core";
import { checkCommand } from "./commands/check.js";
import { controlPlaneCommand } from "./commands/control-plane.js";
import { envCommand } from "./commands/env.js";
import { explainCommand } from "./commands/explain.js";
import { type CliIo, type Command, UsageError } from "./io.js";

export type { CliIo, Command } from "./io.js";
export { UsageError } from "./io.js";

/** Subcommands, one module each. */
export const commands: readonly Command[] = [controlPlaneCommand, envCommand, checkCommand, explainCommand];

function help(): string {
  const width = Math.max(...commands.map((command) => command.name.length));
  return [
    "usage: inmesh <command> [options]",
    "",
    ...commands.map((command) => `  ${command.name.padEnd(width)}  ${command.summary}`),
    "",
    "inmesh <command> --help shows a command's options; inmesh --version prints the version.",
    "",
  ].join("\n");
}

/** This package's version, read from its package.json (next to both src/ and dist/). */
export function cliVersion(): string {
  const manifest = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as {
    version: string;
  };
  return manifest.version;
}

function problemsOf(error: unknown): ManifestProblem[] | undefined {
  const problems = isMeshError(error) ? error.details?.problems : undefined;
  return Array.isArray(problems) ? problems : undefined;
}

/** Runs `inmesh ARGV` and resolves to the exit code; never throws, never calls process.exit. */
export async function main(argv: readonly string[], io: CliIo): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    io.stdout(help());
    return name === undefined ? 2 : 0;
  }
  if (name === "--version" || name === "-v" || name === "version") {
    io.stdout(`${cliVersion()}\n`);
    return 0;
  }
  const command = commands.find((candidate) => candidate.name === name);
  if (command === undefined) {
    io.stderr(`inmesh: unknown command ${JSON.stringify(name)}\n${help()}`);
    return 2;
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    io.stdout(`usage: ${command.usage}\n`);
    return 0;
  }
  try {
    return await command.run(rest, io);
  } catch (error) {
    if (error instanceof UsageError || (error as NodeJS.ErrnoException)?.code?.startsWith("ERR_PARSE_ARGS")) {
      io.stderr(`inmesh ${name}: ${(error as Error).message}\nusage: ${command.usage}\n`);
      return 2;
    }
    const problems = problemsOf(error);
    if (problems !== undefined) {
      io.stderr(`inmesh ${name}: invalid manifests:\n`);
      for (const problem of problems) io.stderr(`  ${formatManifestProblem(problem)}\n`);
      return 1;
    }
    const message = error instanceof Error ? error.message : String(error);
    io.stderr(`inmesh ${name}: ${message.split("\n")[0]}\n`);
    return 1;
  }
}
