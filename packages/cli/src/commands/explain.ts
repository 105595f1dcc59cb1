import path from "node:path";
import { parseArgs } from "node:util";
import { buildClusterState, formatManifestProblem, readManifestFolder } from "@inmesh/control-plane";
import { NO_PEER, type PeerIdentity, parseIpAddress } from "@inmesh/core";
import { clientFacts, compileServerPolicy } from "@inmesh/policy";
import { type CliIo, type Command, UsageError } from "../io.js";
import { clusterFromFlags, clusterOptions, parsePortOption } from "./options.js";

const usage = `inmesh explain POD --port N [--namespace NS] [--manifests DIR]
    [--method M] [--path P] [--authority HOST] [--header 'name: value']...
    [--identity ID | --tls] [--address IP] [--connection] [cluster options as for control-plane]`;

const HEADER_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/**
 * `inmesh explain`: how the pod's inbound policy decides one request (or connection), from the manifests
 * alone: the decision, the server, the route, and every authorization tried with why it did not admit
 * the caller (network, authentication, identity).
 */
export const explainCommand: Command = {
  name: "explain",
  summary: "explain how a pod's inbound policy decides a request: decision, route, authorizations tried",
  usage,
  async run(argv: readonly string[], io: CliIo): Promise<number> {
    const { values, positionals } = parseArgs({
      args: [...argv],
      allowPositionals: true,
      strict: true,
      options: {
        namespace: { type: "string", short: "n" },
        manifests: { type: "string" },
        port: { type: "string", short: "p" },
        method: { type: "string", short: "X" },
        path: { type: "string" },
        authority: { type: "string" },
        header: { type: "string", short: "H", multiple: true },
        identity: { type: "string" },
        tls: { type: "boolean" },
        address: { type: "string" },
        connection: { type: "boolean" },
        ...clusterOptions,
      },
    });
    if (positionals.length !== 1)
      throw new UsageError(positionals.length === 0 ? "POD is required" : "give exactly one POD");
    const podName = positionals[0] as string;
    const port = parsePortOption("port", values.port);
    if (port === undefined || port === 0) throw new UsageError("--port is required (1-65535)");
    const namespace = values.namespace ?? "default";
    const address = values.address ?? "10.0.0.1";
    if (parseIpAddress(address) === undefined)
      throw new UsageError(`--address must be an IP address, got ${JSON.stringify(address)}`);
    if (values.identity !== undefined && values.tls === true)
      throw new UsageError(
        "give --identity (mesh TLS with that client identity) or --tls (without), not both",
      );
    const method = values.method ?? "GET";
    const target = values.path ?? "/";
    if (!target.startsWith("/"))
      throw new UsageError(`--path must start with "/", got ${JSON.stringify(target)}`);

    const headers: Record<string, string | string[]> = {};
    const rawHeaders: string[] = [];
    for (const line of values.header ?? []) {
      const colon = line.indexOf(":");
      const name = colon < 0 ? "" : line.slice(0, colon).trim();
      if (!HEADER_NAME.test(name))
        throw new UsageError(`--header must be 'name: value', got ${JSON.stringify(line)}`);
      const value = line.slice(colon + 1).trim();
      const lower = name.toLowerCase();
      const existing = headers[lower];
      headers[lower] = existing === undefined ? value : `${existing}, ${value}`;
      rawHeaders.push(name, value);
    }

    const files = await readManifestFolder(path.resolve(io.cwd, values.manifests ?? "manifests"));
    const state = buildClusterState(files, clusterFromFlags(values));
    for (const warning of state.warnings) io.stderr(`warning: ${formatManifestProblem(warning)}\n`);
    if (state.findPod(namespace, podName) === undefined)
      throw new Error(`pod ${namespace}/${podName} is not in the manifests`);
    const found = state.inboundServer(JSON.stringify({ ns: namespace, pod: podName }), port);
    if (!found.ok) throw new Error(`no inbound policy for ${namespace}/${podName}:${port}: ${found.message}`);
    const policy = compileServerPolicy(found.server, { port });

    const peer: PeerIdentity =
      values.identity !== undefined
        ? { kind: "mesh", name: values.identity, tls: "established" }
        : values.tls === true
          ? { kind: "tls-anonymous", tls: "established" }
          : NO_PEER;
    const client = clientFacts(address, peer);
    io.stdout(`pod:      ${namespace}/${podName} port ${port} (proxyProtocol ${policy.protocol})\n`);
    if (values.connection === true || !policy.perRequest) {
      io.stdout("request:  a connection (authorized once, against the server's authorizations)\n");
      const decision = policy.authorizeConnection(client);
      io.stdout(`${policy.explainConnection(decision, client).text}\n`);
      return 0;
    }
    // The proxy sets l5d-client-id from the verified identity before routing: a client cannot spoof it.
    delete headers["l5d-client-id"];
    if (client.identity !== undefined) {
      headers["l5d-client-id"] = client.identity;
      rawHeaders.push("l5d-client-id", client.identity);
    }
    const question = target.indexOf("?");
    const authority = values.authority ?? (typeof headers.host === "string" ? headers.host : undefined);
    const decision = policy.authorizeHttp({
      method,
      authority,
      path: question < 0 ? target : target.slice(0, question),
      query: question < 0 ? "" : target.slice(question + 1),
      headers,
      rawHeaders,
      client,
    });
    io.stdout(`request:  ${method} ${target}${authority === undefined ? "" : ` (authority ${authority})`}\n`);
    io.stdout(`${policy.explainHttp(decision, client).text}\n`);
    if (!decision.allowed)
      io.stdout(`answer:   ${decision.httpStatus} (gRPC status ${decision.grpcStatus})\n`);
    return 0;
  },
};
