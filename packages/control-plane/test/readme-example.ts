import path from "node:path";
import { type ControlPlanePorts, startControlPlane } from "@inmesh/control-plane";

// The dev control plane for the project in `root`, on ports 8080, 8086 and 8090 unless told otherwise.
export async function startDevControlPlane(root = ".", ports: ControlPlanePorts = {}) {
  const controlPlane = await startControlPlane({
    manifestsDir: path.join(root, "manifests"), // Pods, Services, Servers, AuthorizationPolicies, HTTPRoutes, ServiceProfiles…
    stateDir: path.join(root, ".inmesh-state"), // the CA and issued tokens survive restarts
    ports,
  });
  controlPlane.on("manifest-rejected", ({ message }) => process.stderr.write(`${message}\n`));

  // Everything a workload needs to join the mesh as pod default/web-1 (the Linkerd injector's variables):
  const { variables } = await controlPlane.writeEnv("web-1", { namespace: "default" });
  return { controlPlane, variables }; // stop it with `await controlPlane.close()` (or `await using`)
}
