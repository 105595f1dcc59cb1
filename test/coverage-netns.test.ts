import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

// Pod IPs and external addresses are not loopback, and loopback is never meshed (as in a pod). Inside a
// private network namespace (`unshare -rn`), lo can carry 10.1.2.x pod IPs and 203.0.113.50 /
// 198.51.100.7 "internet" servers, so those paths run for real with the built packages.
const root = fileURLToPath(new URL("..", import.meta.url));
const script = path.join(root, "test/support/netns-coverage.mjs");
const built = [
  "packages/control-plane/dist/index.js",
  "packages/mesh/dist/index.js",
  "packages/http/dist/index.js",
];
const ADDRESSES = ["10.1.2.2", "10.1.2.3", "203.0.113.50", "198.51.100.7"];
// Needs unprivileged user and network namespaces and iproute2; skipped where either is missing.
const netns = spawnSync("unshare", ["-rn", "sh", "-c", "ip link set lo up"]).status === 0;

function runInNetns(): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const setup = ["ip link set lo up", ...ADDRESSES.map((ip) => `ip addr add ${ip}/32 dev lo`)].join(" && ");
  return new Promise((resolve, reject) => {
    const child = spawn(
      "unshare",
      ["-rn", "sh", "-c", `${setup} && exec "$0" "$1"`, process.execPath, script],
      {
        cwd: path.join(root, "test"),
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => {
      stdout += chunk;
    });
    child.stderr.on("data", (chunk: Buffer) => {
      stderr += chunk;
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe.skipIf(!netns)("what gets meshed, with pod and external addresses (network namespace)", () => {
  it("a pod IP gets mTLS with the identity its profile gives; allowed and fallback egress are forwarded, labelled", async () => {
    const missing = built.filter((file) => !existsSync(path.join(root, file)));
    if (missing.length > 0)
      throw new Error(`run \`pnpm run build\` before the tests: missing ${missing.join(", ")}`);
    const { code, stdout, stderr } = await runInNetns();
    const context = `stdout:\n${stdout}\nstderr:\n${stderr}`;
    expect(code, context).toBe(0);
    const result = JSON.parse(stdout.trim().split("\n").pop() ?? "{}");
    // The policy controller does not know a pod IP (NotFound): forwarded to it with its identity, as the
    // proxy does, so the callee sees who called.
    expect(result.podIp, context).toEqual({
      status: 200,
      body: { clientId: "web.bookshop.serviceaccount.identity.linkerd.cluster.local" },
    });
    // An Allow EgressNetwork and an address outside every network (egress-fallback): forwarded as
    // addressed, plaintext, Host unchanged.
    expect(result.allowedEgress, context).toMatchObject({ status: 200, body: { host: "203.0.113.50:8081" } });
    expect(result.fallbackEgress, context).toMatchObject({
      status: 200,
      body: { host: "198.51.100.7:8082" },
    });
    expect(result.egressMetrics.join("\n"), context).toMatch(
      /parent_kind="EgressNetwork",parent_name="partners",parent_namespace="bookshop"/,
    );
  });
});
