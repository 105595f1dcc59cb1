// Meshed services in the test process against a dev control plane of their own, for the routing tests
// (R15, R16): each pod on its own loopback address, each service a real `mesh.createServer` with mTLS,
// each caller a real `mesh.fetch`.
import { mkdtemp, rm } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { type ControlPlane, startControlPlane } from "@inmesh/control-plane";
import { createMesh, type Mesh } from "@inmesh/mesh";
import { freeLoopbackPort } from "@inmesh/testing/ports";

export interface ServicePod {
  /** Pod name; its service account and app label are the part before the last `-`. */
  readonly name: string;
  readonly ip: string;
  /** Serves HTTP on the shared port when set. */
  readonly serves: boolean;
  /** A meshed pod (the default) gets a mesh and an identity; an unmeshed one is plaintext. */
  readonly meshed?: boolean;
}

export interface MeshServices {
  readonly namespace: string;
  /** The one container port every serving pod listens on (each on its own address). */
  readonly port: number;
  readonly meshes: ReadonlyMap<string, Mesh>;
  mesh(pod: string): Mesh;
  /** Starts `handler` as the pod's meshed HTTP server on its address and the shared port. */
  serve(pod: string, handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<void>;
  close(): Promise<void>;
}

const appOf = (pod: string) => pod.slice(0, pod.lastIndexOf("-"));

/**
 * Writes the pods (labels `app: <name before the last ->`) and `extraManifests` (Services, profiles …,
 * which may use `${PORT}` for the container port), starts the control plane and one mesh per pod, and
 * waits until every mesh is ready.
 */
export async function startMeshServices(options: {
  namespace: string;
  pods: readonly ServicePod[];
  extraManifests: (port: number) => string;
}): Promise<MeshServices> {
  const { namespace, pods } = options;
  const stateDir = await mkdtemp(path.join(tmpdir(), "inmesh-services-"));
  const port = await freeLoopbackPort((pods.find((pod) => pod.serves) ?? pods[0])?.ip ?? "127.0.0.1");
  const podYaml = pods
    .map(
      (pod) => `
apiVersion: v1
kind: Pod
metadata:
  name: ${pod.name}
  namespace: ${namespace}
  labels: { app: ${appOf(pod.name)}${pod.meshed === false ? "" : ", linkerd.io/control-plane-ns: linkerd"} }
spec:
  serviceAccountName: ${appOf(pod.name)}
  containers: [{ name: app${pod.serves ? `, ports: [{ name: http, containerPort: ${port} }]` : ""} }]
status: { podIP: ${pod.ip} }
---`,
    )
    .join("\n");
  const controlPlane: ControlPlane = await startControlPlane({
    manifests: [
      {
        path: "services.yaml",
        text: `
apiVersion: v1
kind: Namespace
metadata: { name: ${namespace} }
---
${podYaml}
${options.extraManifests(port)}
`,
      },
    ],
    stateDir,
    ports: { identity: 0, destination: 0, policy: 0 },
    watch: false,
  });
  const meshes = new Map<string, Mesh>();
  const servers: { close(): Promise<void> }[] = [];
  try {
    for (const pod of pods) {
      if (pod.meshed === false) continue;
      const { variables } = await controlPlane.writeEnv(pod.name, { namespace });
      meshes.set(pod.name, createMesh({ env: variables, admin: false, tracing: false }));
    }
    await Promise.all(
      [...meshes.values()].map((mesh) => mesh.ready({ signal: AbortSignal.timeout(30_000) })),
    );
  } catch (error) {
    await Promise.allSettled([...meshes.values()].map((mesh) => mesh.close()));
    await controlPlane.close();
    await rm(stateDir, { recursive: true, force: true });
    throw error;
  }
  const mesh = (pod: string) => {
    const found = meshes.get(pod);
    if (!found) throw new Error(`no pod ${pod}`);
    return found;
  };
  return {
    namespace,
    port,
    meshes,
    mesh,
    async serve(pod, handler) {
      const spec = pods.find((candidate) => candidate.name === pod);
      if (!spec?.serves) throw new Error(`pod ${pod} does not serve`);
      const server = mesh(pod).createServer(handler, { port });
      await server.listen(port, spec.ip);
      servers.push(server);
    },
    async close() {
      await Promise.allSettled(servers.map((server) => server.close()));
      await Promise.allSettled([...meshes.values()].map((each) => each.close()));
      await controlPlane.close();
      await rm(stateDir, { recursive: true, force: true });
    },
  };
}
