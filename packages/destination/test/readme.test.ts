import { credentials } from "@grpc/grpc-js";
import { destination, outbound } from "@inmesh/proto";
import { afterEach, describe, expect, it } from "vitest";
import {
  chooseRoutingModel,
  createBalancer,
  createContextToken,
  createDiscovery,
  isFailureResponse,
  selectRoute,
} from "../src/index.js";
import { startControlPlane } from "./control-plane-double.js";
import { addUpdate, seconds, weightedAddr } from "./helpers.js";

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

// The README's usage example, run against a control-plane double.
describe("README example", () => {
  it("discovers, routes and balances", async () => {
    const plane = await startControlPlane({
      get(call) {
        call.write(addUpdate([weightedAddr("10.0.0.1:8080"), weightedAddr("10.0.0.2:8080")]));
      },
      getProfile(call) {
        call.write(
          destination.DestinationProfile.fromPartial({ fullyQualifiedName: "books.shop.svc.cluster.local" }),
        );
      },
      watch(call) {
        call.write(
          outbound.OutboundPolicy.fromPartial({
            protocol: {
              kind: {
                $case: "http1",
                value: {
                  routes: [
                    {
                      metadata: { kind: { $case: "default", value: "default" } },
                      rules: [
                        {
                          backends: { kind: { $case: "empty", value: {} } },
                          timeouts: { request: seconds(5) },
                          retry: { maxRetries: 1, conditions: { statusRanges: [{ start: 500, end: 599 }] } },
                        },
                      ],
                    },
                  ],
                },
              },
            },
          } as never),
        );
      },
    });
    cleanups.push(() => plane.kill());

    const destinationClient = new destination.DestinationClient(plane.address, credentials.createInsecure());
    const policyClient = new outbound.OutboundPoliciesClient(plane.address, credentials.createInsecure());
    cleanups.push(() => {
      destinationClient.close();
      policyClient.close();
    });
    const discovery = createDiscovery({
      destinationClient,
      policyClient,
      contextToken: createContextToken({ ns: "shop", nodeName: process.env.NODE_NAME }),
      sourceWorkload: JSON.stringify({ ns: "shop", pod: "web-0" }),
    });
    cleanups.push(() => discovery.close());

    const endpoints = discovery.watchEndpoints("books.shop.svc.cluster.local:8080");
    const profile = discovery.watchProfile("books.shop.svc.cluster.local:8080");
    const policy = discovery.watchOutboundPolicy("books.shop.svc.cluster.local:8080");

    const balancer = createBalancer({ endpoints: await endpoints.ready({ timeoutMs: 3000 }) });
    endpoints.onUpdate((set) => balancer.update(set));
    await Promise.all([profile.ready({ timeoutMs: 3000 }), policy.ready({ timeoutMs: 3000 })]);

    const model = chooseRoutingModel({ profile: profile.current(), policy: policy.current() });
    const getHeader = (_name: string) => undefined;
    const route = selectRoute(model, {
      method: "GET",
      host: "books.shop:8080",
      path: "/books/1",
      query: "",
      getHeader,
    });
    expect(route?.timeouts).toEqual({ requestMs: 5000 });
    expect(route?.retry.kind).toBe("route");
    expect(route?.retry.isRetryableResponse({ status: 503 })).toBe(true);

    const pick = balancer.pick();
    expect(["10.0.0.1:8080", "10.0.0.2:8080"]).toContain(pick.endpoint.address);
    pick.onFirstByte();
    pick.onComplete(isFailureResponse({ status: 200 }) ? "failure" : "success");
  });
});
