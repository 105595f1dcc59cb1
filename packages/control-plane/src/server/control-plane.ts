import { createHash } from "node:crypto";
import { channel } from "node:diagnostics_channel";
import path from "node:path";
import { debuglog } from "node:util";
import { Server } from "@grpc/grpc-js";
import { type Closable, ConfigError, closeOnce, MeshError, MeshErrorCode } from "@inmesh/core";
import { destination, identity, inbound, outbound } from "@inmesh/proto";
import {
  type CertificateAuthority,
  createCertificateAuthority,
  type IssuedCredentials,
  loadOrCreateCertificateAuthority,
} from "../ca.js";
import {
  buildClusterState,
  type ClusterOptions,
  type ClusterState,
  ManifestError,
  type ManifestFile,
  type ManifestProblem,
} from "../model/index.js";
import { createDestinationService } from "./destination-service.js";
import { createIdentityService } from "./identity-service.js";
import { type GrpcListener, type ServingCredentials, startGrpcListener } from "./listener.js";
import { type FolderWatcher, readManifestFolder, watchManifestFolder } from "./manifest-folder.js";
import { createInboundPolicyService, createOutboundPolicyService } from "./policy-service.js";
import { type WorkloadEnv, type WorkloadEnvOptions, writeWorkloadEnv } from "./prepare-env.js";
import { formatManifestProblem } from "./problems.js";
import { createWatchRegistry } from "./streams.js";
import { createTokenStore } from "./tokens.js";
import {
  type ControlPlaneAddresses,
  type ControlPlaneServerNames,
  controlPlaneServerNames,
  formatAddress,
} from "./workload-env.js";

const debug = debuglog("mesh");
const reloadedChannel = channel("mesh:control-plane:reloaded");
const rejectedChannel = channel("mesh:control-plane:manifest-rejected");

const HOUR_MS = 3_600_000;
/** Linkerd's default issuance lifetime. */
export const DEFAULT_CERTIFICATE_LIFETIME_MS = 24 * HOUR_MS;
/** The real control plane's ports (contract §2.2). */
export const DEFAULT_CONTROL_PLANE_PORTS = Object.freeze({ identity: 8080, destination: 8086, policy: 8090 });
/** Control-plane requests are small; anything bigger is refused before decoding. */
const MAX_RECEIVE_MESSAGE_BYTES = 1024 * 1024;
/** Open streams are ended (OK) on close; calls still running after this are cancelled. */
const SHUTDOWN_GRACE_MS = 2000;

export interface ControlPlanePorts {
  /** @default 8080 */
  readonly identity?: number;
  /** @default 8086 */
  readonly destination?: number;
  /** @default 8090 */
  readonly policy?: number;
}

export interface ControlPlaneOptions {
  /** Folder of Kubernetes-style YAML (or JSON) manifests, read recursively. */
  readonly manifestsDir?: string;
  /** In-memory manifests (tests); exclusive with manifestsDir. Replace them later with setManifests(). */
  readonly manifests?: readonly ManifestFile[];
  /**
   * Where the CA and the issued identity tokens are kept, so restarts keep both valid. Without it, and
   * without `certificateAuthority`, a fresh in-memory CA is made and tokens live only in this process.
   */
  readonly stateDir?: string;
  /** A CA to use instead of the one in stateDir (e.g. from Linkerd's trust root and issuer). */
  readonly certificateAuthority?: CertificateAuthority;
  /** @default "127.0.0.1" */
  readonly host?: string;
  /** 0 binds an ephemeral port. @default {identity: 8080, destination: 8086, policy: 8090} */
  readonly ports?: ControlPlanePorts;
  /** Lifetime of workload certificates issued by Certify. @default 24 h */
  readonly certificateLifetimeMs?: number;
  /** Passed to the manifest model (cluster domain, trust domain, default policy, cluster networks…). */
  readonly cluster?: ClusterOptions;
  /** Reload when files in manifestsDir change. @default true */
  readonly watch?: boolean;
  /** Debounce between a file event and the reload. @default 150 */
  readonly watchDebounceMs?: number;
  /**
   * Serve plaintext gRPC to loopback clients, as linkerd2-proxy expects of a loopback control-plane
   * address. TLS (identity) and mTLS (policy, destination) are served to every client either way.
   * @default true
   */
  readonly allowLoopbackPlaintext?: boolean;
}

