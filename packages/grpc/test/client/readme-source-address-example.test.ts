import { credentials } from "@grpc/grpc-js";
import { expect, it } from "vitest";
import { createMeshClientOptions } from "../../src/index.js";
import { echoChannelFrom } from "./readme-source-address-example.js";
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

it("the README source-address example: calls leave from the given address, not 127.0.0.1", async () => {
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
  backend.handlers.unary = (call, callback) => callback(null, Buffer.from(call.getPeer()));
  try {
    cp.setManifests(manifests(backend.port));
    const peers: string[] = [];
    for (const address of ["127.0.0.7", "127.0.0.8"]) {
      const channel = echoChannelFrom(identity, discovery, address);
      const client = new EchoClient(
        channel.authority,
        credentials.createInsecure(),
        createMeshClientOptions(channel),
      );
      peers.push(
        await new Promise<string>((resolve, reject) =>
          client.unary(Buffer.from("?"), (error, value) => (error ? reject(error) : resolve(String(value)))),
        ),
      );
      client.close();
      channel.close();
    }
    expect(peers[0]).toMatch(/^(ipv4:)?127\.0\.0\.7:\d+$/);
    expect(peers[1]).toMatch(/^(ipv4:)?127\.0\.0\.8:\d+$/);
    expect(() => echoChannelFrom(identity, discovery, "not-an-ip")).toThrow(/localAddress/);
  } finally {
    await discovery.close();
    await backend.close();
    await identity.close();
    await serverIdentity.close();
    await cp.close();
  }
});
