import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { prepareWorkloadEnv, startControlPlane } from "@inmesh/control-plane";
import { identity } from "@inmesh/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { linkerdCsr, plaintext, podYaml, unary, WEB_1 } from "./helpers.js";

describe("workload environment", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "inmesh-workload-"));
    await mkdir(path.join(dir, "manifests"));
    await writeFile(path.join(dir, "manifests", "web.yaml"), podYaml(WEB_1));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("prepared without a running control plane, lets the workload certify with the control plane started later", async () => {
    const stateDir = path.join(dir, "state");
    const prepared = await prepareWorkloadEnv({
      pod: "web-1",
      manifestsDir: path.join(dir, "manifests"),
      stateDir,
    });
    const vars = prepared.variables;
    await using cp = await startControlPlane({
      manifestsDir: path.join(dir, "manifests"),
      stateDir,
      ports: { identity: 0, destination: 0, policy: 0 },
      watch: false,
    });
    expect(cp.trustAnchorsPem.trim()).toBe(vars.LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS);
    const localName = vars.LINKERD2_PROXY_IDENTITY_LOCAL_NAME as string;
    const token = await readFile(vars.LINKERD2_PROXY_IDENTITY_TOKEN_FILE as string);
    const client = new identity.IdentityClient(cp.addresses.identity, plaintext());
    const request = identity.CertifyRequest.fromPartial({
      identity: localName,
      token,
      certificateSigningRequest: await linkerdCsr(localName),
    });
    const { response, error } = await unary<identity.CertifyResponse>((callback) =>
      client.certify(request, callback),
    );
    client.close();
    expect(error).toBeUndefined();
    expect(response?.leafCertificate.byteLength).toBeGreaterThan(0);
  });

  it("from a running control plane points at its actual addresses", async () => {
    await using cp = await startControlPlane({
      manifests: [{ path: "web.yaml", text: podYaml(WEB_1) }],
      ports: { identity: 0, destination: 0, policy: 0 },
    });
    const env = await cp.writeEnv("web-1", { tokenDir: path.join(dir, "tokens") });
    expect(env.variables.LINKERD2_PROXY_IDENTITY_SVC_ADDR).toBe(cp.addresses.identity);
    expect(env.variables.LINKERD2_PROXY_DESTINATION_SVC_ADDR).toBe(cp.addresses.destination);
    expect(env.variables.LINKERD2_PROXY_POLICY_SVC_ADDR).toBe(cp.addresses.policy);
    expect(env.tokenFile).toBe(path.join(dir, "tokens", "default", "web-1.token"));
    expect(await readFile(env.tokenFile, "utf8")).toBe(await cp.tokenFor("default", "web-1"));
    await expect(cp.writeEnv("nope", { tokenDir: path.join(dir, "tokens") })).rejects.toThrow(
      /not in the manifests/,
    );
    await expect(cp.writeEnv("web-1")).rejects.toThrow(/needs tokenDir/);
  });
});