export type ReloadResult =
  | { readonly ok: true; readonly warnings: readonly ManifestProblem[] }
  | { readonly ok: false; readonly problems: readonly ManifestProblem[] };

export interface ReloadedEvent {
  readonly files: number;
  readonly warnings: readonly ManifestProblem[];
}

export interface ManifestRejectedEvent {
  /** Each with file, document index and field; the previous state stays in force. */
  readonly problems: readonly ManifestProblem[];
  readonly message: string;
}

export interface ControlPlaneEvents {
  reloaded: ReloadedEvent;
  "manifest-rejected": ManifestRejectedEvent;
}

export interface ControlPlane extends Closable {
  /** `host:port` of each service, as a workload should dial it. */
  readonly addresses: ControlPlaneAddresses;
  readonly ports: { readonly identity: number; readonly destination: number; readonly policy: number };
  /** Server identities (and SNI) of the services: `linkerd-identity.linkerd.serviceaccount…` etc. */
  readonly serverNames: ControlPlaneServerNames;
  readonly trustAnchorsPem: string;
  readonly certificateAuthority: CertificateAuthority;
  /** The state in force: the last manifests that loaded without problems. */
  readonly state: ClusterState;
  /** Problems of the newest manifests when they were rejected, undefined when the newest loaded. */
  readonly rejected: ManifestRejectedEvent | undefined;
  /** The identity token of a pod in the manifests (issued once, kept in stateDir). */
  tokenFor(namespace: string, pod: string): Promise<string>;
  /** Writes the pod's token file and returns the variables the Linkerd injector would give the pod. */
  writeEnv(pod: string, options?: WorkloadEnvOptions): Promise<WorkloadEnv>;
  /** Re-reads manifestsDir now (the folder watch does this on its own). */
  reload(): Promise<ReloadResult>;
  /** Replaces the in-memory manifests (only for a control plane started with `manifests`). */
  setManifests(files: readonly ManifestFile[]): ReloadResult;
  on<E extends keyof ControlPlaneEvents>(
    event: E,
    listener: (payload: ControlPlaneEvents[E]) => void,
  ): () => void;
}

function checkPort(name: string, value: number | undefined, fallback: number): number {
  const port = value ?? fallback;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new ConfigError(`ports.${name} must be an integer 0-65535, got ${value}`, {
      details: { variable: `ports.${name}` },
    });
  }
  return port;
}

function problemsOf(error: unknown): ManifestProblem[] {
  if (error instanceof ManifestError) return error.problems;
  const file =
    error instanceof MeshError && typeof error.details?.file === "string"
      ? error.details.file
      : "(manifests)";
  return [{ file, document: 0, message: (error as Error)?.message ?? String(error) }];
}

function formatProblems(problems: readonly ManifestProblem[]): string {
  return problems.map(formatManifestProblem).join("\n");
}

/**
 * Starts the dev control plane: Identity on :8080, Destination on :8086 and the policy services on
 * :8090, all computed from the manifests, which are re-read whenever the folder changes. Invalid
 * manifests are reported (event `manifest-rejected`, `rejected`) and the last good state stays in force.
 * Not a production control plane: use Linkerd for that.
 */
