import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import {
  type ClusterOptions,
  type ControlPlane,
  formatManifestProblem,
  type ManifestFile,
  startControlPlane,
} from "@inmesh/control-plane";
import { ConfigError, MeshError, MeshErrorCode } from "@inmesh/core";
import { type CreateMeshOptions, createMesh, type Mesh, type MeshServeOptions } from "@inmesh/mesh";
import { freeLoopbackPort } from "./ports.js";

/** A Kubernetes-style resource as an object: `{ apiVersion, kind, metadata, spec, status }`. */
export type ManifestObject = { readonly apiVersion: string; readonly kind: string } & Readonly<
  Record<string, unknown>
>;

/** Resources as objects or YAML files (`{ path, text }`), or the path of a folder of YAML manifests. */
export type ManifestsInput = readonly (ManifestObject | ManifestFile)[] | string;

export interface TestMeshOptions {
  /** The cluster: Pods (with `status.podIP`), Services, Namespaces and Linkerd policy resources. */
  manifests: ManifestsInput;
  /**
   * Cluster settings of the dev control plane (default policy, trust domain, cluster networks…).
   * `proxyInboundPort`, the transport-header port every pod binds at its IP (4143 in a cluster),
   * defaults to a free port of this process's own, so test files running side by side never collide.
   */
  cluster?: ClusterOptions;
  /** Options of every workload's `createMesh()`, besides its environment. @default { admin: false } */
  meshOptions?: Omit<CreateMeshOptions, "env">;
  /** How long a workload may take to get its identity and policy. @default 15000 */
  readyTimeoutMs?: number;
}

/** A pod of the manifests, running in this process with its own mesh. */
export interface TestWorkload {
  readonly namespace: string;
  readonly pod: string;
  /** The LINKERD2_PROXY_* variables the Linkerd injector would give the pod. */
  readonly env: Readonly<Record<string, string>>;
  /** `status.podIP`: where it serves and the source address of its calls. */
  readonly ip: string;
  /** Its mTLS identity, `<sa>.<ns>.serviceaccount.identity.<cpns>.<td>`. */
  readonly identity: string;
  /** Its container ports (the inbound ports the policy controller knows). */
  readonly ports: readonly number[];
  /** Its mesh, ready. */
  readonly mesh: Mesh;
}

export interface TestService extends TestWorkload {
  /** `http://<podIP>:<port>`: the service's own address (plaintext from outside the mesh). */
  readonly url: string;
  readonly port: number;
}

/** A pod as `"pod"` (namespace `default`) or `"namespace/pod"`. */
export type PodRef = string;

export interface TestMesh extends AsyncDisposable {
  readonly controlPlane: ControlPlane;
  /** The pod's environment, for a service started in a child process (`spawn(…, { env })`). */
  env(pod: PodRef): Promise<Readonly<Record<string, string>>>;
  /** The pod with a ready mesh of its own (one per pod, made on first use). */
  workload(pod: PodRef): Promise<TestWorkload>;
  /**
   * Serves `handler` (a `(req, res)` listener, an Express app…) as the pod, on its first container port
   * (or `options.port`) at its pod IP, behind mTLS and the port's Linkerd policy; resolves once ready.
   */
  serve(
    pod: PodRef,
    handler: Parameters<Mesh["createServer"]>[0],
    options?: Partial<MeshServeOptions>,
  ): Promise<TestService>;
  /** `fetch` as the pod: from its IP, with its identity over mTLS, through discovery. */
  fetchAs(
    pod: PodRef,
    input: Parameters<Mesh["fetch"]>[0],
    init?: Parameters<Mesh["fetch"]>[1],
  ): ReturnType<Mesh["fetch"]>;
  /** Replaces the manifests (given as objects or files); running workloads see the change live. */
  setManifests(manifests: readonly (ManifestObject | ManifestFile)[]): void;
  /** Closes every workload's mesh and servers, then the control plane, and removes its state. */
  close(): Promise<void>;
}

function isManifestFile(entry: ManifestObject | ManifestFile): entry is ManifestFile {
  return typeof (entry as ManifestFile).text === "string" && typeof (entry as ManifestFile).path === "string";
}

/** Objects become one multi-document file (JSON is YAML); files are kept as they are. */
export function toManifestFiles(manifests: readonly (ManifestObject | ManifestFile)[]): ManifestFile[] {
  const files = manifests.filter(isManifestFile);
  const objects = manifests.filter((entry) => !isManifestFile(entry));
  if (objects.length > 0)
    files.push({
      path: "objects.yaml",
      text: objects.map((object) => JSON.stringify(object)).join("\n---\n"),
    });
  return files;
}

