import { mkdir, rename, writeFile } from "node:fs/promises";
import path from "node:path";
import { MeshError, MeshErrorCode } from "@inmesh/core";
import { loadOrCreateCertificateAuthority } from "../ca.js";
import { buildClusterState, type ClusterOptions, type ClusterState, type PodInfo } from "../model/index.js";
import { readManifestFolder } from "./manifest-folder.js";
import { createTokenStore, type TokenStore } from "./tokens.js";
import { buildWorkloadEnv, type ControlPlaneAddresses, formatAddress } from "./workload-env.js";

export interface WorkloadEnvOptions {
  /** @default "default" */
  readonly namespace?: string;
  /** Folder for the token file. @default `<stateDir>/workloads` */
  readonly tokenDir?: string;
}

export interface WorkloadEnv {
  /** LINKERD2_PROXY_* variables, in the injector's order. */
  readonly variables: Readonly<Record<string, string>>;
  /** The file holding the pod's token (mode 0600), named by LINKERD2_PROXY_IDENTITY_TOKEN_FILE. */
  readonly tokenFile: string;
  readonly pod: PodInfo;
}

/** Names that are safe as path segments (pod and namespace names are DNS labels or subdomains). */
const SAFE_NAME = /^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/;

/** Writes the token file for a pod and builds its variables; shared by the running control plane and `inmesh env`. */
export async function writeWorkloadEnv(input: {
  readonly state: ClusterState;
  readonly tokens: TokenStore;
  readonly trustAnchorsPem: string;
  readonly addresses: ControlPlaneAddresses;
  readonly namespace: string;
  readonly pod: string;
  readonly tokenDir: string;
}): Promise<WorkloadEnv> {
  const pod = input.state.findPod(input.namespace, input.pod);
  if (pod === undefined) {
    throw new MeshError(
      MeshErrorCode.INVALID_ARG,
      `pod ${input.namespace}/${input.pod} is not in the manifests`,
      {
        details: { namespace: input.namespace, pod: input.pod },
      },
    );
  }
  if (!SAFE_NAME.test(pod.namespace) || !SAFE_NAME.test(pod.name)) {
    throw new MeshError(
      MeshErrorCode.INVALID_ARG,
      `pod name ${pod.namespace}/${pod.name} cannot name a token file`,
    );
  }
  const token = await input.tokens.issue({
    namespace: pod.namespace,
    pod: pod.name,
    serviceAccount: pod.serviceAccount,
  });
  const dir = path.resolve(input.tokenDir, pod.namespace);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tokenFile = path.join(dir, `${pod.name}.token`);
  // A fresh file renamed over the old one, so the mode is 0600 even when an older token file exists.
  const temporary = `${tokenFile}.${process.pid}.tmp`;
  await writeFile(temporary, token, { mode: 0o600 });
  await rename(temporary, tokenFile);
  const variables = buildWorkloadEnv({
    pod,
    options: input.state.options,
    trustAnchorsPem: input.trustAnchorsPem,
    tokenFile,
    addresses: input.addresses,
  });
  return { variables, tokenFile, pod };
}

export interface PrepareWorkloadEnvOptions {
  /** The pod's name, as in the manifests. */
  readonly pod: string;
  /** @default "default" */
  readonly namespace?: string;
  readonly manifestsDir: string;
  /** The control plane's state folder: its CA and token registry. */
  readonly stateDir: string;
  /** @default `<stateDir>/workloads` */
  readonly tokenDir?: string;
  /** Where the control plane listens. @default "127.0.0.1" */
  readonly host?: string;
  /** @default {identity: 8080, destination: 8086, policy: 8090} */
  readonly ports?: { readonly identity?: number; readonly destination?: number; readonly policy?: number };
  readonly cluster?: ClusterOptions;
}

/**
 * `inmesh env` without a running control plane: reads the manifests and the state folder (creating the CA
 * there if it is new), issues the pod a token the control plane will accept and writes its token file.
 * Throws ManifestError when the manifests are invalid.
 */
export async function prepareWorkloadEnv(options: PrepareWorkloadEnvOptions): Promise<WorkloadEnv> {
  const state = buildClusterState(await readManifestFolder(options.manifestsDir), options.cluster ?? {});
  const ca = await loadOrCreateCertificateAuthority(options.stateDir, {
    trustDomain: state.options.trustDomain,
    controlPlaneNamespace: state.options.controlPlaneNamespace,
  });
  const host = options.host ?? "127.0.0.1";
  const advertised = host === "0.0.0.0" ? "127.0.0.1" : host === "::" ? "::1" : host;
  return writeWorkloadEnv({
    state,
    tokens: createTokenStore({ stateDir: options.stateDir }),
    trustAnchorsPem: ca.trustAnchorsPem,
    addresses: {
      identity: formatAddress(advertised, options.ports?.identity ?? 8080),
      destination: formatAddress(advertised, options.ports?.destination ?? 8086),
      policy: formatAddress(advertised, options.ports?.policy ?? 8090),
    },
    namespace: options.namespace ?? "default",
    pod: options.pod,
    tokenDir: options.tokenDir ?? path.join(options.stateDir, "workloads"),
  });
}