export async function startControlPlane(options: ControlPlaneOptions = {}): Promise<ControlPlane> {
  if (options.manifestsDir !== undefined && options.manifests !== undefined) {
    throw new ConfigError("give either manifestsDir or manifests, not both", {
      details: { variable: "manifests" },
    });
  }
  const host = options.host ?? "127.0.0.1";
  if (host === "") throw new ConfigError("host must not be empty", { details: { variable: "host" } });
  const requestedPorts = {
    identity: checkPort("identity", options.ports?.identity, DEFAULT_CONTROL_PLANE_PORTS.identity),
    destination: checkPort(
      "destination",
      options.ports?.destination,
      DEFAULT_CONTROL_PLANE_PORTS.destination,
    ),
    policy: checkPort("policy", options.ports?.policy, DEFAULT_CONTROL_PLANE_PORTS.policy),
  };
  const certificateLifetimeMs = options.certificateLifetimeMs ?? DEFAULT_CERTIFICATE_LIFETIME_MS;
  if (!Number.isSafeInteger(certificateLifetimeMs) || certificateLifetimeMs < 1000) {
    throw new ConfigError(`certificateLifetimeMs must be an integer >= 1000, got ${certificateLifetimeMs}`, {
      details: { variable: "certificateLifetimeMs" },
    });
  }
  const cluster = options.cluster ?? {};
  // Validates the cluster options once, before anything is bound.
  let state = buildClusterState([], cluster);
  const names = controlPlaneServerNames(state.options);

  const ca =
    options.certificateAuthority ??
    (options.stateDir === undefined
      ? await createCertificateAuthority({
          trustDomain: state.options.trustDomain,
          controlPlaneNamespace: state.options.controlPlaneNamespace,
        })
      : await loadOrCreateCertificateAuthority(options.stateDir, {
          trustDomain: state.options.trustDomain,
          controlPlaneNamespace: state.options.controlPlaneNamespace,
        }));
  const tokens = createTokenStore({ stateDir: options.stateDir });
  const registry = createWatchRegistry();
  const listeners: { [E in keyof ControlPlaneEvents]: Set<(payload: ControlPlaneEvents[E]) => void> } = {
    reloaded: new Set(),
    "manifest-rejected": new Set(),
  };
  let rejected: ManifestRejectedEvent | undefined;
  let memoryManifests: readonly ManifestFile[] = options.manifests ?? [];

  const emit = <E extends keyof ControlPlaneEvents>(event: E, payload: ControlPlaneEvents[E]) => {
    for (const listener of listeners[event]) {
      try {
        (listener as (value: ControlPlaneEvents[E]) => void)(payload);
      } catch (error) {
        debug("control-plane: %s listener threw: %s", event, (error as Error).message);
      }
    }
  };

  // What was last applied, so a reload that finds the same files (a touch, an editor's save) is a no-op.
  let lastApplied: { key: string; result: ReloadResult } | undefined;
  const apply = (files: readonly ManifestFile[]): ReloadResult => {
    if (closable.closed) {
      return { ok: false, problems: [{ file: "(control plane)", document: 0, message: "closed" }] };
    }
    const hash = createHash("sha256");
    for (const file of files) hash.update(`${file.path.length}:${file.path}${file.text.length}:${file.text}`);
    const key = hash.digest("hex");
    if (lastApplied?.key === key) return lastApplied.result;
    const result = build(files);
    lastApplied = { key, result };
    return result;
  };
  const build = (files: readonly ManifestFile[]): ReloadResult => {
    let next: ClusterState;
    try {
      next = buildClusterState([...files], cluster);
    } catch (error) {
      const problems = problemsOf(error);
      rejected = { problems, message: formatProblems(problems) };
      debug("control-plane: manifests rejected, previous state kept:\n%s", rejected.message);
      if (rejectedChannel.hasSubscribers) rejectedChannel.publish(rejected);
      emit("manifest-rejected", rejected);
      return { ok: false, problems };
    }
    state = next;
    rejected = undefined;
    registry.refreshAll();
    const event: ReloadedEvent = { files: files.length, warnings: next.warnings };
    if (reloadedChannel.hasSubscribers) reloadedChannel.publish(event);
    emit("reloaded", event);
    return { ok: true, warnings: next.warnings };
  };

  const loadFolder = async (): Promise<ReloadResult> => {
    if (options.manifestsDir === undefined) return apply(memoryManifests);
    let files: ManifestFile[];
    try {
      files = await readManifestFolder(options.manifestsDir);
    } catch (error) {
      const problems = problemsOf(error);
      lastApplied = undefined;
      rejected = { problems, message: formatProblems(problems) };
      if (rejectedChannel.hasSubscribers) rejectedChannel.publish(rejected);
      emit("manifest-rejected", rejected);
      return { ok: false, problems };
    }
    return apply(files);
  };

  // Reloads never overlap; a change during a reload triggers exactly one more, whose result callers get.
  let running: Promise<ReloadResult> | undefined;
  let again = false;
  const reload = (): Promise<ReloadResult> => {
    again = true;
    if (running !== undefined) return running;
    running = (async () => {
      let result: ReloadResult = { ok: true, warnings: state.warnings };
      while (again && !closable.closed) {
        again = false;
        result = await loadFolder();
      }
      // Cleared with no await after the last check of `again`, so no request can slip in between.
      running = undefined;
      return result;
    })();
    return running;
  };

  // The services' own certificates, issued from the CA and renewed at 70 % of their life, like a proxy's.
  let identityCredentials: IssuedCredentials = await ca.issueCredentials(names.identity);
  let destinationCredentials: IssuedCredentials = await ca.issueCredentials(names.destination);
  const serving = (issued: IssuedCredentials): ServingCredentials => ({
    keyPem: issued.privateKeyPem,
    certificateChainPem: issued.certificateChainPem,
    trustAnchorsPem: ca.trustAnchorsPem,
  });

  const grpcOptions = { "grpc.max_receive_message_length": MAX_RECEIVE_MESSAGE_BYTES };
  const identityServer = new Server(grpcOptions);
  identityServer.addService(
    identity.IdentityService,
    createIdentityService({ ca: () => ca, tokens, state: () => state, certificateLifetimeMs }),
  );
  const destinationServer = new Server(grpcOptions);
  destinationServer.addService(
    destination.DestinationService,
    createDestinationService({ state: () => state, registry }),
  );
  const policyServer = new Server(grpcOptions);
  policyServer.addService(
    inbound.InboundServerPoliciesService,
    createInboundPolicyService({ state: () => state, registry }),
  );
  policyServer.addService(
    outbound.OutboundPoliciesService,
    createOutboundPolicyService({ state: () => state, registry }),
  );
  const servers = [identityServer, destinationServer, policyServer];

  const allowLoopbackPlaintext = options.allowLoopbackPlaintext ?? true;
  const grpcListeners: GrpcListener[] = [];
  const closeListeners = () => Promise.all(grpcListeners.map((listener) => listener.close()));
  let identityListener: GrpcListener;
  let destinationListener: GrpcListener;
  let policyListener: GrpcListener;
  try {
    identityListener = await startGrpcListener({
      host,
      port: requestedPorts.identity,
      server: identityServer,
      credentials: serving(identityCredentials),
      // Workloads have no certificate before their first Certify (contract §3.2).
      requireClientCertificate: false,
      allowLoopbackPlaintext,
    });
    grpcListeners.push(identityListener);
    destinationListener = await startGrpcListener({
      host,
      port: requestedPorts.destination,
      server: destinationServer,
      credentials: serving(destinationCredentials),
      requireClientCertificate: true,
      allowLoopbackPlaintext,
    });
    grpcListeners.push(destinationListener);
    policyListener = await startGrpcListener({
      host,
      port: requestedPorts.policy,
      server: policyServer,
      credentials: serving(destinationCredentials),
      requireClientCertificate: true,
      allowLoopbackPlaintext,
    });
    grpcListeners.push(policyListener);
  } catch (error) {
    await closeListeners();
    for (const server of servers) server.forceShutdown();
    const code = (error as NodeJS.ErrnoException).code;
    throw new MeshError(
      MeshErrorCode.INVALID_CONFIG,
      code === "EADDRINUSE"
        ? `cannot listen on ${host}: ${(error as Error).message} (is another control plane running? pick other ports)`
        : `cannot listen on ${host}: ${(error as Error).message}`,
      { cause: error },
    );
  }

  let renewTimer: NodeJS.Timeout | undefined;
  const renewServingCredentials = async () => {
    try {
      identityCredentials = await ca.issueCredentials(names.identity);
      destinationCredentials = await ca.issueCredentials(names.destination);
      identityListener.setCredentials(serving(identityCredentials));
      destinationListener.setCredentials(serving(destinationCredentials));
      policyListener.setCredentials(serving(destinationCredentials));
      scheduleRenewal();
    } catch (error) {
      debug("control-plane: renewing the serving certificates failed: %s", (error as Error).message);
      scheduleRenewal(10_000);
    }
  };
  const scheduleRenewal = (afterMs?: number) => {
    if (renewTimer !== undefined) clearTimeout(renewTimer);
    if (closable.closed) return;
    const validUntilMs = Math.min(identityCredentials.validUntilMs, destinationCredentials.validUntilMs);
    const delayMs = afterMs ?? Math.max(1000, Math.floor((validUntilMs - Date.now()) * 0.7));
    // setTimeout cannot wait longer than 2^31-1 ms; waking up early just reschedules.
    renewTimer = setTimeout(() => void renewServingCredentials(), Math.min(delayMs, 2 ** 31 - 1));
    renewTimer.unref();
  };
  const unsubscribeCa = ca.onChange(() => void renewServingCredentials());

  let watcher: FolderWatcher | undefined;
  const closable = closeOnce(async () => {
    watcher?.close();
    unsubscribeCa();
    if (renewTimer !== undefined) clearTimeout(renewTimer);
    await registry.endAll();
    await Promise.all(
      servers.map(
        (server) =>
          new Promise<void>((resolve) => {
            const timer = setTimeout(() => {
              server.forceShutdown();
              resolve();
            }, SHUTDOWN_GRACE_MS);
            timer.unref();
            server.tryShutdown(() => {
              clearTimeout(timer);
              resolve();
            });
          }),
      ),
    );
    await closeListeners();
  });

  scheduleRenewal();
  // Watching starts before the first read, so an edit made meanwhile is never missed.
  if (options.manifestsDir !== undefined && options.watch !== false) {
    watcher = watchManifestFolder({
      dir: options.manifestsDir,
      onChange: () => void reload(),
      ...(options.watchDebounceMs === undefined ? {} : { debounceMs: options.watchDebounceMs }),
    });
  }
  await reload();

  const advertisedHost = host === "0.0.0.0" ? "127.0.0.1" : host === "::" ? "::1" : host;
  const addresses: ControlPlaneAddresses = {
    identity: formatAddress(advertisedHost, identityListener.port),
    destination: formatAddress(advertisedHost, destinationListener.port),
    policy: formatAddress(advertisedHost, policyListener.port),
  };

  return {
    addresses,
    ports: {
      identity: identityListener.port,
      destination: destinationListener.port,
      policy: policyListener.port,
    },
    serverNames: names,
    get trustAnchorsPem() {
      return ca.trustAnchorsPem;
    },
    certificateAuthority: ca,
    get state() {
      return state;
    },
    get rejected() {
      return rejected;
    },
    async tokenFor(namespace, podName) {
      const pod = state.findPod(namespace, podName);
      if (pod === undefined) {
        throw new MeshError(
          MeshErrorCode.INVALID_ARG,
          `pod ${namespace}/${podName} is not in the manifests`,
          {
            details: { namespace, pod: podName },
          },
        );
      }
      return tokens.issue({ namespace: pod.namespace, pod: pod.name, serviceAccount: pod.serviceAccount });
    },
    writeEnv(podName, envOptions = {}) {
      const tokenDir =
        envOptions.tokenDir ??
        (options.stateDir === undefined ? undefined : path.join(options.stateDir, "workloads"));
      if (tokenDir === undefined) {
        return Promise.reject(
          new MeshError(
            MeshErrorCode.INVALID_ARG,
            "writeEnv needs tokenDir when the control plane has no stateDir",
          ),
        );
      }
      return writeWorkloadEnv({
        state,
        tokens,
        trustAnchorsPem: ca.trustAnchorsPem,
        addresses,
        namespace: envOptions.namespace ?? "default",
        pod: podName,
        tokenDir,
      });
    },
    reload,
    setManifests(files) {
      if (options.manifestsDir !== undefined) {
        throw new MeshError(
          MeshErrorCode.INVALID_ARG,
          "setManifests is for a control plane started with `manifests`",
        );
      }
      memoryManifests = [...files];
      return apply(memoryManifests);
    },
    on(event, listener) {
      const set = listeners[event] as Set<typeof listener>;
      set.add(listener);
      return () => {
        set.delete(listener);
      };
    },
    close: closable.close,
    [Symbol.asyncDispose]: closable.close,
  };
}