function parsePodRef(ref: PodRef): { namespace: string; pod: string } {
  const slash = ref.indexOf("/");
  if (slash === -1) return { namespace: "default", pod: ref };
  return { namespace: ref.slice(0, slash), pod: ref.slice(slash + 1) };
}

/**
 * Starts a dev control plane in this process, on ephemeral loopback ports, serving `manifests`; each
 * pod of them can then serve or call with its own identity, address and policy, as in a cluster.
 */
export async function startTestMesh(options: TestMeshOptions): Promise<TestMesh> {
  const stateDir = await mkdtemp(path.join(tmpdir(), "inmesh-testing-"));
  const source =
    typeof options.manifests === "string"
      ? { manifestsDir: path.resolve(options.manifests) }
      : { manifests: toManifestFiles(options.manifests) };
  let controlPlane: ControlPlane;
  try {
    controlPlane = await startControlPlane({
      ...source,
      stateDir,
      ports: { identity: 0, destination: 0, policy: 0 },
      watch: false,
      cluster: {
        ...options.cluster,
        proxyInboundPort: options.cluster?.proxyInboundPort ?? (await freeLoopbackPort()),
      },
    });
  } catch (error) {
    await rm(stateDir, { recursive: true, force: true });
    throw error;
  }
  const readyTimeoutMs = options.readyTimeoutMs ?? 15_000;
  const workloads = new Map<string, Promise<TestWorkload>>();
  let closing: Promise<void> | undefined;

  const env = async (ref: PodRef) => {
    const { namespace, pod } = parsePodRef(ref);
    return (await controlPlane.writeEnv(pod, { namespace })).variables;
  };

  const startWorkload = async (ref: PodRef): Promise<TestWorkload> => {
    const { namespace, pod } = parsePodRef(ref);
    const written = await controlPlane.writeEnv(pod, { namespace });
    if (!written.pod.meshed)
      throw new ConfigError(
        `pod ${namespace}/${pod} is not meshed: label it linkerd.io/control-plane-ns: linkerd (or annotate linkerd.io/inject: enabled)`,
        { details: { variable: "manifests", pod: `${namespace}/${pod}` } },
      );
    const mesh = createMesh({ admin: false, ...options.meshOptions, env: written.variables });
    return {
      namespace,
      pod,
      env: written.variables,
      ip: written.pod.ip,
      identity: written.pod.identity,
      ports: written.pod.containerPorts.map((port) => port.containerPort),
      mesh,
    };
  };

  const workload = (ref: PodRef): Promise<TestWorkload> => {
    if (closing) return Promise.reject(new MeshError(MeshErrorCode.CLOSED, "the test mesh is closed"));
    const { namespace, pod } = parsePodRef(ref);
    const key = `${namespace}/${pod}`;
    let started = workloads.get(key);
    if (!started) {
      started = startWorkload(ref);
      workloads.set(key, started);
    }
    return started;
  };

  const readyWorkload = async (ref: PodRef): Promise<TestWorkload> => {
    const started = await workload(ref);
    await started.mesh.ready({ timeoutMs: readyTimeoutMs });
    return started;
  };

  const testMesh: TestMesh = {
    controlPlane,
    env,
    workload: readyWorkload,
    async serve(ref, handler, serveOptions = {}) {
      const started = await workload(ref);
      const port = serveOptions.port ?? started.ports[0];
      if (port === undefined)
        throw new ConfigError(`pod ${started.namespace}/${started.pod} declares no containerPort to serve`, {
          details: { variable: "manifests" },
        });
      const server = started.mesh.createServer(handler, { ...serveOptions, port });
      await server.listen(port, started.ip);
      await started.mesh.ready({ timeoutMs: readyTimeoutMs });
      const host = started.ip.includes(":") ? `[${started.ip}]` : started.ip;
      return { ...started, port, url: `http://${host}:${port}` };
    },
    async fetchAs(ref, input, init) {
      const caller = await readyWorkload(ref);
      return caller.mesh.fetch(input, init);
    },
    setManifests(manifests) {
      const result = controlPlane.setManifests(toManifestFiles(manifests));
      if (!result.ok)
        throw new MeshError(
          MeshErrorCode.MANIFEST_INVALID,
          `invalid manifests:\n${result.problems.map(formatManifestProblem).join("\n")}`,
          { details: { problems: result.problems } },
        );
    },
    close() {
      closing ??= (async () => {
        const started = await Promise.allSettled(workloads.values());
        await Promise.allSettled(
          started.flatMap((entry) => (entry.status === "fulfilled" ? [entry.value.mesh.close()] : [])),
        );
        await controlPlane.close();
        await rm(stateDir, { recursive: true, force: true });
      })();
      return closing;
    },
    [Symbol.asyncDispose]: () => testMesh.close(),
  };
  return testMesh;
}
