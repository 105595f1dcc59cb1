import {
  type Balancer,
  createBalancer,
  type Discovery,
  isFailureResponse,
  type RequestPolicy,
  selectBackend,
} from "@inmesh/destination";

// A balancer for the route's backend, kept up to date (undefined: send to the original target).
export async function balancerFor(discovery: Discovery, route: RequestPolicy) {
  const backend = route.backends && selectBackend(route.backends)?.backend;
  // For a policy backend: `backend.target.kind === "balancer"` names the endpoints to watch and the load.
  if (backend?.target.kind !== "balancer") return undefined;
  const endpoints = discovery.watchEndpoints(backend.target.path);
  const balancer = createBalancer({
    endpoints: await endpoints.ready({ timeoutMs: 3000 }),
    load: backend.target.load,
    failureAccrual: route.failureAccrual,
  });
  endpoints.onUpdate((set) => balancer.update(set));
  return balancer;
}

// One request through the balancer: `send` calls `onFirstByte` when the response starts.
export async function sendThrough(
  balancer: Balancer,
  send: (address: string, onFirstByte: () => void) => Promise<{ status: number }>,
) {
  const pick = balancer.pick(); // throws MESH_ERR_DESTINATION_NO_ENDPOINTS when nothing is ready
  try {
    // Load is tracked until the first response byte.
    const response = await send(pick.endpoint.address, () => pick.onFirstByte());
    pick.onComplete(isFailureResponse(response) ? "failure" : "success");
    return response;
  } catch (error) {
    pick.onComplete("failure");
    throw error;
  }
}
