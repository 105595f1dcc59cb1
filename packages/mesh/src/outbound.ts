import type { Socket } from "node:net";
import { type Cidr, ConfigError, type Env, parseCidrList, readEnv } from "@inmesh/core";
import type { MeshGrpcChannel, MeshGrpcChannelOptions } from "@inmesh/grpc";
import type { MeshConnectOptions, MeshDispatcher, MeshHttpAgent } from "@inmesh/http";
import type { MeshCore } from "./mesh.js";
import { loadOutbound, outboundModule } from "./outbound-module.js";

/** The outbound ways into the mesh besides `mesh.fetch` and `mesh.dispatcher`. */
export interface MeshOutbound {
  /**
   * An `http.Agent` for `node:http` clients (axios `httpAgent`, got `agent.http`, SDKs): each connection
   * goes to a balanced endpoint over mTLS checked against its identity; addresses and external names
   * follow their outbound policy. Balancing is per connection; routes' retries and timeouts do not
   * apply (use `mesh.fetch` for those). Created on first use.
   */
  readonly httpAgent: MeshHttpAgent;
  /**
   * Makes Node's global `fetch` (and undici's own `fetch`/`request` without a dispatcher) use
   * `mesh.dispatcher`. Opt-in, idempotent; returns the undo, also available as `uninstall()`, and undone
   * by `close()`.
   */
  install(): () => void;
  /** Restores the global dispatcher that `install()` replaced, if ours is still installed. */
  uninstall(): void;
  /**
   * A connection (a duplex `net.Socket`, TLS inside) to `host:port` through the mesh, for database and
   * queue clients that take a socket factory: mTLS to a balanced endpoint of a Service (through its
   * inbound port with a transport header carrying no session protocol when it asks for one), the outbound
   * policy for addresses and external names (`MESH_ERR_EGRESS_DENIED` when denied), loopback as is.
   */
  connect(target: string, options?: MeshConnectOptions): Promise<Socket>;
  /**
   * A grpc-js channel for a Service (`authors`, `authors.bookshop` or the full name, with `:port`):
   * give it as `channelOverride` (see `@inmesh/grpc` `createMeshClientOptions`). Loads `@inmesh/grpc`
   * on first call.
   */
  grpcChannel(
    target: string,
    options?: Omit<MeshGrpcChannelOptions, "target" | "identity" | "discovery">,
  ): Promise<MeshGrpcChannel>;
}

/** Addresses whose profile is looked up: `LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS`, else the cluster's. */
export function profileNetworks(env: Env, core: Pick<MeshCore, "config">): readonly Cidr[] {
  const variable = "LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS";
  const text = readEnv(env, variable);
  return text ? parseCidrList(variable, text) : core.config.clusterNetworks;
}

/** The pod's namespace and cluster domain, for short names (the resolv.conf search path). */
export function searchContext(
  env: Env,
  core: Pick<MeshCore, "config">,
): { namespace: string | undefined; clusterDomain: string } {
  const suffixes = readEnv(env, "LINKERD2_PROXY_DESTINATION_PROFILE_SUFFIXES") ?? "";
  let clusterDomain = "cluster.local";
  for (const suffix of suffixes.split(",")) {
    const match = /^svc\.(.+?)\.?$/.exec(suffix.trim().toLowerCase());
    if (match) {
      clusterDomain = match[1] as string;
      break;
    }
  }
  const namespace =
    namespaceOf(core.config.policy?.workload, /^([a-z0-9-]+):/) ??
    namespaceOf(core.config.destination?.contextToken, /^ns:([a-z0-9-]+)$/);
  return { namespace, clusterDomain };
}

/** `ns` of a JSON workload or context token, or the namespace in their legacy text form. */
function namespaceOf(text: string | undefined, legacy: RegExp): string | undefined {
  const trimmed = text?.trim();
  if (!trimmed) return undefined;
  if (trimmed.startsWith("{")) {
    try {
      const ns = (JSON.parse(trimmed) as { ns?: unknown }).ns;
      return typeof ns === "string" && /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(ns) ? ns : undefined;
    } catch {
      return undefined;
    }
  }
  const ns = legacy.exec(trimmed)?.[1];
  return ns !== undefined && /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(ns) ? ns : undefined;
}

/**
 * Adds the `MeshOutbound` members to `mesh`. The dispatcher, the agent and the gRPC stack are created on
 * first use: a service that never calls them never loads them.
 */
export function attachOutbound<T extends object>(
  mesh: T,
  core: MeshCore,
  dispatcher: () => MeshDispatcher,
  names: { namespace: string | undefined; clusterDomain: string },
): T & MeshOutbound {
  let agent: MeshHttpAgent | undefined;
  let undo: (() => void) | undefined;
  const channels = new Set<MeshGrpcChannel>();

  const uninstall = (): void => {
    undo?.();
    undo = undefined;
  };
  // Idempotent: a second install keeps the first undo, so uninstall restores what was there before.
  const install = (): (() => void) => {
    undo ??= outboundModule().installGlobalDispatcher(dispatcher());
    return uninstall;
  };

  const grpcChannel: MeshOutbound["grpcChannel"] = async (target, options = {}) => {
    const discovery = core.discovery;
    if (!discovery) {
      throw new ConfigError(
        "mesh.grpcChannel needs a destination controller (LINKERD2_PROXY_DESTINATION_SVC_ADDR)",
        {
          details: { variable: "LINKERD2_PROXY_DESTINATION_SVC_ADDR" },
        },
      );
    }
    const { classifyHost } = await loadOutbound();
    const separator = target.lastIndexOf(":");
    const port = separator > 0 ? Number(target.slice(separator + 1)) : Number.NaN;
    const name = Number.isInteger(port)
      ? classifyHost(target.slice(0, separator), port, {
          clusterSuffix: `.svc.${names.clusterDomain}`,
          clusterDomain: names.clusterDomain,
          searchNamespace: names.namespace,
        })
      : undefined;
    if (name?.kind !== "service") {
      throw new ConfigError(
        `mesh.grpcChannel needs a Service name with a port (authors:50051, authors.bookshop:50051 or the full name), got ${JSON.stringify(target)}`,
        { details: { variable: "target" } },
      );
    }
    const { createMeshGrpcChannel } = await import("@inmesh/grpc");
    const channel = createMeshGrpcChannel({
      ...(core.config.outboundLocalAddress ? { localAddress: core.config.outboundLocalAddress } : {}),
      ...options,
      target: name.authority,
      identity: core.identity,
      discovery,
    });
    channels.add(channel);
    return channel;
  };

  core.onClose(() => {
    uninstall();
    agent?.destroy();
    for (const channel of channels) channel.close();
  });

  return Object.defineProperties(mesh, {
    httpAgent: {
      enumerable: true,
      get: () => {
        agent ??= new (outboundModule().MeshHttpAgent)(dispatcher().openConnection);
        return agent;
      },
    },
    install: { enumerable: true, value: install },
    uninstall: { enumerable: true, value: uninstall },
    connect: {
      enumerable: true,
      value: async (target: string, options?: MeshConnectOptions) => {
        await loadOutbound();
        return dispatcher().openConnection(target, options);
      },
    },
    grpcChannel: { enumerable: true, value: grpcChannel },
  }) as T & MeshOutbound;
}
