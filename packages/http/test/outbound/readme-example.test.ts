import { expect, it } from "vitest";
import { callBooks } from "./readme-example.js";
import {
  CLIENT_POD,
  manifests,
  podIdentity,
  podYaml,
  serviceYaml,
  startMeshedBackend,
  startTestControlPlane,
} from "./support.js";

it("the README outbound example reaches a meshed service", async () => {
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
  try {
    backend.handler = (request, response) => {
      response.statusCode = request.method === "POST" ? 201 : 200;
      response.end("[]");
    };
    cp.setManifests(files(backend.port));
    const result = await callBooks(identity, cp.addresses.destination, cp.addresses.policy);
    expect(result).toEqual({ statusCode: 200, list: "[]", created: 201 });
  } finally {
    await backend.close();
    await identity.close();
    await serverIdentity.close();
    await cp.close();
  }
});
