import {
  chooseRoutingModel,
  type OutboundPolicyState,
  type OutboundRequest,
  type ProfileState,
  type RequestPolicy,
  selectRoute,
} from "@inmesh/destination";

// The request policy of GET /books/1, from the current values of the profile and policy watches.
export function routeGetBook(
  profile: ProfileState | undefined,
  policy: OutboundPolicyState | undefined,
  getHeader: OutboundRequest["getHeader"],
): RequestPolicy | undefined {
  const model = chooseRoutingModel({ profile, policy });
  // undefined when policy routes exist but none matched: Linkerd answers 404.
  return selectRoute(model, {
    method: "GET",
    host: "books.shop:8080",
    path: "/books/1",
    query: "",
    getHeader,
  });
}

// What the HTTP and gRPC adapters apply.
export function describeRoute(route: RequestPolicy) {
  return {
    timeouts: route.timeouts, // { requestMs?, responseMs?, idleMs? }
    retry: route.retry.kind, // "none" | "budget" (ServiceProfile) | "route" (HTTPRoute/GRPCRoute)
    retriesOn503: route.retry.isRetryableResponse({ status: 503 }),
    backends: route.backends, // distribution of Backend targets (balancer path or forward endpoint)
  };
}
