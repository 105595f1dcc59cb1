import { credentials } from "@grpc/grpc-js";
import { createContextToken, createDiscovery } from "@inmesh/destination";
import { destination, outbound } from "@inmesh/proto";
import { getGlobalDispatcher } from "undici";
import { expect, it } from "vitest";
import { createMeshDispatcher } from "../../src/index.js";
import { callWithOtherClients } from "./readme-clients-example.js";
import {
  CLIENT_POD,
  manifests,
  podIdentity,
  podYaml,
  serviceYaml,
  startMeshedBackend,
  startTestControlPlane,
} from "./support.js";

it("the README's other clients (node:http agent, global fetch) reach a meshed service with our identity", async () => {
  const files = (port: number) =>
    manifests(
      podYaml({ ...CLIENT_POD, name: "web-0" }),
      podYaml({ name: "books-0", sa: "books", app: "books", port }),
      serviceYaml("books", "books"),
    );
  const cp = await startTestControlPlane(files(1));
  const identity = await podIdentity(cp, "web-0", CLIENT_POD.sa);
  const serverIdentity = await podIdentity(cp, "books-0", "books");
  const backend = await startMeshedBackend("books-0", serverIdentity);
  const discovery = createDiscovery({
    destinationClient: new destination.DestinationClient(
      cp.addresses.destination,
      credentials.createInsecure(),
    ),
    policyClient: new outbound.OutboundPoliciesClient(cp.addresses.policy, credentials.createInsecure()),
    contextToken: createContextToken({ ns: "default", pod: "web-0" }),
    sourceWorkload: JSON.stringify({ ns: "default", pod: "web-0" }),
  });
  const dispatcher = createMeshDispatcher({ identity, discovery, searchNamespace: "default" });
  const before = getGlobalDispatcher();
  try {
    backend.handler = (request, response) => {
      response.end(String(request.headers["l5d-client-id"] ?? "anonymous"));
    };
    cp.setManifests(files(backend.port));
    const result = await callWithOtherClients(dispatcher, "http://books/");
    const caller = identity.state().localName;
    expect(result).toEqual({ viaAgent: caller, viaGlobalFetch: caller });
    expect(getGlobalDispatcher()).toBe(before);
  } finally {
    await dispatcher.close();
    await discovery.close();
    await backend.close();
    await identity.close();
    await serverIdentity.close();
    await cp.close();
  }
});
