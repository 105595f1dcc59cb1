import { EventEmitter } from "node:events";
import {
  type ControlPlaneAddress,
  type Env,
  MeshChannel,
  MeshError,
  MeshErrorCode,
  meshChannel,
} from "@inmesh/core";
import type { Discovery } from "@inmesh/destination";
import type { MeshPolicySource } from "@inmesh/http";
import {
  createIdentityProvider,
  type IdentityProvider,
  type IdentityProviderOptions,
  resolveIdentityConfig,
} from "@inmesh/identity";
import {
  type CompiledServerPolicy,
  createPolicyWatcher,
  defaultServerPolicy,
  type PolicyWatchEvent,
  type PolicyWatcher,
  type WaitForPolicyOptions,
} from "@inmesh/policy";
import { type MeshConfig, type MeshConfigOptions, resolveMeshConfig } from "./config.js";
import {
  type ControlPlaneClients,
  type ControlPlaneCredentialsFactory,
  defaultControlPlaneCredentials,
  openControlPlaneClients,
} from "./control-plane.js";
import { destinationModule, lazyModulesLoadUpFront } from "./outbound-module.js";
import { defaultWarningHandler, type MeshWarningHandler, ReadinessReporter } from "./readiness.js";

export interface MeshOptions extends MeshConfigOptions {
  /** Where `LINKERD2_PROXY_*` come from. @default process.env */
  env?: Env;
  /** Options for the identity provider (trust anchors, token, refresh bounds…), over the environment. */
  identity?: Omit<IdentityProviderOptions, "env">;
  /** Bring your own provider instead (for example shared by several meshes in one test). */
  identityProvider?: IdentityProvider;
  /**
   * How long a request that arrives before its port's first policy is held before it is denied.
   * @default 1000
   */
  policyInitialWaitMs?: number;
  /** Linkerd's behaviour: serve the default policy until the controller answers. @default false */
  serveDefaultPolicyUntilLoaded?: boolean;
  /** Credentials for the policy and destination channels. @default plaintext on loopback, else mTLS */
  controlPlaneCredentials?: ControlPlaneCredentialsFactory;
  /**
   * Where `ready()` reports a control-plane dependency that fails while it waits (once per dependency,
   * with its address and error). `false` silences it. @default process.emitWarning (stderr)
   */
  onWarning?: MeshWarningHandler;
}

export interface MeshReadyOptions {
  signal?: AbortSignal;
  /** Give up after this long, rejecting with what is missing and where. @default wait until closed */
  timeoutMs?: number;
}

/**
 * The inbound policy source the mesh hands to servers: usable at once, before the controller answers
 * (requests then wait up to `initialWaitMs` for their port's first policy).
 */
export interface MeshInboundPolicy extends MeshPolicySource {
  waitForPolicy(port: number, options?: WaitForPolicyOptions): Promise<CompiledServerPolicy>;
  subscribe(listener: (event: PolicyWatchEvent) => void): () => void;
  readonly initialWaitMs: number;
}

export type MeshStatus = "starting" | "ready" | "degraded" | "closing" | "closed";

export interface MeshState {
  readonly status: MeshStatus;
  readonly identity: ReturnType<IdentityProvider["state"]>;
  readonly policy: ReturnType<PolicyWatcher["state"]>;
  /** Why the mesh is not ready, empty when it is. */
  readonly reasons: readonly string[];
}

export interface MeshEvents {
  status: MeshStatus;
  error: MeshError;
}

