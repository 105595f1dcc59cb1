import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

// Runs the README's demo command (after `pnpm run build`, as scripts/demo.sh does) and checks what it
// shows: real processes, real sockets, the built packages.
const root = fileURLToPath(new URL("..", import.meta.url));
const demo = path.join(root, "examples/demo/run.mjs");
const DEMO_LIMIT_MS = 60_000;

const built = [
  "packages/control-plane/dist/index.js",
  "packages/mesh/dist/index.js",
  "examples/web/dist/server.js",
  "examples/books/dist/server.js",
  "examples/authors/dist/server.js",
];

function run(): Promise<{
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [demo], { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      stdout += chunk;
    });
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
      stderr += chunk;
    });
    // SIGTERM lets the demo stop its children; SIGKILL is the last resort.
    const term = setTimeout(() => child.kill("SIGTERM"), DEMO_LIMIT_MS);
    const kill = setTimeout(() => child.kill("SIGKILL"), DEMO_LIMIT_MS + 10_000);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(term);
      clearTimeout(kill);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

describe("the demo (examples/demo/run.mjs)", () => {
  it("tours identities, an allowed call, a denial, a retried POST and a live policy change, then stops everything", async () => {
    const missing = built.filter((file) => !existsSync(path.join(root, file)));
    if (missing.length > 0) {
      throw new Error(`run \`pnpm run build\` before the tests: missing ${missing.join(", ")}`);
    }

    const { code, signal, stdout, stderr } = await run();
    const context = `stdout:\n${stdout}\nstderr:\n${stderr}`;
    expect({ code, signal }, context).toEqual({ code: 0, signal: null });

    // 1. identities, one per service and the tour's own, with an expiry.
    for (const account of ["web", "books", "authors", "stranger"]) {
      expect(stdout, context).toMatch(
        new RegExp(
          `${account}\\.bookshop\\.serviceaccount\\.identity\\.linkerd\\.cluster\\.local {2}expires \\d{4}-`,
        ),
      );
    }
    // 2. the allowed calls, with the caller identity each server saw.
    expect(stdout, context).toMatch(
      /web → books {3}GET \/books: 200 from books-(flaky-)?0, which saw the caller web\.bookshop\.serviceaccount/,
    );
    expect(stdout, context).toMatch(
      /web → authors GetAuthor: OK from authors-0, which saw the caller web\.bookshop\.serviceaccount/,
    );
    // 3. the denial, with Linkerd's reason for meshed clients.
    expect(stdout, context).toMatch(/stranger GET {2}\/books → 200/);
    expect(stdout, context).toMatch(/stranger POST \/books → 403, l5d-proxy-error: \S+/);
    expect(stdout, context).toMatch(/unmeshed gRPC GetAuthor from 127\.0\.0\.6 → authors: PERMISSION_DENIED/);
    // 4. the retried POST: the flaky replica refuses the first try, the retry carries the same body.
    expect(stdout, context).toMatch(/try 1 → books-flaky-0: 503/);
    expect(stdout, context).toMatch(/try 2 → books-flaky-0: 201/);
    const sent = /sent {5}(\d+) bytes, sha256 (\w+)/.exec(stdout);
    const received = /received (\d+) bytes, sha256 (\w+)/.exec(stdout);
    expect(sent?.[1], context).toBe(String(60 * 1024));
    expect(received?.slice(1), context).toEqual(sent?.slice(1));
    expect(stdout, context).toContain("body intact after the retry: yes");
    // 5. the live policy change.
    expect(stdout, context).toMatch(/stranger POST \/books → 201 after \d+ ms/);

    // Nothing left behind: every service the demo started is gone.
    const pids = /stopped 4 services \(pids ([\d ]+)\)/.exec(stdout)?.[1]?.split(" ").map(Number) ?? [];
    expect(pids, context).toHaveLength(4);
    expect(pids.filter(isRunning)).toEqual([]);
  }, 90_000);
});
