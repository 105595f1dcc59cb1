import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startControlPlane } from "@inmesh/control-plane";
import { isMeshError, type MeshError, MeshErrorCode } from "@inmesh/core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createMesh } from "../src/index.js";

// A service whose control plane is down must say so: it stays alive while `ready()` waits, warns once
// per failing dependency with its address and error, and a bounded `ready()` rejects naming them.

const meshDist = fileURLToPath(new URL("../dist/index.js", import.meta.url));

const manifests = [
  {
    path: "app.yaml",
    text: `
apiVersion: v1
kind: Pod
metadata: { name: books-0, namespace: default, labels: { app: books, linkerd.io/control-plane-ns: linkerd } }
spec:
  serviceAccountName: books
  containers: [{ name: app, ports: [{ name: http, containerPort: 8081 }] }]
`,
  },
];

/** A loopback port nothing listens on: connecting to it is refused at once. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe("a service whose control plane is down", () => {
  let dir: string;
  let env: Record<string, string>;
  let deadAddress: string;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "inmesh-cp-down-"));
    // A real workload environment (trust anchors, token, identity name), then every control-plane
    // address pointed at a closed port.
    const controlPlane = await startControlPlane({
      manifests,
      stateDir: dir,
      ports: { identity: 0, destination: 0, policy: 0 },
      watch: false,
    });
    const workload = await controlPlane.writeEnv("books-0");
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

  it("ready() with a timeout rejects with a MeshError naming the dependency, its address and the error", async () => {
    const warnings: MeshError[] = [];
    const mesh = createMesh({ env, admin: false, onWarning: (warning) => warnings.push(warning) });
    try {
      const error = await mesh.ready({ timeoutMs: 1500 }).then(
        () => undefined,
        (reason: unknown) => reason,
      );
      expect(isMeshError(error)).toBe(true);
      const meshError = error as MeshError;
      expect(meshError.code).toBe(MeshErrorCode.CP_UNAVAILABLE);
      expect(meshError.message).toContain(`identity from ${deadAddress} (LINKERD2_PROXY_IDENTITY_SVC_ADDR)`);
      expect(meshError.message).toContain("ECONNREFUSED");
      expect(meshError.message).toContain("policy for port 8081");
      expect(meshError.details?.missing).toContainEqual(
        expect.objectContaining({ dependency: "identity", address: deadAddress }),
      );

      // Several failed attempts, one warning for the identity service.
      expect(mesh.identity.state().consecutiveFailures).toBeGreaterThan(1);
      expect(warnings.filter((warning) => warning.message.includes("identity from"))).toHaveLength(1);
      expect(warnings[0]?.code).toBe(MeshErrorCode.CP_UNAVAILABLE);
      expect(warnings[0]?.message).toContain(deadAddress);
    } finally {
      await mesh.close();
    }
  });

  it("ready({ signal }) rejects the same way when the caller aborts", async () => {
    const mesh = createMesh({ env, admin: false, onWarning: false });
    try {
      const controller = new AbortController();
      const waiting = mesh.ready({ signal: controller.signal });
      setTimeout(() => controller.abort(), 800);
      await expect(waiting).rejects.toMatchObject({
        code: MeshErrorCode.CP_UNAVAILABLE,
        message: expect.stringContaining(deadAddress),
      });
    } finally {
      await mesh.close();
    }
  });

  it("a waiting process stays alive and prints a warning naming the address (child process, built dist)", async () => {
    if (!existsSync(meshDist))
      throw new Error("run `pnpm run build` before this test: packages/mesh/dist missing");
    const script = path.join(dir, "service.mjs");
    // Admin off: nothing else would hold the process open while ready() waits.
    await writeFile(
      script,
      `import { createMesh } from ${JSON.stringify(meshDist)};
const mesh = createMesh({ admin: false });
await mesh.ready();
console.log("ready");
`,
    );
    const child: ChildProcess = spawn(process.execPath, [script], {
      env: { ...process.env, ...env, NODE_DEBUG: "" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    let exited: number | null | undefined;
    child.stderr?.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const exit = new Promise<void>((resolve) =>
      child.on("exit", (code) => {
        exited = code;
        resolve();
      }),
    );
    try {
      // The warning names the identity service's address and the connection error.
      await new Promise<void>((resolve, reject) => {
        const check = () => {
          if (stderr.includes(deadAddress) && stderr.includes("ECONNREFUSED")) resolve();
          else if (exited !== undefined) reject(new Error(`exited with ${exited}; stderr: ${stderr}`));
          else setTimeout(check, 50);
        };
        check();
      });
      expect(stderr).toContain("MeshWarning");
      expect(stderr).toContain(`identity from ${deadAddress}`);
      // Well past the moment the old code let Node exit (about a second, code 13), it is still waiting.
      await new Promise((resolve) => setTimeout(resolve, 2500));
      expect(exited).toBeUndefined();
      expect(stderr.match(/identity from/g)).toHaveLength(1);
    } finally {
      child.kill("SIGKILL");
      await exit;
    }
  });
});