export interface MeshCore extends AsyncDisposable {
  readonly config: MeshConfig;
  readonly identity: IdentityProvider;
  /** Inbound policy for the served ports, usable at once (requests wait for the first policy). */
  readonly policy: MeshInboundPolicy;
  /** Discovery over the destination and policy controllers; undefined when none is configured. */
  readonly discovery: Discovery | undefined;
  /**
   * Resolves when identity is issued and policy for every served port is loaded, as Linkerd makes the
   * proxy ready before the application starts. Keeps the process alive while it waits, and warns about
   * each control-plane dependency that fails meanwhile. Rejects on abort, timeout or close; an abort or
   * timeout rejects with a MeshError naming each missing dependency, its address and its last error
   * (`MESH_ERR_CP_UNAVAILABLE` when one failed).
   */
  ready(options?: MeshReadyOptions): Promise<void>;
  isReady(): boolean;
  state(): MeshState;
  on<TEvent extends keyof MeshEvents>(
    event: TEvent,
    listener: (value: MeshEvents[TEvent]) => void,
  ): () => void;
  /** Registers work that `close()` must finish first (servers draining, dispatchers closing). */
  onClose(task: () => Promise<void> | void): void;
  /** Drains in-flight work, then stops watches, closes channels and stops identity refresh. Idempotent. */
  close(): Promise<void>;
}

/**
 * Owns identity, policy and discovery for one service. The inbound and outbound adapters are layered on
 * top by `createMesh`.
 */
