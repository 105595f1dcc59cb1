import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { type ControlPlane, startControlPlane } from "@inmesh/control-plane";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runChecks } from "../src/commands/check.js";
import { main } from "../src/index.js";

const manifests = [
  {
    path: "app.yaml",
    text: `
apiVersion: v1
kind: Namespace
metadata: { name: bookshop }
---
apiVersion: v1
kind: Pod
metadata:
  name: books-0
  namespace: bookshop
  labels: { app: books, linkerd.io/control-plane-ns: linkerd }
spec:
  serviceAccountName: books
  containers:
    - name: app
      ports: [{ name: http, containerPort: 8080 }]
`,
  },
];

describe("inmesh check", () => {
  let stateDir: string;
  let controlPlane: ControlPlane;
  let env: Record<string, string>;

  beforeAll(async () => {
    stateDir = await mkdtemp(path.join(tmpdir(), "inmesh-check-"));
    controlPlane = await startControlPlane({
      manifests,
      stateDir,
      ports: { identity: 0, destination: 0, policy: 0 },
      watch: false,
    });
    env = { ...(await controlPlane.writeEnv("books-0", { namespace: "bookshop" })).variables };
  });

  afterAll(async () => {
    await controlPlane?.close();
    await rm(stateDir, { recursive: true, force: true });
  });

  it("passes against a healthy dev control plane", async () => {
    const results = await runChecks(env, { timeoutMs: 10_000 });
    expect(results.filter((result) => result.status === "fail")).toEqual([]);
    expect(results.map((result) => result.name)).toEqual([
      "configuration",
      "trust anchors",
      "identity",
      "clock skew",
      "policy",
      "destination",
    ]);
    expect(results.find((result) => result.name === "identity")?.message).toContain(
      "books.bookshop.serviceaccount.identity.linkerd.cluster.local",
    );
    expect(results.find((result) => result.name === "policy")?.message).toMatch(
      /^port 8080: default\/all-unauthenticated/,
    );
  });

  it("prints ✔ lines, or JSON, and exits 0", async () => {
    let out = "";
    const io = {
      stdout: (text: string) => (out += text),
      stderr: () => {},
      cwd: stateDir,
      signal: new AbortController().signal,
      env,
    };
    expect(await main(["check"], io)).toBe(0);
    expect(out).toMatch(/^✔ configuration: /m);
    expect(out).toContain("Status check results are ✔");
    out = "";
    expect(await main(["check", "--output", "json"], io)).toBe(0);
    const parsed = JSON.parse(out) as { ok: boolean; checks: { status: string }[] };
    expect(parsed.ok).toBe(true);
    expect(parsed.checks.every((check) => check.status !== "fail")).toBe(true);
  });

  it("fails on trust anchors past their expiry, before contacting anything", async () => {
    const results = await runChecks(env, { timeoutMs: 2_000, nowMs: Date.now() + 50 * 365 * 86_400_000 });
    expect(results.at(-1)).toMatchObject({ name: "trust anchors", status: "fail" });
    expect(results.at(-1)?.message).toMatch(/expired on/);
  });

  it("warns when the anchors are close to expiry", async () => {
    const results = await runChecks(env, { timeoutMs: 10_000, anchorWarningMs: 100 * 365 * 86_400_000 });
    expect(results.find((result) => result.name === "trust anchors")?.status).toBe("warn");
    expect(results.some((result) => result.status === "fail")).toBe(false);
  });

  it("fails with a non-zero exit when configuration is invalid", async () => {
    let out = "";
    const io = {
      stdout: (text: string) => (out += text),
      stderr: () => {},
      cwd: stateDir,
      signal: new AbortController().signal,
      env: { ...env, LINKERD2_PROXY_IDENTITY_LOCAL_NAME: "Not A Name" },
    };
    expect(await main(["check"], io)).toBe(1);
    expect(out).toMatch(/^✘ configuration: .*LINKERD2_PROXY_IDENTITY_LOCAL_NAME/m);
  });

  it("fails when the control plane is stopped", async () => {
    await controlPlane.close();
    let out = "";
    const io = {
      stdout: (text: string) => (out += text),
      stderr: () => {},
      cwd: stateDir,
      signal: new AbortController().signal,
      env,
    };
    expect(await main(["check", "--timeout", "2s", "--output", "json"], io)).toBe(1);
    const parsed = JSON.parse(out) as { ok: boolean; checks: { name: string; status: string }[] };
    expect(parsed.ok).toBe(false);
    expect(parsed.checks.find((check) => check.name === "identity")?.status).toBe("fail");
  });
});
