import { type ControlPlane, type ReloadResult, startControlPlane } from "@inmesh/control-plane";

// In tests, use ephemeral ports and in-memory manifests, then dial `cp.addresses`.
export function startTestControlPlane(clusterYaml: string): Promise<ControlPlane> {
  return startControlPlane({
    manifests: [{ path: "cluster.yaml", text: clusterYaml }],
    ports: { identity: 0, destination: 0, policy: 0 },
    certificateLifetimeMs: 60_000,
  });
}

// Open watches receive the change (`ok: false` lists the problems and keeps the last good state).
// `await cp.close()` (in afterEach) ends them.
export function changeCluster(cp: ControlPlane, changedClusterYaml: string): ReloadResult {
  return cp.setManifests([{ path: "cluster.yaml", text: changedClusterYaml }]);
}
