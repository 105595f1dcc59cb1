// A script whose only work is `await identity.ready()` must not exit in silence while the identity
// service is unreachable: the Certify retry timer and the gRPC channel are unref'd, so without a handle
// of its own the wait lets Node exit with code 13 ("unsettled top-level await") between two attempts.
// Runs the built dist in a child process, as a user's script runs it.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import {
  createTestCa,
  IDENTITY_SERVICE_NAME,
  scratchDir,
  TOKEN,
  WORKLOAD,
} from "./support/identity-server.js";

const identityDist = fileURLToPath(new URL("../dist/index.js", import.meta.url));

/** A loopback port that refuses connections: bound once to learn a free number, then closed. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe("identity ready() against an unreachable identity service", () => {
  it("keeps the process alive until its signal aborts, then rejects with its reason (DEADLINE for a timeout)", async () => {
    if (!existsSync(identityDist))
      throw new Error("run `pnpm run build` before this test: packages/identity/dist missing");
    const ca = await createTestCa();
    const dir = await scratchDir();
    try {
      const tokenFile = await dir.write("token", TOKEN);
      const script = await dir.write(
        "wait.mjs",
        `const { createIdentityProvider } = await import(${JSON.stringify(identityDist)});
const identity = createIdentityProvider();
const started = performance.now();
try {
  await identity.ready({ signal: AbortSignal.timeout(3000) });
  console.log(JSON.stringify({ ready: true }));
} catch (error) {
  console.log(JSON.stringify({ code: error.code, waitedMs: Math.round(performance.now() - started) }));
}
await identity.close();
`,
      );
      const child = spawn(process.execPath, [script], {
        env: {
          ...process.env,
          NODE_DEBUG: "",
          LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS: ca.trustAnchorsPem,
          LINKERD2_PROXY_IDENTITY_LOCAL_NAME: WORKLOAD,
          LINKERD2_PROXY_IDENTITY_TOKEN_FILE: tokenFile,
          LINKERD2_PROXY_IDENTITY_SVC_ADDR: `127.0.0.1:${await closedPort()}`,
          LINKERD2_PROXY_IDENTITY_SVC_NAME: IDENTITY_SERVICE_NAME,
          LINKERD2_PROXY_IDENTITY_DIR: "/ignored/because/keys/stay/in/memory",
        },
        stdio: ["ignore", "pipe", "pipe"],
      });
      let stdout = "";
      let stderr = "";
      child.stdout.on("data", (chunk: Buffer) => {
        stdout += chunk.toString();
      });
      child.stderr.on("data", (chunk: Buffer) => {
        stderr += chunk.toString();
      });
      const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
      expect(code, stderr).toBe(0);
      const result = JSON.parse(stdout.trim().split("\n").at(-1) ?? "{}");
      expect(result.code).toBe("MESH_ERR_DEADLINE");
      expect(result.waitedMs).toBeGreaterThanOrEqual(2900);
    } finally {
      await dir.remove();
    }
  });
});
