import { credentials } from "@grpc/grpc-js";
import { createPolicyWatcher } from "@inmesh/policy";
import { inbound } from "@inmesh/proto";
import { expect, it } from "vitest";
import { startOrders } from "./readme-example.js";
import {
  clientCredentials,
  identityOf,
  meshTlsSocket,
  NS,
  podIdentity,
  podYaml,
  rawHttp1,
  startTestControlPlane,
} from "./support.js";

it("the README example serves a meshed caller", async () => {
  const cp = await startTestControlPlane([
    { path: "pods.yaml", text: podYaml({ name: "orders", sa: "orders", ip: "10.1.0.1" }) },
  ]);
  const identity = await podIdentity(cp, "orders", "orders");
  const client = new inbound.InboundServerPoliciesClient(cp.addresses.policy, credentials.createInsecure());
  const policy = createPolicyWatcher({
    client,
    workload: JSON.stringify({ ns: NS, pod: "orders" }),
    ports: [8080],
  });
  try {
    const server = await startOrders(identity, policy);
    const port = server.address()?.port as number;
    const response = await rawHttp1(
      meshTlsSocket({ port }, identityOf("orders"), cp.trustAnchorsPem, await clientCredentials(cp, "web")),
      "GET / HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n",
    );
    expect(response.body).toBe(`hello ${identityOf("web")} from route default`);
    await server.close();
  } finally {
    await policy.close();
    client.close();
    await identity.close();
    await cp.close();
  }
});
