import { stat } from "node:fs/promises";
import path from "node:path";
import { parseArgs } from "node:util";
import { formatManifestProblem, type ManifestProblem, startControlPlane } from "@inmesh/control-plane";
import { type CliIo, type Command, UsageError } from "../io.js";
import {
  addressOptions,
  clusterFromFlags,
  clusterOptions,
  DEFAULT_STATE_DIR,
  parseDurationOption,
  parsePortOption,
} from "./options.js";

const usage = `inmesh control-plane --manifests DIR [--state DIR] [--host H] [--identity-port N]
    [--destination-port N] [--policy-port N] [--certificate-lifetime 24h] [--default-policy P]
    [--cluster-domain D] [--trust-domain D] [--control-plane-namespace NS] [--cluster-networks CIDRS]
    [--outbound-transport-mode transport-header|transparent] [--proxy-inbound-port 4143]
    [--no-loopback-plaintext]`;

/** `inmesh control-plane`: serves until SIGINT/SIGTERM, then closes every stream and server. */
export const controlPlaneCommand: Command = {
  name: "control-plane",
  summary:
    "run the dev control plane (identity :8080, destination :8086, policy :8090) from a manifest folder",
  usage,
  async run(argv: readonly string[], io: CliIo): Promise<number> {
    const { values, positionals } = parseArgs({
      args: [...argv],
      allowPositionals: true,
      strict: true,
      options: {
        manifests: { type: "string" },
        state: { type: "string" },
        "certificate-lifetime": { type: "string" },
        "no-loopback-plaintext": { type: "boolean" },
        ...addressOptions,
        ...clusterOptions,
      },
    });
    if (positionals.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}`);
    if (values.manifests === undefined) throw new UsageError("--manifests DIR is required");
    const identityPort = parsePortOption("identity-port", values["identity-port"]);
    const destinationPort = parsePortOption("destination-port", values["destination-port"]);
    const policyPort = parsePortOption("policy-port", values["policy-port"]);
    const certificateLifetimeMs = parseDurationOption("certificate-lifetime", values["certificate-lifetime"]);
    const manifestsDir = path.resolve(io.cwd, values.manifests);
    const stateDir = path.resolve(io.cwd, values.state ?? DEFAULT_STATE_DIR);
    // A mistyped folder would otherwise serve an empty cluster while waiting for the folder to appear.
    const folder = await stat(manifestsDir).catch(() => undefined);
    if (!folder?.isDirectory()) throw new Error(`--manifests ${values.manifests}: not a directory`);

    const controlPlane = await startControlPlane({
      manifestsDir,
      stateDir,
      ...(values.host === undefined ? {} : { host: values.host }),
      ports: {
        ...(identityPort === undefined ? {} : { identity: identityPort }),
        ...(destinationPort === undefined ? {} : { destination: destinationPort }),
        ...(policyPort === undefined ? {} : { policy: policyPort }),
      },
      ...(certificateLifetimeMs === undefined ? {} : { certificateLifetimeMs }),
      cluster: clusterFromFlags(values),
      allowLoopbackPlaintext: values["no-loopback-plaintext"] !== true,
    });
    try {
      const printProblems = (problems: readonly ManifestProblem[]) => {
        io.stderr(`manifests rejected; the previous state stays in force:\n`);
        for (const problem of problems) io.stderr(`  ${formatManifestProblem(problem)}\n`);
      };
      if (controlPlane.rejected !== undefined) printProblems(controlPlane.rejected.problems);
      controlPlane.on("manifest-rejected", (event) => printProblems(event.problems));
      controlPlane.on("reloaded", (event) => {
        io.stderr(`manifests reloaded (${event.files} files)\n`);
        for (const warning of event.warnings) io.stderr(`  warning: ${formatManifestProblem(warning)}\n`);
      });

      const { addresses, serverNames, state } = controlPlane;
      io.stdout(
        [
          "inmesh dev control plane: for development and tests only; use Linkerd in production.",
          `identity     ${addresses.identity}  (TLS, server name ${serverNames.identity})`,
          `destination  ${addresses.destination}  (mTLS, server name ${serverNames.destination})`,
          `policy       ${addresses.policy}  (mTLS, server name ${serverNames.policy})`,
          `manifests    ${manifestsDir} (${state.pods.length} pods, ${state.services.length} services; watched)`,
          `state        ${stateDir} (trust anchors: ${path.join(stateDir, "trust-anchors.pem")})`,
          "",
        ].join("\n"),
      );
      if (!io.signal.aborted) {
        await new Promise<void>((resolve) =>
          io.signal.addEventListener("abort", () => resolve(), { once: true }),
        );
      }
      io.stderr("shutting down\n");
    } finally {
      await controlPlane.close();
    }
    return 0;
  },
};
