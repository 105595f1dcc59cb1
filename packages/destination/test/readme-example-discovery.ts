import { credentials } from "@grpc/grpc-js";
import { createBalancer, createContextToken, createDiscovery } from "@inmesh/destination";
import { destination, outbound } from "@inmesh/proto";

// Discovery for books.shop:8080 as pod shop/web-0, from a control plane on loopback (plaintext).
export async function discoverBooks(destinationAddress = "127.0.0.1:8086", policyAddress = "127.0.0.1:8090") {
  // You build the clients, so you own their (m)TLS credentials.
  const destinationClient = new destination.DestinationClient(
    destinationAddress,
    credentials.createInsecure(),
  );
  const policyClient = new outbound.OutboundPoliciesClient(policyAddress, credentials.createInsecure());
  const discovery = createDiscovery({
    destinationClient,
    policyClient,
    contextToken: createContextToken({ ns: "shop", nodeName: process.env.NODE_NAME }),
    sourceWorkload: JSON.stringify({ ns: "shop", pod: "web-0" }),
  });

  const endpoints = discovery.watchEndpoints("books.shop.svc.cluster.local:8080");
  const profile = discovery.watchProfile("books.shop.svc.cluster.local:8080");
  const policy = discovery.watchOutboundPolicy("books.shop.svc.cluster.local:8080");

  const balancer = createBalancer({ endpoints: await endpoints.ready({ timeoutMs: 3000 }) });
  endpoints.onUpdate((set) => balancer.update(set));

  return {
    discovery,
    profile,
    policy,
    balancer,
    async close() {
      await discovery.close(); // or close each watch; `await using` works too
      destinationClient.close();
      policyClient.close();
    },
  };
}
