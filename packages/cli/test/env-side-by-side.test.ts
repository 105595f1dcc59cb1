import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { type ControlPlane, startControlPlane } from "@inmesh/control-plane";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

// Two services on one machine, each started with nothing but its own `inmesh env` output (built CLI and
// the built books example, as a user runs them): no port or address is given by hand, and they do not
// collide on the admin port or the service port.

const run = promisify(execFile);
const bin = fileURLToPath(new URL("../dist/bin.js", import.meta.url));
const booksServer = fileURLToPath(new URL("../../../examples/books/dist/server.js", import.meta.url));
const PODS = [
  { name: "books-a", ip: "127.0.14.1" },
  { name: "books-b", ip: "127.0.14.2" },
];

/** A port free on every pod address, so both pods can declare the same containerPort. */
async function portFreeOn(hosts: readonly string[]): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, hosts[0], resolve));
    const { port } = probe.address() as { port: number };
    await new Promise<void>((resolve) => probe.close(() => resolve()));
    const others = await Promise.all(
      hosts.slice(1).map(
        (host) =>
          new Promise<boolean>((resolve) => {
            const server = createServer();
            server.once("error", () => resolve(false));
            server.listen(port, host, () => server.close(() => resolve(true)));
          }),
      ),
    );
    if (others.every(Boolean)) return port;
  }
  throw new Error("no port free on every pod address");
}

describe("inmesh env: local services side by side", () => {
  let dir: string;
  let controlPlane: ControlPlane;
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    for (const file of [bin, booksServer])
      if (!existsSync(file)) throw new Error(`run \`pnpm run build\` before this test: ${file} missing`);
    dir = await mkdtemp(path.join(tmpdir(), "inmesh-side-by-side-"));
    const servicePort = await portFreeOn(PODS.map((pod) => pod.ip));
    const manifests = PODS.map(
      (pod) => `apiVersion: v1
kind: Pod
metadata: { name: ${pod.name}, namespace: default, labels: { app: books, linkerd.io/control-plane-ns: linkerd } }
spec:
  serviceAccountName: books
  containers: [{ name: app, ports: [{ name: http, containerPort: ${servicePort} }] }]
status: { podIP: ${pod.ip} }
`,
    ).join("---\n");
    await mkdir(path.join(dir, "manifests"));
    await writeFile(path.join(dir, "manifests", "pods.yaml"), manifests);
    controlPlane = await startControlPlane({
      manifestsDir: path.join(dir, "manifests"),
      stateDir: path.join(dir, "state"),
      ports: { identity: 0, destination: 0, policy: 0 },
      watch: false,
    });
  });

  afterAll(async () => {
    for (const child of children) child.kill("SIGKILL");
    await controlPlane?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("two services started only from their own env files both serve, each with its own admin address", async () => {
    const ports = controlPlane.addresses;
    const portOf = (address: string) => address.slice(address.lastIndexOf(":") + 1);
    const started: { pod: string; admin: string; address: string }[] = [];
    for (const pod of PODS) {
      const { stdout } = await run(
        process.execPath,
        [
          bin,
          "env",
          pod.name,
          "--manifests",
          "manifests",
          "--state",
          "state",
          "--identity-port",
          portOf(ports.identity),
          "--destination-port",
          portOf(ports.destination),
          "--policy-port",
          portOf(ports.policy),
        ],
        { cwd: dir },
      );
      const envFile = path.join(dir, `${pod.name}.env`);
      await writeFile(envFile, stdout);
      const admin = /^LINKERD2_PROXY_ADMIN_LISTEN_ADDR=(.*)$/m.exec(stdout)?.[1]?.replace(/^"|"$/g, "");
      expect(admin).toBe(`${pod.ip}:4191`);

      // Only the env file (and PATH): no HOST, PORT or admin address given by hand.
      const child = spawn(process.execPath, [`--env-file=${envFile}`, booksServer], {
        cwd: dir,
        env: { PATH: process.env.PATH ?? "" },
        stdio: ["ignore", "pipe", "pipe"],
      });
      children.push(child);
      const line = await new Promise<string>((resolve, reject) => {
        let out = "";
        let err = "";
        child.stdout?.on("data", (chunk: Buffer) => {
          out += chunk.toString();
          const ready = out.split("\n").find((text) => text.includes('"event":"ready"'));
          if (ready) resolve(ready);
        });
        child.stderr?.on("data", (chunk: Buffer) => {
          err += chunk.toString();
        });
        child.once("exit", (code) => reject(new Error(`${pod.name} exited with ${code}: ${err}`)));
      });
      const ready = JSON.parse(line) as { pod: string; address: string };
      started.push({ pod: ready.pod, admin: admin as string, address: ready.address });
    }

    expect(started.map((service) => service.pod)).toEqual(PODS.map((pod) => pod.name));
    expect(new Set(started.map((service) => service.address)).size).toBe(2);
    // Both are alive and ready, each on its own admin address.
    for (const service of started) {
      const response = await fetch(`http://${service.admin}/ready`);
      expect(response.status, service.pod).toBe(200);
    }
    for (const child of children) expect(child.exitCode).toBeNull();
  });
});
