// A script whose only work is `await identity.ready()`, `await watch.ready()` (discovery) or
// `await policies.ready()` (inbound policy) must not exit in silence while its control-plane service is
// unreachable: their retry timers and gRPC channels are unref'd, so without a handle of their own the
// wait let Node exit with code 13 ("unsettled top-level await") between two attempts. Runs the built
// dist in a child process, as a user's script runs it.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { freeLoopbackPort } from "@inmesh/testing/ports";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  createTestCa,
  IDENTITY_SERVICE_NAME,
  TOKEN,
  WORKLOAD,
} from "../packages/identity/test/support/identity-server.js";

const packages = fileURLToPath(new URL("../packages/", import.meta.url));
const dist = (name: string) => pathToFileURL(path.join(packages, name, "dist/index.js")).href;

const WAIT_MS = 3000;

function scriptFor(watch: string): string {
  return `import { createRequire } from "node:module";
const { credentials } = createRequire(${JSON.stringify(path.join(packages, "proto/package.json"))})("@grpc/grpc-js");
const { destination, inbound, outbound } = await import(${JSON.stringify(dist("proto"))});
const { createContextToken, createDiscovery } = await import(${JSON.stringify(dist("destination"))});
const { createPolicyWatcher } = await import(${JSON.stringify(dist("policy"))});
const { createIdentityProvider } = await import(${JSON.stringify(dist("identity"))});
const address = process.env.CONTROLLER_ADDR;
${watch}
const started = performance.now();
try {
  await waiting.ready({ signal: AbortSignal.timeout(${WAIT_MS}) });
  console.log(JSON.stringify({ ready: true }));
} catch (error) {
  console.log(JSON.stringify({ code: error.code, waitedMs: Math.round(performance.now() - started) }));
}
await closing.close();
`;
}

const WATCHES: Record<string, string> = {
  "identity (Certify)": `const waiting = createIdentityProvider();
const closing = waiting;`,
  "discovery (an endpoints watch)": `const discovery = createDiscovery({
  destinationClient: new destination.DestinationClient(address, credentials.createInsecure()),
  policyClient: new outbound.OutboundPoliciesClient(address, credentials.createInsecure()),
  contextToken: createContextToken({ ns: "shop" }),
  sourceWorkload: '{"ns":"shop","pod":"web-0"}',
});
const waiting = discovery.watchEndpoints("books.shop.svc.cluster.local:8080");
const closing = discovery;`,
  "inbound policy (a port watcher)": `const client = new inbound.InboundServerPoliciesClient(address, credentials.createInsecure());
const waiting = createPolicyWatcher({ client, workload: '{"ns":"shop","pod":"books-0"}', ports: [8080] });
const closing = waiting;`,
};

let dir: string;
let identityEnv: Record<string, string>;
beforeAll(async () => {
  for (const name of ["proto", "destination", "policy", "identity"]) {
    if (!existsSync(fileURLToPath(dist(name))))
      throw new Error(`run \`pnpm run build\` before this test: packages/${name}/dist missing`);
  }
  dir = await mkdtemp(path.join(tmpdir(), "inmesh-ready-"));
  const tokenFile = path.join(dir, "token");
  await writeFile(tokenFile, TOKEN);
  identityEnv = {
    LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS: (await createTestCa()).trustAnchorsPem,
    LINKERD2_PROXY_IDENTITY_LOCAL_NAME: WORKLOAD,
    LINKERD2_PROXY_IDENTITY_TOKEN_FILE: tokenFile,
    LINKERD2_PROXY_IDENTITY_SVC_NAME: IDENTITY_SERVICE_NAME,
    LINKERD2_PROXY_IDENTITY_DIR: "/ignored/because/keys/stay/in/memory",
  };
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("ready() against an unreachable controller", () => {
  for (const [name, watch] of Object.entries(WATCHES)) {
    it(`${name}: keeps the process alive until its signal aborts, then rejects with DEADLINE`, async () => {
      const script = path.join(dir, `${name.split(" ")[0]}.mjs`);
      await writeFile(script, scriptFor(watch));
      // Nothing listens there: the port is outside the ephemeral range and was free a moment ago.
      const address = `127.0.0.1:${await freeLoopbackPort()}`;
      // Synchronous: nothing the child needs runs in this process (its controller is unreachable).
      const run = spawnSync(process.execPath, [script], {
        env: {
          ...process.env,
          ...identityEnv,
          NODE_DEBUG: "",
          CONTROLLER_ADDR: address,
          LINKERD2_PROXY_IDENTITY_SVC_ADDR: address,
        },
        encoding: "utf8",
        timeout: 4 * WAIT_MS,
      });
      expect(run.status, run.stderr).toBe(0);
      const result = JSON.parse(run.stdout.trim().split("\n").at(-1) ?? "{}");
      expect(result.code).toBe("MESH_ERR_DEADLINE");
      expect(result.waitedMs).toBeGreaterThanOrEqual(WAIT_MS - 100);
    });
  }
});
