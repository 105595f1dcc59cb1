import { Agent, type AgentOptions, type ClientRequestArgs } from "node:http";
import type { Duplex } from "node:stream";
import { ConfigError } from "@inmesh/core";
import type { MeshConnect } from "./connect.js";

/**
 * An `http.Agent` whose connections go through the mesh, for clients built on `node:http` (axios, got,
 * vendor SDKs): `new MeshHttpAgent(dispatcher.openConnection)`, or `mesh.httpAgent`.
 *
 * Each new connection is to an endpoint the balancer picks, over mTLS checked against the endpoint's
 * identity (with a transport header when the endpoint asks for one), speaking HTTP/1.1; addresses and
 * external names follow their outbound policy (an EgressNetwork's `Deny` fails the request with
 * `MESH_ERR_EGRESS_DENIED`). Connections are kept alive by default and reused per host, so balancing
 * is per connection, not per request, and routes' retries, timeouts and filters do not apply: use
 * `mesh.fetch` or `mesh.dispatcher` where they matter.
 */
export class MeshHttpAgent extends Agent {
  readonly #connect: MeshConnect;

  constructor(connect: MeshConnect, options: AgentOptions = {}) {
    if (typeof connect !== "function") {
      throw new ConfigError("MeshHttpAgent needs a connect function (a mesh dispatcher's openConnection)", {
        details: { variable: "connect" },
      });
    }
    super({ keepAlive: true, ...options });
    this.#connect = connect;
  }

  override createConnection(
    options: ClientRequestArgs,
    callback?: (error: Error | null, stream: Duplex) => void,
  ): Duplex | null | undefined {
    const host = (options.host ?? options.hostname ?? "localhost").replace(/^\[|\]$/g, "");
    const port = Number(options.port ?? options.defaultPort ?? 80);
    const target = host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
    const signal = options.signal ?? undefined;
    this.#connect(target, { session: "http1", ...(signal ? { signal } : {}) }).then(
      (socket) => callback?.(null, socket),
      (error: unknown) => callback?.(error as Error, undefined as unknown as Duplex),
    );
    return undefined;
  }
}
