import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { createCertificateAuthority, formatDotenv, formatDotenvValue } from "@inmesh/control-plane";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const run = promisify(execFile);

/** What `node --env-file` (this Node, the one the tests run on) reads back from a file. */
async function readBack(file: string, keys: string[]): Promise<Record<string, string | undefined>> {
  const script = `const keys = ${JSON.stringify(keys)}; process.stdout.write(JSON.stringify(Object.fromEntries(keys.map((k) => [k, process.env[k]]))));`;
  const { stdout } = await run(process.execPath, [`--env-file=${file}`, "-e", script], { env: {} });
  return JSON.parse(stdout);
}

describe("dotenv output", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "inmesh-dotenv-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("round-trips PEM bundles, JSON, paths and odd characters through node --env-file", async () => {
    const ca = await createCertificateAuthority();
    await ca.beginTrustAnchorRotation(); // two roots: a multi-certificate bundle
    const variables = {
      PEM: ca.trustAnchorsPem.trim(),
      JSON_WORKLOAD: JSON.stringify({ ns: "default", pod: "web-1" }),
      PLAIN: "127.0.0.1:8090",
      NETWORKS: "10.0.0.0/8,fd00::/8",
      EMPTY: "",
      HASH: "a # not a comment",
      QUOTES: `it's "quoted"`,
      SPACES: "  padded  ",
      BACKSLASH: "C:\\path\\n",
    };
    const file = path.join(dir, "all.env");
    await writeFile(file, formatDotenv(variables));
    expect(await readBack(file, Object.keys(variables))).toEqual(variables);
  });

  it("refuses values no quoting can carry and invalid names", () => {
    expect(() => formatDotenvValue("a'b\"c`d\ne")).toThrow(/cannot be written/);
    expect(() => formatDotenv({ "BAD-NAME": "x" })).toThrow(/invalid environment variable name/);
  });
});
