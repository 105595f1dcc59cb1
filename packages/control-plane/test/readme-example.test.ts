import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import type { ControlPlane } from "@inmesh/control-plane";
import { destination, identity, tcpAddressToString } from "@inmesh/proto";
import { afterEach, describe, expect, it } from "vitest";
import { startDevControlPlane } from "./readme-example.js";
import { changeCluster, startTestControlPlane } from "./readme-example-tests.js";
import {
  linkerdCsr,
  plaintext,
  podYaml,
  readStream,
  serviceYaml,
  unary,
  WEB_1,
  WEB_2,
  WEB_AUTHORITY,
} from "./server/helpers.js";

const EPHEMERAL = { identity: 0, destination: 0, policy: 0 };

describe("the README examples run", () => {
  let controlPlane: ControlPlane | undefined;
  let root: string | undefined;
  afterEach(async () => {
    await controlPlane?.close();
    controlPlane = undefined;
    if (root !== undefined) await rm(root, { recursive: true, force: true });
    root = undefined;
  });

  it("usage: a manifests folder, persistent state and the variables of pod web-1", async () => {
    root = await mkdtemp(path.join(tmpdir(), "inmesh-readme-"));
    await mkdir(path.join(root, "manifests"));
    await writeFile(path.join(root, "manifests", "pods.yaml"), podYaml(WEB_1));

    const started = await startDevControlPlane(root, EPHEMERAL);
    controlPlane = started.controlPlane;
    const vars = started.variables;
    expect(vars.LINKERD2_PROXY_IDENTITY_SVC_ADDR).toBe(controlPlane.addresses.identity);
    const tokenFile = vars.LINKERD2_PROXY_IDENTITY_TOKEN_FILE as string;
    expect(tokenFile).toBe(path.join(root, ".inmesh-state", "workloads", "default", "web-1.token"));

    // The variables are enough to certify as web-1.
    const localName = vars.LINKERD2_PROXY_IDENTITY_LOCAL_NAME as string;
    const client = new identity.IdentityClient(controlPlane.addresses.identity, plaintext());
    try {
      const request = identity.CertifyRequest.fromPartial({
        identity: localName,
        token: await readFile(tokenFile),
        certificateSigningRequest: await linkerdCsr(localName),
      });
      const { response, error } = await unary<identity.CertifyResponse>((callback) =>
        client.certify(request, callback),
      );
      expect(error).toBeUndefined();
      expect(response?.leafCertificate.byteLength).toBeGreaterThan(0);
    } finally {
      client.close();
    }
  });

  it("in tests: in-memory manifests whose changes reach open watches", async () => {
    const web = serviceYaml("web", "web");
    controlPlane = await startTestControlPlane([podYaml(WEB_1), web].join("---\n"));
    const client = new destination.DestinationClient(controlPlane.addresses.destination, plaintext());
    const stream = readStream(client.get(destination.GetDestination.fromPartial({ path: WEB_AUTHORITY })));
    const added = async () => {
      const update = await stream.next();
      return update.update?.$case === "add"
        ? update.update.value.addrs.map((addr) => tcpAddressToString(addr.addr))
        : [];
    };
    try {
      expect(await added()).toEqual(["10.1.0.1:8080"]);
      expect(changeCluster(controlPlane, [podYaml(WEB_1), podYaml(WEB_2), web].join("---\n")).ok).toBe(true);
      expect(await added()).toEqual(["10.1.0.2:8080"]);
      expect(changeCluster(controlPlane, "kind: [").ok).toBe(false);
    } finally {
      stream.cancel();
      client.close();
    }
  });
});
