import { expect, it } from "vitest";
import {
  clientCredentials,
  identityOf,
  meshTlsSocket,
  podIdentity,
  podYaml,
  rawHttp1,
  startTestControlPlane,
  watchPodPolicy,
} from "../../http/test/inbound/support.js";
import { orders } from "./readme-example.js";

it("the README example serves Fastify through the mesh server", async () => {
  const cp = await startTestControlPlane([
    { path: "pods.yaml", text: podYaml({ name: "orders", sa: "orders", ip: "10.1.0.1" }) },
  ]);
  const identity = await podIdentity(cp, "orders", "orders");
  const watch = watchPodPolicy(cp, "orders");
  const policy = watch.watcher;
  const app = await orders(identity, policy);
  try {
    const port = (app.server.address() as { port: number }).port;
    const response = await rawHttp1(
      meshTlsSocket({ port }, identityOf("orders"), cp.trustAnchorsPem, await clientCredentials(cp, "web")),
      "GET /orders HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n",
    );
    expect(JSON.parse(response.body)).toEqual({
      caller: { kind: "mesh", name: identityOf("web"), tls: "established" },
      route: "default",
    });
  } finally {
    await app.close();
    await watch.close();
    await identity.close();
    await cp.close();
  }
});
