import { expect, it } from "vitest";
import { callEcho } from "./readme-example.js";
import {
  controlPlaneDiscovery,
  EchoClient,
  files,
  podIdentity,
  podYaml,
  serviceYaml,
  startGrpcBackend,
  startTestControlPlane,
} from "./support.js";

it("the README client example calls a meshed gRPC service", async () => {
  const manifests = (port: number) =>
    files(
      podYaml({ name: "web-0", sa: "web", app: "web", port: 1 }),
      podYaml({ name: "echo-0", sa: "echo", app: "echo", port }),
      serviceYaml("echo", "echo"),
    );
  const cp = await startTestControlPlane(manifests(1));
  const identity = await podIdentity(cp, "web-0", "web");
  const serverIdentity = await podIdentity(cp, "echo-0", "echo");
  const backend = await startGrpcBackend("echo-0", serverIdentity);
  const discovery = controlPlaneDiscovery(cp, "web-0");
  try {
    cp.setManifests(manifests(backend.port));
    expect(await callEcho(identity, discovery, EchoClient)).toBe("echo-0:hi");
  } finally {
    await discovery.close();
    await backend.close();
    await identity.close();
    await serverIdentity.close();
    await cp.close();
  }
});
