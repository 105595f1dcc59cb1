import { credentials } from "@grpc/grpc-js";
import { createContextToken, createDiscovery } from "@inmesh/destination";
import { createMeshDispatcher, createMeshFetch } from "@inmesh/http";
import type { IdentityProvider } from "@inmesh/identity";
import { destination, outbound } from "@inmesh/proto";
import { request } from "undici";

/** `identity`: createIdentityProvider(); the addresses are the control plane's (LINKERD2_PROXY_*_SVC_ADDR). */
export async function callBooks(identity: IdentityProvider, destinationAddr: string, policyAddr: string) {
  const discovery = createDiscovery({
    destinationClient: new destination.DestinationClient(destinationAddr, credentials.createInsecure()),
    policyClient: new outbound.OutboundPoliciesClient(policyAddr, credentials.createInsecure()),
    contextToken: createContextToken({ ns: "default", pod: "web-0" }),
    sourceWorkload: JSON.stringify({ ns: "default", pod: "web-0" }),
  });
  const dispatcher = createMeshDispatcher({ identity, discovery });
  try {
    // undici: discovery, mTLS to each endpoint's identity, P2C balancing, route retries and timeouts.
    const { statusCode, body } = await request("http://books.default.svc.cluster.local/books", {
      dispatcher,
    });
    const list = await body.text();
    // fetch bound to the same dispatcher (Node's global fetch also takes it as `dispatcher`).
    const meshFetch = createMeshFetch(dispatcher);
    const created = await meshFetch("http://books.default.svc.cluster.local/books", {
      method: "POST",
      body: "{}",
    });
    return { statusCode, list, created: created.status };
  } finally {
    await dispatcher.close();
    await discovery.close();
  }
}
