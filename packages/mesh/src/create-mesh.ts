import type { Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { type AdminServer, createMeshMetrics, type MeshMetrics, startAdminServer } from "@inmesh/admin";
import { ConfigError, DestinationError, MeshError, MeshErrorCode } from "@inmesh/core";
import type { MeshDispatcher, MeshDispatcherOptions, MeshFetch } from "@inmesh/http";
import {
  createMeshServer,
  createTransportHeaderListener,
  type MeshServer,
  type MeshServerOptions,
  type TransportHeaderListener,
} from "@inmesh/http/inbound";
import type { OtelBridge } from "@inmesh/otel";
import { createMeshCore, type MeshCore, type MeshOptions } from "./mesh.js";
import { attachOutbound, type MeshOutbound, profileNetworks, searchContext } from "./outbound.js";
import { loadOutbound, outboundLoadsUpFront, outboundModule } from "./outbound-module.js";

/** Everything `createMeshServer` takes except what the mesh supplies (identity and policy). */
export type MeshServeOptions = Omit<MeshServerOptions, "identity" | "policy" | "handler">;

export interface CreateMeshOptions extends MeshOptions {
  /**
   * Serve `/metrics`, `/ready` and `/live` on `LINKERD2_PROXY_ADMIN_LISTEN_ADDR` (as given: `0.0.0.0:4191`
   * in a pod); other paths are refused from off the pod. `false` serves nothing; metrics are still
   * recorded for `mesh.metrics`.
   * @default true
   */
  admin?: boolean;
  /**
   * Serve Linkerd's inbound transport-header port (`LINKERD2_PROXY_INBOUND_LISTEN_ADDR`, 4143 in a pod):
   * one listener shared by every served port, where meshed clients (sidecars and inmesh alike, in
   * Linkerd's default transport mode) connect with ALPN `transport.l5d.io/v1` and a transport header
   * naming the target port. Started by `ready()` or the first served port's `listen()`, closed by
   * `close()`. `false` never binds it (then meshed clients told to use it cannot reach this process).
   * @default true (when the address is configured)
   */
  transportHeader?: boolean;
  /** Record Linkerd-compatible metrics from the mesh diagnostics channels. @default true */
  metrics?: boolean;
  /**
   * Bridge calls to OpenTelemetry spans through `@opentelemetry/api` (nothing happens unless an SDK is
   * registered). @default true
   */
  tracing?: boolean;
  /** Options for the outbound dispatcher behind `mesh.dispatcher` and `mesh.fetch`. */
  outbound?: Omit<MeshDispatcherOptions, "identity" | "discovery">;
}

export interface Mesh extends MeshCore, MeshOutbound {
  /**
   * Serves `handler` (a `(req, res)` listener, an Express app…) on `port` with mesh TLS, plaintext, the
   * port's Linkerd policy, and `l5d-client-id`. Call `listen()` on the result. The port must be one of
   * the inbound ports (LINKERD2_PROXY_INBOUND_PORTS or `inboundPorts`) so its policy is watched.
   */
  createServer(handler: MeshServerOptions["handler"], options: MeshServeOptions): MeshServer;
  /**
   * A Fastify `serverFactory`: `Fastify({ serverFactory: mesh.serverFactory({ port }) })`.
   */
  serverFactory(
    options: MeshServeOptions,
  ): (handler: NonNullable<MeshServerOptions["handler"]>) => HttpServer;
  /**
   * An undici Dispatcher: discovery, mTLS to each endpoint's identity, balancing, timeouts, retries.
   * Created (and undici loaded) on first use, so an inbound-only service never pays for it.
   */
  readonly dispatcher: MeshDispatcher;
  /** `fetch` bound to `dispatcher` (which its first call creates). */
  readonly fetch: MeshFetch;
  readonly metrics: MeshMetrics | undefined;
  /** The admin server once started (after `start()` or `ready()`). */
  admin(): AdminServer | undefined;
  /** The shared transport-header listener, unless turned off or not configured. */
  readonly transportHeader: TransportHeaderListener | undefined;
}

/**
 * Makes this process a member of a Linkerd mesh, configured like a sidecar from `LINKERD2_PROXY_*`
 * (options override). Identity, policy and discovery start at once; `await mesh.ready()` before
 * serving traffic, and `await mesh.close()` to drain and stop.
 *
 * @example
 * const mesh = createMesh();
 * await mesh.ready();
 * await mesh.createServer(app, { port: 8080 }).listen();
 * const response = await mesh.fetch("http://books.bookshop.svc.cluster.local/books");
 */
export function createMesh(options: CreateMeshOptions = {}): Mesh {
  const core = createMeshCore(options);
  const metrics = options.metrics === false ? undefined : createMeshMetrics();
  metrics?.subscribe();
  // OpenTelemetry is loaded after start-up work began, not at import: most services never register an
  // SDK, and loading the API and the bridge was ~10% of the time to import the mesh (S11). `ready()`
  // waits for it, so calls served after ready are traced.
  let otel: OtelBridge | undefined;
  let closed = false;
  const otelLoading =
    options.tracing === false
      ? Promise.resolve()
      : import("@inmesh/otel").then(({ createOtelBridge, isOtelApiInstalled }) => {
          // Without @opentelemetry/api (an optional peer) there is nothing to record into: no bridge.
          if (closed || !isOtelApiInstalled()) return;
          otel = createOtelBridge();
          otel.register();
        });
  // A failed load surfaces from ready(); it must not also be an unhandled rejection.
  otelLoading.catch(() => {});

  const names = searchContext(options.env ?? process.env, core);
  // Checked now, so a bad LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS fails createMesh(), not a first call.
  const outboundNetworks = profileNetworks(options.env ?? process.env, core);
  // The outbound stack is created on first use: an inbound-only service loads no undici, opens no
  // dispatcher and starts no discovery watch.
  const outboundLoading = outboundLoadsUpFront ? loadOutbound() : undefined;
  outboundLoading?.catch(() => {});
  let dispatcher: MeshDispatcher | undefined;
  let fetchNow: MeshFetch | undefined;
  const outboundDispatcher = (): MeshDispatcher => {
    if (dispatcher) return dispatcher;
    if (closed) throw new MeshError(MeshErrorCode.CLOSED, "the mesh was closed");
    dispatcher = outboundModule().createMeshDispatcher({
      ...(core.config.outboundLocalAddress ? { localAddress: core.config.outboundLocalAddress } : {}),
      clusterDomain: names.clusterDomain,
      profileNetworks: outboundNetworks,
      ...(names.namespace ? { searchNamespace: names.namespace } : {}),
      ...options.outbound,
      identity: core.identity,
      discovery: core.discovery ?? noDiscovery(),
    });
    return dispatcher;
  };
  const fetch: MeshFetch = async (input, init) => {
    if (outboundLoading) await outboundLoading;
    fetchNow ??= outboundModule().createMeshFetch(outboundDispatcher());
    return fetchNow(input, init);
  };

  let admin: AdminServer | undefined;
  let adminStarting: Promise<AdminServer | undefined> | undefined;
  const startAdmin = (): Promise<AdminServer | undefined> => {
    if (options.admin === false) return Promise.resolve(undefined);
    adminStarting ??= startAdminServer({
      host: core.config.admin.host,
      port: core.config.admin.port,
      // The config refused a non-loopback address the operator did not allow.
      allowNonLoopback: true,
      localAddresses: core.config.podAddresses,
      ...(metrics ? { metrics } : {}),
      readiness: () => {
        const state = core.state();
        return { ready: core.isReady(), reasons: [...state.reasons] };
      },
    }).then((server) => {
      admin = server;
      return server;
    });
    return adminStarting;
  };

  const inboundListen = core.config.inboundListen;
  const transportHeader =
    options.transportHeader !== false && inboundListen !== undefined
      ? createTransportHeaderListener({ identity: core.identity })
      : undefined;
  let transportHeaderStarting: Promise<AddressInfo | undefined> | undefined;
  const startTransportHeader = (): Promise<AddressInfo | undefined> => {
    if (transportHeader === undefined || inboundListen === undefined) return Promise.resolve(undefined);
    transportHeaderStarting ??= transportHeader
      .listen(inboundListen.port, inboundListen.host)
      .catch((error: NodeJS.ErrnoException) => {
        throw new ConfigError(
          `cannot serve the transport-header port LINKERD2_PROXY_INBOUND_LISTEN_ADDR=${inboundListen.host}:${inboundListen.port}: ${error.message}`,
          { details: { variable: "LINKERD2_PROXY_INBOUND_LISTEN_ADDR", code: error.code }, cause: error },
        );
      });
    return transportHeaderStarting;
  };

  const servers = new Set<MeshServer>();
  const watchedPorts = new Set(core.config.inboundPorts);
  const assertPort = (port: number) => {
    if (core.config.policy && !watchedPorts.has(port)) {
      throw new ConfigError(
        `port ${port} is not an inbound port (LINKERD2_PROXY_INBOUND_PORTS or inboundPorts: ${[...watchedPorts].join(",") || "none"}), so its policy is never loaded`,
        { details: { variable: "LINKERD2_PROXY_INBOUND_PORTS", port } },
      );
    }
  };
  const createServer = (
    handler: MeshServerOptions["handler"],
    serveOptions: MeshServeOptions,
  ): MeshServer => {
    assertPort(serveOptions.port);
    if (transportHeader !== undefined && inboundListen?.port === serveOptions.port) {
      throw new ConfigError(
        `port ${serveOptions.port} is the transport-header port (LINKERD2_PROXY_INBOUND_LISTEN_ADDR); serve another port or set transportHeader: false`,
        { details: { variable: "LINKERD2_PROXY_INBOUND_LISTEN_ADDR", port: serveOptions.port } },
      );
    }
    // The pod's LINKERD2_PROXY_INBOUND_SERVER_HTTP2_KEEP_ALIVE_* unless the service sets its own.
    const keepAliveIntervalMs = serveOptions.http2KeepAliveIntervalMs ?? core.config.http2KeepAliveIntervalMs;
    const keepAliveTimeoutMs = serveOptions.http2KeepAliveTimeoutMs ?? core.config.http2KeepAliveTimeoutMs;
    const server = createMeshServer({
      ...serveOptions,
      ...(keepAliveIntervalMs === undefined ? {} : { http2KeepAliveIntervalMs: keepAliveIntervalMs }),
      ...(keepAliveTimeoutMs === undefined ? {} : { http2KeepAliveTimeoutMs: keepAliveTimeoutMs }),
      ...(handler ? { handler } : {}),
      identity: core.identity,
      policy: core.policy,
      initialPolicyWaitMs: serveOptions.initialPolicyWaitMs ?? core.policy.initialWaitMs,
      drainTimeoutMs: serveOptions.drainTimeoutMs ?? core.config.shutdownGraceMs,
    });
    servers.add(server);
    if (transportHeader !== undefined) {
      const unroute = transportHeader.route(serveOptions.port, server);
      // Fastify's serverFactory listens on `server.server` itself, so the shared port follows that
      // event; a failure to bind it is reported by `ready()`.
      server.server.once("listening", () => {
        startTransportHeader().catch(() => {});
      });
      server.server.once("close", unroute);
    }
    return server;
  };

  // Close order: stop accepting and drain inbound, drain outbound, then the control-plane side.
  core.onClose(async () => {
    await transportHeader?.close();
    await Promise.allSettled([...servers].map((server) => server.close()));
    closed = true;
    await dispatcher?.close();
    await admin?.close();
    metrics?.unsubscribe();
    otel?.unregister();
  });

  const ready: Mesh["ready"] = async (readyOptions) => {
    await otelLoading;
    await outboundLoading;
    await startAdmin();
    await startTransportHeader();
    await core.ready(readyOptions);
  };

  const mesh: Omit<Mesh, keyof MeshOutbound> = {
    ...core,
    // The core's discovery is created on first read, so it is not enumerable (not spread).
    get discovery() {
      return core.discovery;
    },
    ready,
    createServer,
    // Fastify types its serverFactory result as an http.Server; the mesh listener is a net.Server that
    // feeds one, and offers what Fastify calls on it (listen, close, address, closeIdleConnections).
    serverFactory: (serveOptions: MeshServeOptions) => (handler: NonNullable<MeshServerOptions["handler"]>) =>
      createServer(handler, serveOptions).server as unknown as HttpServer,
    get dispatcher() {
      return outboundDispatcher();
    },
    fetch,
    metrics,
    admin: () => admin,
    transportHeader,
    close: core.close,
    [Symbol.asyncDispose]: core.close,
  };
  return attachOutbound(mesh, core, outboundDispatcher, names);
}

/** Without a destination controller, calls to cluster names fail each with a typed error. */
function noDiscovery(): MeshDispatcherOptions["discovery"] {
  return {
    watchEndpoints(authority) {
      throw new DestinationError(
        MeshErrorCode.DESTINATION_UNREACHABLE,
        `cannot resolve ${authority}: no destination controller is configured (LINKERD2_PROXY_DESTINATION_SVC_ADDR)`,
      );
    },
  };
}
