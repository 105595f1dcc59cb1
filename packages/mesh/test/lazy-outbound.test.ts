import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { type ControlPlane, startControlPlane } from "@inmesh/control-plane";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

// An inbound-only service loads no outbound stack: undici, the dispatcher, discovery (@inmesh/destination),
// the destination and outbound codecs (all of @inmesh/proto but its `serving` entry), the gRPC mesh
// channel and re2js come with the first outbound use. With no OpenTelemetry SDK registered,
// @opentelemetry/api is not loaded either (the tracing bridge waits for one). @bufbuild/protobuf is never
// loaded: @inmesh/proto bundles the wire reader and writer it needs (its `/wire` entry loads ~20 modules).
// Runs the built dist in a child process, as a user's service runs it (from sources the stack is imported
// up front; see outbound-module.ts).

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

describe("the outbound stack of a built mesh", () => {
  let dir: string;
  let controlPlane: ControlPlane;
  let env: Record<string, string>;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "inmesh-lazy-outbound-"));
    controlPlane = await startControlPlane({
      manifests,
      stateDir: dir,
      ports: { identity: 0, destination: 0, policy: 0 },
      watch: false,
    });
    env = (await controlPlane.writeEnv("books-0")).variables;
  });

  afterAll(async () => {
    await controlPlane?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("is not loaded by a serving mesh, and is on the first mesh.fetch or mesh.dispatcher", async () => {
    if (!existsSync(meshDist))
      throw new Error("run `pnpm run build` before this test: packages/mesh/dist missing");
    const script = path.join(dir, "service.mjs");
    const loadedList = path.join(dir, "esm-loaded.txt");
    // ES modules are not in require.cache: a load hook (on the loader's thread) lists each one as it loads.
    const hooks = path.join(dir, "hooks.mjs");
    await writeFile(
      hooks,
      `import { appendFileSync } from "node:fs";
export async function load(url, context, next) {
  appendFileSync(${JSON.stringify(loadedList)}, url + "\\n");
  return next(url, context);
}
`,
    );
    await writeFile(
      script,
      `import http from "node:http";
import { readFileSync, existsSync } from "node:fs";
import { createRequire, register } from "node:module";
register(${JSON.stringify(pathToFileURL(hooks).href)});
const { createMesh } = await import(${JSON.stringify(meshDist)});
const require = createRequire(import.meta.url);
const loaded = () => [
  ...Object.keys(require.cache),
  ...(existsSync(${JSON.stringify(loadedList)}) ? readFileSync(${JSON.stringify(loadedList)}, "utf8").split("\\n") : []),
];
const undiciLoaded = () => loaded().some((file) => file.includes("/undici/"));
const mesh = createMesh({ admin: false, transportHeader: false });
await mesh.ready();
const server = mesh.createServer((req, res) => res.end("meshed"), { port: 8081 });
await server.listen(0, "127.0.0.1");
const served = undiciLoaded();
const lazyLoaded = !served;
const outboundOnly = loaded().filter((file) => /\\/(destination|grpc|proto)\\/dist\\/index\\.js$|\\/re2js\\/|\\/@opentelemetry\\/api\\//.test(file));
const plain = http.createServer((req, res) => res.end("plain"));
await new Promise((resolve) => plain.listen(0, "127.0.0.1", resolve));
const response = await mesh.fetch("http://127.0.0.1:" + plain.address().port + "/");
const result = { served, outboundOnly: lazyLoaded ? outboundOnly : [], body: await response.text(), afterFetch: undiciLoaded(), dispatch: typeof mesh.dispatcher.dispatch, protobufRuntime: loaded().filter((file) => file.includes("/@bufbuild/")) };
plain.close();
await mesh.close();
console.log(JSON.stringify(result));
`,
    );
    const child = spawn(process.execPath, [script], {
      env: { ...process.env, ...env, NODE_DEBUG: "" },
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
    const lazy = (process.features as { require_module?: boolean }).require_module === true;
    // Where Node cannot require an ES module, the stack is imported when the mesh is created.
    expect(result).toEqual({
      served: !lazy,
      outboundOnly: [],
      body: "plain",
      afterFetch: true,
      dispatch: "function",
      protobufRuntime: [],
    });
  });
});
