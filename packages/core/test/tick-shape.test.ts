import { spawn } from "node:child_process";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";

const CHILD = fileURLToPath(new URL("./support/tick-shape-child.mjs", import.meta.url));
const DIST = fileURLToPath(new URL("../dist/index.js", import.meta.url));
const CHILD_TIMEOUT_MS = 20_000;
const dir = mkdtempSync(path.join(tmpdir(), "inmesh-tick-shape-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** V8's states for nextTick's property definitions after idle spells, and whether a tick was held. */
async function afterIdleSpells(mode: "control" | "held"): Promise<{ held: boolean; states: string[] }> {
  if (!existsSync(DIST))
    throw new Error(`${DIST} is missing: the child runs the built package (pnpm run build)`);
  // A file, not a pipe: V8 writes its report straight to stdout, and node makes a pipe non-blocking.
  const file = path.join(dir, `${mode}.txt`);
  const out = openSync(file, "w");
  const child = spawn(process.execPath, ["--allow-natives-syntax", "--expose-gc", CHILD, mode], {
    stdio: ["ignore", out, "pipe"],
    timeout: CHILD_TIMEOUT_MS,
  });
  // The child has its own copy of the descriptor.
  closeSync(out);
  let stderr = "";
  child.stderr?.on("data", (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-4000);
  });
  const code = await new Promise<number | null>((resolve) => child.once("close", resolve));
  if (code !== 0) throw new Error(`the ${mode} child exited with ${code}: ${stderr}`);
  const stdout = readFileSync(file, "utf8");
  const states = [...stdout.matchAll(/DefineKeyedOwnPropertyInLiteral (\w+)/g)].map(
    (match) => match[1] as string,
  );
  return { held: /^HELD true$/m.test(stdout), states };
}

describe("holdTickShape", () => {
  it("keeps nextTick's property definitions monomorphic through idle spells", async () => {
    const control = await afterIdleSpells("control");
    // The fault it guards against, on this node: without a held tick, the idle collections leave
    // nextTick's definitions megamorphic. Should this stop holding, V8 no longer loses them and the
    // hold can go.
    expect(control.held).toBe(false);
    expect(control.states.length).toBeGreaterThanOrEqual(3);
    expect(control.states).toContain("MEGAMORPHIC");

    const held = await afterIdleSpells("held");
    expect(held.held).toBe(true);
    expect(held.states.length).toBe(control.states.length);
    expect(held.states).not.toContain("MEGAMORPHIC");
  });
});
