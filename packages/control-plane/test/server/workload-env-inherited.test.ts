import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { type ControlPlane, startControlPlane } from "../../src/index.js";

const pod = (name: string, ip: string, annotation = "") => `
apiVersion: v1
kind: Pod
metadata:
  name: ${name}
  namespace: shop
  labels: { linkerd.io/control-plane-ns: linkerd }
  ${annotation ? `annotations: { config.linkerd.io/default-inbound-policy: "${annotation}" }` : ""}
spec: { containers: [{ name: app, ports: [{ containerPort: 8080 }] }] }
status: { podIP: ${ip} }
---`;

let controlPlane: ControlPlane;
let stateDir: string;
beforeAll(async () => {
  stateDir = await mkdtemp(path.join(tmpdir(), "inmesh-env-"));
  controlPlane = await startControlPlane({
    stateDir,
    manifests: [
      {
        path: "shop.yaml",
        text: `
apiVersion: v1
kind: Namespace
metadata: { name: shop, annotations: { config.linkerd.io/default-inbound-policy: all-authenticated } }
---
${pod("inherits", "127.0.0.2")}
${pod("own", "127.0.0.1", "deny")}
${pod("invalid", "10.1.2.3", "bogus")}
`,
      },
    ],
    ports: { identity: 0, destination: 0, policy: 0 },
    watch: false,
    cluster: { defaultPolicy: "cluster-unauthenticated" },
  });
});
afterAll(async () => {
  await controlPlane?.close();
  await rm(stateDir, { recursive: true, force: true });
});

it("gives each pod the default policy the policy controller serves it: pod, then namespace, then cluster", async () => {
  const env = async (name: string) => (await controlPlane.writeEnv(name, { namespace: "shop" })).variables;
  expect((await env("inherits")).LINKERD2_PROXY_INBOUND_DEFAULT_POLICY).toBe("all-authenticated");
  expect((await env("own")).LINKERD2_PROXY_INBOUND_DEFAULT_POLICY).toBe("deny");
  expect((await env("invalid")).LINKERD2_PROXY_INBOUND_DEFAULT_POLICY).toBe("cluster-unauthenticated");
});

it("makes local pods on their own loopback address call from it, never from 127.0.0.1", async () => {
  const env = async (name: string) => (await controlPlane.writeEnv(name, { namespace: "shop" })).variables;
  expect((await env("inherits")).MESH_SDK_OUTBOUND_LOCAL_ADDRESS).toBe("127.0.0.2");
  expect((await env("own")).MESH_SDK_OUTBOUND_LOCAL_ADDRESS).toBeUndefined();
  expect((await env("invalid")).MESH_SDK_OUTBOUND_LOCAL_ADDRESS).toBeUndefined();
});
