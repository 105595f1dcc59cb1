import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startControlPlane } from "@inmesh/control-plane";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

// `inmesh check` against a control plane that is down, as a user runs it (the built bin in a child
// process): it must report the address and the error and exit non-zero, not exit silently.

const bin = fileURLToPath(new URL("../dist/bin.js", import.meta.url));

async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe("inmesh check with the control plane down", () => {
  let dir: string;
  let env: Record<string, string>;
  let deadAddress: string;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "inmesh-check-down-"));
    const controlPlane = await startControlPlane({
      manifests: [
        {
          path: "pod.yaml",
          text: `
apiVersion: v1
kind: Pod
metadata: { name: web-0, namespace: default, labels: { app: web, linkerd.io/control-plane-ns: linkerd } }
spec: { serviceAccountName: web, containers: [{ name: app, ports: [{ containerPort: 8081 }] }] }
`,
        },
      ],
      stateDir: dir,
      ports: { identity: 0, destination: 0, policy: 0 },
      watch: false,
    });
    const workload = await controlPlane.writeEnv("web-0");
    await controlPlane.close();
    deadAddress = `127.0.0.1:${await closedPort()}`;
    env = {
      ...workload.variables,
      LINKERD2_PROXY_IDENTITY_SVC_ADDR: deadAddress,
      LINKERD2_PROXY_DESTINATION_SVC_ADDR: deadAddress,
      LINKERD2_PROXY_POLICY_SVC_ADDR: deadAddress,
    };
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("prints the failing dependency with its address and error, and exits 1", async () => {
    if (!existsSync(bin)) throw new Error("run `pnpm run build` before this test: packages/cli/dist missing");
    const outcome = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = execFile(
        process.execPath,
        [bin, "check", "--timeout", "2s"],
        { env: { ...process.env, ...env, NODE_DEBUG: "" }, cwd: dir },
        (_error, stdout, stderr) => resolve({ code: child.exitCode, stdout, stderr }),
      );
    });
    expect(outcome.code, outcome.stderr).toBe(1);
    expect(outcome.stdout).toContain(`✘ identity: no certificate from ${deadAddress}`);
    expect(outcome.stdout).toContain("ECONNREFUSED");
    expect(outcome.stdout).toContain("Status check results are ✘");
  });
});
