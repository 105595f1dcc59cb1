import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { createContextToken } from "@inmesh/destination";
import { destination, outbound } from "@inmesh/proto";
import { afterEach, describe, expect, it } from "vitest";
import { type ControlPlaneDouble, startControlPlane } from "./control-plane-double.js";
import { addUpdate, seconds, weightedAddr } from "./helpers.js";
import { balancerFor, sendThrough } from "./readme-example-balancer.js";
import { discoverBooks } from "./readme-example-discovery.js";
import { describeRoute, routeGetBook } from "./readme-example-routing.js";

const BOOKS = "books.shop.svc.cluster.local:8080";
const BOOKS_V2 = "books-v2.shop.svc.cluster.local:8080";

// books.shop:8080 has one HTTPRoute: a 5 s timeout, one retry on 5xx, and every request to books-v2,
// whose endpoints are ejected after one failure.
function booksPolicy(): outbound.OutboundPolicy {
  return outbound.OutboundPolicy.fromPartial({
    protocol: {
      kind: {
        $case: "http1",
        value: {
          failureAccrual: {
            kind: {
              $case: "consecutiveFailures",
              value: {
                maxFailures: 1,
                backoff: { minBackoff: seconds(60), maxBackoff: seconds(60), jitterRatio: 0 },
              },
            },
            ejection: { minReadyEndpoints: 0 },
          },
          routes: [
            {
              metadata: { kind: { $case: "default", value: "default" } },
              rules: [
                {
                  backends: {
                    kind: {
                      $case: "firstAvailable",
                      value: {
                        backends: [
                          {
                            backend: {
                              metadata: { kind: { $case: "default", value: "books-v2" } },
                              kind: {
                                $case: "balancer",
                                value: {
                                  discovery: { kind: { $case: "dst", value: { path: BOOKS_V2 } } },
                                  load: {
                                    $case: "peakEwma",
                                    value: { defaultRtt: seconds(0.05), decay: seconds(5) },
                                  },
                                },
                              },
                              queue: { capacity: 10, failfastTimeout: seconds(1) },
                            },
                          },
                        ],
                      },
                    },
                  },
                  timeouts: { request: seconds(5) },
                  retry: { maxRetries: 1, conditions: { statusRanges: [{ start: 500, end: 599 }] } },
                },
              ],
            },
          ],
        },
      },
    },
  } as never);
}

describe("README examples", () => {
  const cleanups: (() => unknown)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  async function startApp(): Promise<string> {
    // A real books-v2 endpoint: 200 for /books/1, 503 for anything else.
    const server: Server = createServer((request, response) => {
      response.writeHead(request.url === "/books/1" ? 200 : 503).end();
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    cleanups.push(() => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    });
    return `127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  async function startPlane(appAddress: string): Promise<ControlPlaneDouble> {
    const plane = await startControlPlane({
      get(call) {
        const address = call.request.path === BOOKS_V2 ? appAddress : "10.0.0.1:8080";
        call.write(addUpdate([weightedAddr(address)]));
      },
      getProfile(call) {
        call.write(
          destination.DestinationProfile.fromPartial({ fullyQualifiedName: "books.shop.svc.cluster.local" }),
        );
      },
      watch(call) {
        call.write(booksPolicy());
      },
    });
    cleanups.push(() => plane.kill());
    return plane;
  }

  it("discover, route and balance books.shop:8080", async () => {
    const appAddress = await startApp();
    const plane = await startPlane(appAddress);

    const books = await discoverBooks(plane.address, plane.address);
    cleanups.push(() => books.close());
    expect(books.balancer.pick().endpoint.address).toBe("10.0.0.1:8080");
    await Promise.all([books.profile.ready({ timeoutMs: 3000 }), books.policy.ready({ timeoutMs: 3000 })]);
    expect(plane.getCalls[0]?.request.path).toBe(BOOKS);
    expect(plane.getCalls[0]?.request.contextToken).toBe(
      createContextToken({ ns: "shop", nodeName: process.env.NODE_NAME }),
    );

    const route = routeGetBook(books.profile.current(), books.policy.current(), () => undefined);
    if (route === undefined) throw new Error("GET /books/1 matched no route");
    const described = describeRoute(route);
    expect(described).toMatchObject({ timeouts: { requestMs: 5000 }, retry: "route", retriesOn503: true });
    expect(described.backends?.kind).toBe("first-available");

    const balancer = await balancerFor(books.discovery, route);
    if (balancer === undefined) throw new Error("the route has no balancer backend");
    const send = async (address: string, path: string, onFirstByte: () => void) => {
      const response = await fetch(`http://${address}${path}`);
      onFirstByte();
      await response.arrayBuffer();
      return { status: response.status };
    };
    const ok = await sendThrough(balancer, (address, onFirstByte) => send(address, "/books/1", onFirstByte));
    expect(ok.status).toBe(200);
    expect(balancer.readyCount()).toBe(1);

    // One 503 ejects the only endpoint (maxFailures 1): the route's failure accrual reached the balancer.
    const failed = await sendThrough(balancer, (address, onFirstByte) => send(address, "/nope", onFirstByte));
    expect(failed.status).toBe(503);
    expect(balancer.readyCount()).toBe(0);
    expect(() => balancer.pick()).toThrow(
      expect.objectContaining({ code: "MESH_ERR_DESTINATION_NO_ENDPOINTS" }),
    );
  });

  it("a send that throws completes the pick as a failure", async () => {
    const plane = await startPlane(await startApp());
    const books = await discoverBooks(plane.address, plane.address);
    cleanups.push(() => books.close());
    await books.policy.ready({ timeoutMs: 3000 });
    const route = routeGetBook(books.profile.current(), books.policy.current(), () => undefined);
    const balancer = route && (await balancerFor(books.discovery, route));
    if (balancer === undefined) throw new Error("the route has no balancer backend");
    await expect(
      sendThrough(balancer, async () => {
        throw new Error("connection refused");
      }),
    ).rejects.toThrow("connection refused");
    expect(balancer.loads()[0]?.pending).toBe(0);
    expect(balancer.readyCount()).toBe(0);
  });

  it("without a policy, the default route keeps the original target", async () => {
    const route = routeGetBook(undefined, undefined, () => undefined);
    expect(route && describeRoute(route)).toMatchObject({ retry: "none", backends: undefined });
  });
});
