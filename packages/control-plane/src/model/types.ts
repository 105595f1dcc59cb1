/** Public types of the model; see index.ts for the overview. */
import { MeshError, MeshErrorCode } from "@inmesh/core";
import type { destination, inbound, outbound } from "@inmesh/proto";
import type { DefaultPolicyName, ResolvedClusterOptions } from "./options.js";

export interface ManifestFile {
  path: string;
  text: string;
}

/**
 * One thing wrong with the manifests. `document` is the 0-based index of the YAML document in the file;
 * `field` is a dotted path inside that document (`items[2].spec.port` for an entry of a `kind: List`).
 */
export interface ManifestProblem {
  file: string;
  document: number;
  /** 1-based line where the document starts (an addition to the original API; absent for YAML syntax errors). */
  line?: number;
  kind?: string;
  name?: string;
  field?: string;
  message: string;
}

function formatProblem(problem: ManifestProblem): string {
  const where = `${problem.file}${problem.line === undefined ? "" : `:${problem.line}`} (document ${problem.document})`;
  const what =
    problem.kind === undefined
      ? ""
      : ` ${problem.kind}${problem.name === undefined ? "" : `/${problem.name}`}`;
  const field = problem.field === undefined ? "" : ` ${problem.field}:`;
  return `${where}${what}${field} ${problem.message}`;
}

/** Thrown by `buildClusterState` with every problem found; no state is built. */
export class ManifestError extends MeshError {
  readonly problems: ManifestProblem[];
  constructor(problems: ManifestProblem[]) {
    const head = problems.length === 1 ? "1 problem" : `${problems.length} problems`;
    super(
      MeshErrorCode.MANIFEST_INVALID,
      `invalid manifests (${head}):\n${problems.map(formatProblem).join("\n")}`,
      {
        details: { problems },
      },
    );
    this.name = "ManifestError";
    this.problems = problems;
  }
}

export interface ContainerPortInfo {
  readonly container: string;
  readonly containerPort: number;
  readonly name: string | undefined;
  readonly protocol: "TCP" | "UDP" | "SCTP";
}

export interface PodInfo {
  readonly name: string;
  readonly namespace: string;
  readonly serviceAccount: string;
  /** `<sa>.<ns>.serviceaccount.identity.<cpns>.<td>`, computed for every pod (meaningful when meshed). */
  readonly identity: string;
  readonly ip: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly annotations: Readonly<Record<string, string>>;
  readonly containerPorts: readonly ContainerPortInfo[];
  readonly meshed: boolean;
  /** The default inbound policy the pod is served under: pod annotation, then namespace, then cluster. */
  readonly defaultInboundPolicy: DefaultPolicyName;
  /** Ports with protocol detection disabled (annotation on the pod or namespace, else the injector's default). */
  readonly opaquePorts: readonly number[];
  /** Where the pod accepts transport-header connections (`LINKERD2_PROXY_INBOUND_LISTEN_ADDR`'s port). */
  readonly inboundPort: number;
}

export interface ServicePortInfo {
  readonly name: string | undefined;
  readonly port: number;
  /** A number, or a container port name resolved per pod. */
  readonly targetPort: number | string;
  readonly protocol: "TCP" | "UDP" | "SCTP";
}

export interface ServiceInfo {
  readonly name: string;
  readonly namespace: string;
  /** undefined: a Service without selector (no endpoints are computed for it). */
  readonly selector: Readonly<Record<string, string>> | undefined;
  readonly ports: readonly ServicePortInfo[];
  readonly clusterIP: string | undefined;
  readonly annotations: Readonly<Record<string, string>>;
}

export type LookupError = { ok: false; code: "InvalidArgument" | "NotFound"; message: string };

export interface ClusterState {
  readonly options: ResolvedClusterOptions;
  readonly pods: readonly PodInfo[];
  readonly services: readonly ServiceInfo[];
  readonly warnings: readonly ManifestProblem[];
  findPod(namespace: string, name: string): PodInfo | undefined;
  /**
   * InboundServerPolicies: workload is the raw PortSpec.workload string (JSON `{"ns","pod"}` with optional
   * trailing newline, or legacy `ns:pod`).
   */
  inboundServer(workload: string, port: number): { ok: true; server: inbound.Server } | LookupError;
  /** OutboundPolicies: target authority `svc.ns.svc.cluster.local:port` or an IP:port TcpAddress. */
  outboundPolicy(spec: outbound.TrafficSpec): { ok: true; policy: outbound.OutboundPolicy } | LookupError;
  /**
   * Destination.Get: path `svc.ns.svc.cluster.local:port` (port defaults to 80). Returns the full current
   * endpoint set (the server diffs successive sets into add/remove updates).
   */
  endpoints(
    path: string,
    contextToken: string,
  ): { ok: true; exists: boolean; set: destination.WeightedAddrSet } | LookupError;
  /** Destination.GetProfile for an authority or IP:port path. */
  profile(
    path: string,
    contextToken: string,
  ): { ok: true; profile: destination.DestinationProfile } | LookupError;
}
