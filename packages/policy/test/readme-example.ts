import type { IncomingMessage, ServerResponse } from "node:http";
import type { PeerIdentity } from "@inmesh/core";
import {
  applyRouteFilters,
  type ClientFacts,
  clientFacts,
  createPolicyWatcher,
  isGrpcContentType,
  objectHeaderMutator,
} from "@inmesh/policy";
import type { inbound } from "@inmesh/proto";

/** Authorizes node:http requests on `port` with the policy the controller serves for it. */
export function createPolicyGuard(client: inbound.InboundServerPoliciesClient, port: number) {
  // The caller made `client`, so it owns the credentials (mTLS to the controller, plaintext on loopback).
  const policies = createPolicyWatcher({ client, workload: '{"ns":"books","pod":"books-0"}', ports: [port] });
  const perConnection = new WeakMap<object, ClientFacts>();

  async function allow(req: IncomingMessage, res: ServerResponse, peer: PeerIdentity): Promise<boolean> {
    let client = perConnection.get(req.socket); // parsed once per connection, not per request
    if (client === undefined) {
      client = clientFacts(req.socket.remoteAddress, peer);
      perConnection.set(req.socket, client);
    }
    const url = req.url ?? "/";
    const mark = url.indexOf("?");
    const path = mark < 0 ? url : url.slice(0, mark);
    const query = mark < 0 ? "" : url.slice(mark + 1);
    const policy = await policies.waitForPolicy(port); // holds up to 1 s for the first policy
    const decision = policy.authorizeHttp({
      method: req.method ?? "GET",
      authority: req.headers.host,
      path,
      query,
      headers: req.headersDistinct,
      client,
    });
    if (!decision.allowed) {
      if (isGrpcContentType(req.headers["content-type"])) {
        res.writeHead(200, { "content-type": "application/grpc", "grpc-status": decision.grpcStatus }).end();
      } else {
        res.writeHead(decision.httpStatus, { "content-length": 0 }).end();
      }
      return false;
    }
    const outcome = applyRouteFilters(
      decision.filters,
      { authority: req.headers.host, path, query },
      objectHeaderMutator(req.headers),
    );
    if (outcome.kind === "respond") {
      res.writeHead(outcome.httpStatus, outcome.location ? { location: outcome.location } : {}).end();
      return false;
    }
    return true; // decision.route, decision.authz and decision.server are the metric labels
  }

  return { allow, close: () => policies.close() };
}
