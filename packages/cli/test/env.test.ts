import { execFile } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { main } from "@inmesh/cli";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTokenStore } from "../../control-plane/src/server/tokens.js";
import { captureIo } from "./helpers.js";

const run = promisify(execFile);

const POD = `apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  labels:
    app: web
    linkerd.io/control-plane-ns: linkerd
  annotations:
    config.linkerd.io/default-inbound-policy: cluster-authenticated
spec:
  serviceAccountName: web
  containers:
    - name: main
      image: app
      ports:
        - containerPort: 9090
        - containerPort: 8080
status:
  podIP: 10.2.0.7
`;

/** The variables `node --env-file` reads from the file. */
async function readBack(file: string): Promise<Record<string, string>> {
  const script =
    "process.stdout.write(JSON.stringify(Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('LINKERD2_PROXY_')))))";
  const { stdout } = await run(process.execPath, [`--env-file=${file}`, "-e", script], { env: {} });
  return JSON.parse(stdout);
}

describe("inmesh env", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "inmesh-env-"));
    await mkdir(path.join(dir, "manifests"));
    await writeFile(path.join(dir, "manifests", "web.yaml"), POD);
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("prints the injector's variables as dotenv that node --env-file reads back, with a working token", async () => {
    const io = captureIo(dir);
    const code = await main(["env", "web-1", "--namespace", "shop", "--identity-port", "18080"], io);
    expect(io.err()).toBe("");
    expect(code).toBe(0);
    const envFile = path.join(dir, "web-1.env");
    await writeFile(envFile, io.out());
    const env = await readBack(envFile);

    expect(env.LINKERD2_PROXY_IDENTITY_LOCAL_NAME).toBe(
      "web.shop.serviceaccount.identity.linkerd.cluster.local",
    );
    expect(env.LINKERD2_PROXY_IDENTITY_SVC_ADDR).toBe("127.0.0.1:18080");
    expect(env.LINKERD2_PROXY_IDENTITY_SVC_NAME).toBe(
      "linkerd-identity.linkerd.serviceaccount.identity.linkerd.cluster.local",
    );
    expect(env.LINKERD2_PROXY_DESTINATION_SVC_ADDR).toBe("127.0.0.1:8086");
    expect(env.LINKERD2_PROXY_DESTINATION_SVC_NAME).toBe(
      "linkerd-destination.linkerd.serviceaccount.identity.linkerd.cluster.local",
    );
    expect(env.LINKERD2_PROXY_POLICY_SVC_ADDR).toBe("127.0.0.1:8090");
    expect(env.LINKERD2_PROXY_POLICY_SVC_NAME).toBe(env.LINKERD2_PROXY_DESTINATION_SVC_NAME);
    expect(JSON.parse(env.LINKERD2_PROXY_POLICY_WORKLOAD as string)).toEqual({ ns: "shop", pod: "web-1" });
    expect(JSON.parse(env.LINKERD2_PROXY_DESTINATION_CONTEXT as string)).toMatchObject({
      ns: "shop",
      pod: "web-1",
    });
    expect(env.LINKERD2_PROXY_INBOUND_PORTS).toBe("8080,9090");
    expect(env.LINKERD2_PROXY_INBOUND_DEFAULT_POLICY).toBe("cluster-authenticated");
    expect(env.LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS).toContain("10.0.0.0/8");
    const anchors = env.LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS as string;
    expect(anchors).toBe(
      (await readFile(path.join(dir, ".inmesh-state", "trust-anchors.pem"), "utf8")).trim(),
    );
    expect(new X509Certificate(anchors).ca).toBe(true);

    const tokenFile = env.LINKERD2_PROXY_IDENTITY_TOKEN_FILE as string;
    expect(path.isAbsolute(tokenFile)).toBe(true);
    expect((await stat(tokenFile)).mode & 0o777).toBe(0o600);

    // The token is registered in the state folder, where a control plane on that folder looks it up.
    const tokens = createTokenStore({ stateDir: path.join(dir, ".inmesh-state") });
    expect(await tokens.lookup(await readFile(tokenFile))).toEqual({
      namespace: "shop",
      pod: "web-1",
      serviceAccount: "web",
    });
  });

  it("fails with one clear line for a pod that is not in the manifests", async () => {
    const io = captureIo(dir);
    expect(await main(["env", "nope", "--namespace", "shop"], io)).toBe(1);
    expect(io.err()).toBe("inmesh env: pod shop/nope is not in the manifests\n");
  });

  it("lists every problem of invalid manifests", async () => {
    const bad = path.join(dir, "bad-manifests");
    await mkdir(bad);
    await writeFile(
      path.join(bad, "pod.yaml"),
      "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  containers: 7\n",
    );
    const io = captureIo(dir);
    expect(await main(["env", "x", "--manifests", bad], io)).toBe(1);
    expect(io.err()).toContain("invalid manifests");
    expect(io.err()).toContain(path.join(bad, "pod.yaml"));
  });
});
