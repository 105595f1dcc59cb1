import path from "node:path";
import { parseArgs } from "node:util";
import { formatDotenv, prepareWorkloadEnv } from "@inmesh/control-plane";
import { type CliIo, type Command, UsageError } from "../io.js";
import {
  addressOptions,
  clusterFromFlags,
  clusterOptions,
  DEFAULT_STATE_DIR,
  parsePortOption,
} from "./options.js";

const usage = `inmesh env POD [--namespace NS] [--manifests DIR] [--state DIR] [--token-dir DIR] [--host H]
    [--identity-port N] [--destination-port N] [--policy-port N] [cluster options as for control-plane]`;

/**
 * `inmesh env POD`: the LINKERD2_PROXY_* variables the Linkerd injector would give the pod, as dotenv lines
 * (`node --env-file`), with a fresh identity token written to a 0600 file.
 */
export const envCommand: Command = {
  name: "env",
  summary: "print the LINKERD2_PROXY_* variables of a pod in the manifests, as a dotenv file",
  usage,
  async run(argv: readonly string[], io: CliIo): Promise<number> {
    const { values, positionals } = parseArgs({
      args: [...argv],
      allowPositionals: true,
      strict: true,
      options: {
        namespace: { type: "string", short: "n" },
        manifests: { type: "string" },
        state: { type: "string" },
        "token-dir": { type: "string" },
        ...addressOptions,
        ...clusterOptions,
      },
    });
    if (positionals.length !== 1)
      throw new UsageError(positionals.length === 0 ? "POD is required" : "give exactly one POD");
    const pod = positionals[0] as string;
    const identityPort = parsePortOption("identity-port", values["identity-port"]);
    const destinationPort = parsePortOption("destination-port", values["destination-port"]);
    const policyPort = parsePortOption("policy-port", values["policy-port"]);
    const stateDir = path.resolve(io.cwd, values.state ?? DEFAULT_STATE_DIR);

    const env = await prepareWorkloadEnv({
      pod,
      namespace: values.namespace ?? "default",
      manifestsDir: path.resolve(io.cwd, values.manifests ?? "manifests"),
      stateDir,
      ...(values["token-dir"] === undefined ? {} : { tokenDir: path.resolve(io.cwd, values["token-dir"]) }),
      ...(values.host === undefined ? {} : { host: values.host }),
      ports: {
        ...(identityPort === undefined ? {} : { identity: identityPort }),
        ...(destinationPort === undefined ? {} : { destination: destinationPort }),
        ...(policyPort === undefined ? {} : { policy: policyPort }),
      },
      cluster: clusterFromFlags(values),
    });
    if (!env.pod.meshed) {
      io.stderr(
        `warning: pod ${env.pod.namespace}/${env.pod.name} is not meshed (no linkerd.io/control-plane-ns label or linkerd.io/inject: enabled); the policy service will not know it\n`,
      );
    }
    io.stdout(`# inmesh env ${env.pod.namespace}/${env.pod.name}: use with node --env-file\n`);
    io.stdout(formatDotenv(env.variables));
    return 0;
  },
};