export function createMeshCore(options: MeshOptions = {}): MeshCore {
  const env = options.env ?? process.env;
  const config = resolveMeshConfig(env, options);
  const identity = options.identityProvider ?? createIdentityProvider({ ...options.identity, env });
  const ownsIdentity = options.identityProvider === undefined;
  const initialWaitMs = options.policyInitialWaitMs ?? 1000;
  const credentialsFor = options.controlPlaneCredentials ?? defaultControlPlaneCredentials;
  const events = new EventEmitter();
  const closeTasks: (() => Promise<void> | void)[] = [];
  const lifetime = new AbortController();

  let status: MeshStatus = "starting";
  let closing: Promise<void> | undefined;

  // The credentials wait for the first certificate and follow rotations, so every control-plane
  // client, watch and stream can start now; they connect once identity is issued.
  const clients: ControlPlaneClients = openControlPlaneClients(
    { policy: config.policy?.address, destination: config.destination?.address },
    identity,
    credentialsFor,
  );
  // Discovery (and @inmesh/destination with it) is created on first use: the outbound side asks for it,
  // an inbound-only service never does.
  const discoveryConfigured = clients.discoveryConfigured;
  const discoveryLoading =
    discoveryConfigured && lazyModulesLoadUpFront ? destinationModule.load() : undefined;
  discoveryLoading?.catch(() => {});
  let discovery: Discovery | undefined;
  const discoveryNow = (): Discovery | undefined => {
    if (discovery !== undefined || !discoveryConfigured || closing !== undefined) return discovery;
    const destinationClient = clients.destination;
    const policyClient = clients.outboundPolicy;
    discovery = destinationModule.now().createDiscovery({
      ...(destinationClient ? { destinationClient } : {}),
      ...(policyClient ? { policyClient } : {}),
      contextToken: config.destination?.contextToken ?? "",
      ...(config.policy ? { sourceWorkload: config.policy.workload } : {}),
    });
    return discovery;
  };
  const watcher: PolicyWatcher | undefined =
    clients.policy && config.policy && config.inboundPorts.length > 0
      ? createPolicyWatcher({
          client: clients.policy,
          workload: config.policy.workload,
          ports: config.inboundPorts,
          defaultPolicy: config.defaultPolicy,
          clusterNetworks: config.clusterNetworksText.split(","),
          opaquePorts: [...config.opaquePorts],
          initialWaitMs,
          serveDefaultUntilLoaded: options.serveDefaultPolicyUntilLoaded ?? false,
        })
      : undefined;

  // Ports nobody watches (no policy controller, or a port outside LINKERD2_PROXY_INBOUND_PORTS) are
  // served like the proxy serves them: under the configured default policy.
  const unwatchedPolicy = (port: number): CompiledServerPolicy =>
    defaultServerPolicy(config.defaultPolicy, {
      clusterNetworks: config.clusterNetworks,
      opaque: config.opaquePorts.has(port),
      port,
    });
  const watched = new Set(watcher?.ports ?? []);

  const policy: MeshInboundPolicy = {
    initialWaitMs,
    policyFor(port) {
      return watcher && watched.has(port) ? watcher.policyFor(port) : unwatchedPolicy(port);
    },
    async waitForPolicy(port, waitOptions = {}) {
      return watcher && watched.has(port) ? watcher.waitForPolicy(port, waitOptions) : unwatchedPolicy(port);
    },
    subscribe(listener) {
      return watcher ? watcher.subscribe(listener) : () => {};
    },
  };

  const statusChannel = meshChannel(MeshChannel.meshStatusChanged);
  const setStatus = (next: MeshStatus) => {
    if (status === next) return;
    status = next;
    events.emit("status", next);
    if (statusChannel.hasSubscribers) statusChannel.publish({ status: next, reasons: reasons() });
  };

  const identityListeners = [
    identity.on("expired", () => {
      setStatus("degraded");
      events.emit(
        "error",
        new MeshError(
          MeshErrorCode.IDENTITY_EXPIRED,
          "the workload certificate expired; outbound calls fail until it is renewed",
        ),
      );
    }),
    identity.on("issued", () => {
      if (status === "degraded") setStatus(isReady() ? "ready" : "starting");
    }),
  ];

  const reasons = (): string[] => {
    const found: string[] = [];
    const identityState = identity.state();
    if (!identityState.ready) found.push(`identity ${identityState.status}`);
    if (config.policy && config.inboundPorts.length > 0) {
      if (!watcher) found.push("policy controller not connected");
      else
        for (const port of watcher.state())
          if (!port.loaded) found.push(`policy for port ${port.port} not loaded`);
    }
    return found;
  };

  function isReady(): boolean {
    return status !== "closing" && status !== "closed" && reasons().length === 0;
  }

  let identityAddress: { value: ControlPlaneAddress | undefined } | undefined;
  const readiness = new ReadinessReporter(
    {
      identity,
      identityAddress: () => {
        identityAddress ??= { value: identityServiceAddress(env, options) };
        return identityAddress.value;
      },
      watcher,
      policyAddress: config.policy?.address,
    },
    options.onWarning ?? defaultWarningHandler,
  );

  async function ready(readyOptions: MeshReadyOptions = {}): Promise<void> {
    const signals = [lifetime.signal];
    if (readyOptions.signal) signals.push(readyOptions.signal);
    if (readyOptions.timeoutMs !== undefined) signals.push(AbortSignal.timeout(readyOptions.timeoutMs));
    const signal = signals.length === 1 ? lifetime.signal : AbortSignal.any(signals);
    await readiness.track(async () => {
      await discoveryLoading;
      await identity.ready({ signal });
      await watcher?.ready({ signal });
    }, signal);
    if (status === "starting") setStatus("ready");
  }

  async function close(): Promise<void> {
    closing ??= (async () => {
      setStatus("closing");
      // Drain what is in flight first: servers and dispatchers registered their close tasks.
      await Promise.allSettled(closeTasks.map((task) => task()));
      lifetime.abort(new MeshError(MeshErrorCode.CLOSED, "the mesh was closed"));
      for (const unsubscribe of identityListeners) unsubscribe();
      await watcher?.close();
      await discovery?.close();
      clients.close();
      if (ownsIdentity) await identity.close();
      setStatus("closed");
    })();
    return closing;
  }

  const core: MeshCore = {
    config,
    identity,
    policy,
    discovery: undefined,
    ready,
    isReady,
    state: () => ({ status, identity: identity.state(), policy: watcher?.state() ?? [], reasons: reasons() }),
    on(event, listener) {
      events.on(event, listener);
      return () => events.off(event, listener);
    },
    onClose(task) {
      closeTasks.push(task);
    },
    close,
    [Symbol.asyncDispose]: close,
  };
  // Not enumerable: spreading the core (createMesh does) must not create discovery.
  return Object.defineProperty(core, "discovery", { enumerable: false, get: discoveryNow });
}

/** The identity service's address for messages; undefined when the configuration does not say. */
function identityServiceAddress(env: Env, options: MeshOptions) {
  try {
    return resolveIdentityConfig({ ...options.identity, env }).identityService;
  } catch {
    return undefined;
  }
}
