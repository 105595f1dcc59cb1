import type { AddressInfo } from "node:net";
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
import { ordersOnOwnServer } from "./readme-example.js";

it("the README example authorizes on the app's own TLS server", async () => {
  const cp = await startTestControlPlane([
    { path: "pods.yaml", text: podYaml({ name: "orders", sa: "orders", ip: "10.1.0.1" }) },
  ]);
  const identity = await podIdentity(cp, "orders", "orders");
  const watch = watchPodPolicy(cp, "orders");
  const policy = watch.watcher;
  const server = ordersOnOwnServer(identity, policy);
  try {
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as AddressInfo).port;
    const response = await rawHttp1(
      meshTlsSocket({ port }, identityOf("orders"), cp.trustAnchorsPem, await clientCredentials(cp, "web")),
      "GET /orders HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n",
    );
    expect(JSON.parse(response.body)).toEqual({
      caller: { kind: "mesh", name: identityOf("web"), tls: "established" },
      route: "default",
    });
  } finally {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    await watch.close();
    await identity.close();
    await cp.close();
  }
});
