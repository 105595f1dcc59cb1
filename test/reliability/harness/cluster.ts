// A dev control plane (in the test process) serving the example bookshop manifests plus the attack
// suite's own workloads, each pod on its own loopback address and a free port, and the variables each
// child service is started with, as `inmesh env` gives them.
import { cp, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { type ControlPlane, startControlPlane } from "@inmesh/control-plane";
import { freeLoopbackPort } from "@inmesh/testing/ports";
import { ROOT } from "./child.js";

export const NAMESPACE = "bookshop";
const CERTIFICATE_LIFETIME_MS = 60 * 60 * 1000;

/** The attacked SDK service: a plain `createMeshServer` handler (test/reliability/servers/sdk-server.mjs). */
export const TARGET_POD = "target-0";
/** A second SDK service (same routes and policy), for a variant running next to the first. */
export const SECOND_TARGET_POD = "target-1";
/** The legitimate client: its requests must keep succeeding while the others attack. */
export const CLIENT_POD = "client-0";
/** A meshed workload with an identity of its own, for spoofing from an mTLS peer. */
export const INTRUDER_POD = "intruder-0";

/** The inbound route the ReDoS attack aims at (RE2 and Rust regex read it alike). */
export const HOSTILE_ROUTE_REGEX = "/api/([a-z0-9]+/?)+$";

export const TARGET_SERVICE = `target.${NAMESPACE}.svc.cluster.local`;
/** The Service of each SDK pod. */
export const SERVICE_OF_POD: Readonly<Record<string, string>> = {
  [TARGET_POD]: TARGET_SERVICE,
  [SECOND_TARGET_POD]: `target-second.${NAMESPACE}.svc.cluster.local`,
};

/**
 * The suite's workloads, next to the examples. target serves HTTP/1 and HTTP/2 (protocol detection)
 * to anyone, plaintext included, so every attack reaches the application; its routes include the
 * hostile regular expression on both sides (inbound HTTPRoute and outbound HTTPRoute on its Service).
 */
const ATTACK_MANIFESTS = `
apiVersion: v1
kind: Pod
metadata:
  name: ${TARGET_POD}
  namespace: ${NAMESPACE}
  labels: { app: target, role: attacked, linkerd.io/control-plane-ns: linkerd }
spec:
  serviceAccountName: target
  containers:
    - name: app
      ports: [{ name: http, containerPort: 7090 }]
status: { podIP: 127.0.0.10 }
---
apiVersion: v1
kind: Pod
metadata:
  name: ${SECOND_TARGET_POD}
  namespace: ${NAMESPACE}
  labels: { app: target-second, role: attacked, linkerd.io/control-plane-ns: linkerd }
spec:
  serviceAccountName: target
  containers:
    - name: app
      ports: [{ name: http, containerPort: 7091 }]
status: { podIP: 127.0.0.13 }
---
apiVersion: v1
kind: Pod
metadata:
  name: ${CLIENT_POD}
  namespace: ${NAMESPACE}
  labels: { app: client, linkerd.io/control-plane-ns: linkerd }
spec:
  serviceAccountName: client
  containers:
    - name: app
status: { podIP: 127.0.0.11 }
---
apiVersion: v1
kind: Pod
metadata:
  name: ${INTRUDER_POD}
  namespace: ${NAMESPACE}
  labels: { app: intruder, linkerd.io/control-plane-ns: linkerd }
spec:
  serviceAccountName: intruder
  containers:
    - name: app
status: { podIP: 127.0.0.12 }
---
apiVersion: v1
kind: Service
metadata:
  name: target
  namespace: ${NAMESPACE}
spec:
  selector: { app: target }
  ports: [{ name: http, port: 80, targetPort: http }]
---
apiVersion: v1
kind: Service
metadata:
  name: target-second
  namespace: ${NAMESPACE}
spec:
  selector: { app: target-second }
  ports: [{ name: http, port: 80, targetPort: http }]
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata:
  name: target-http
  namespace: ${NAMESPACE}
spec:
  podSelector:
    matchLabels: { role: attacked }
  port: http
  proxyProtocol: unknown
---
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata:
  name: target-api
  namespace: ${NAMESPACE}
spec:
  parentRefs:
    - { group: policy.linkerd.io, kind: Server, name: target-http }
  rules:
    - matches:
        - { path: { type: RegularExpression, value: "${HOSTILE_ROUTE_REGEX}" } }
---
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata:
  name: target-any
  namespace: ${NAMESPACE}
spec:
  parentRefs:
    - { group: policy.linkerd.io, kind: Server, name: target-http }
  rules:
    - matches:
        - { path: { type: PathPrefix, value: / } }
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: target-api-public
  namespace: ${NAMESPACE}
spec:
  targetRef: { group: policy.linkerd.io, kind: HTTPRoute, name: target-api }
  requiredAuthenticationRefs:
    - { group: policy.linkerd.io, kind: NetworkAuthentication, name: anywhere }
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: target-any-public
  namespace: ${NAMESPACE}
spec:
  targetRef: { group: policy.linkerd.io, kind: HTTPRoute, name: target-any }
  requiredAuthenticationRefs:
    - { group: policy.linkerd.io, kind: NetworkAuthentication, name: anywhere }
---
# Outbound: callers of the target Service match the same hostile expression before anything is sent.
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: target-outbound
  namespace: ${NAMESPACE}
spec:
  parentRefs:
    - { group: core, kind: Service, name: target, port: 80 }
  rules:
    - matches:
        - { path: { type: RegularExpression, value: "${HOSTILE_ROUTE_REGEX}" } }
    - matches:
        - { path: { type: PathPrefix, value: / } }
`;

export interface Pod {
  readonly ip: string;
  readonly port: number | undefined;
}

export interface Cluster {
  readonly controlPlane: ControlPlane;
  readonly pods: ReadonlyMap<string, Pod>;
  /** The pod's LINKERD2_PROXY_* variables (plus POD_NAME and its admin address) for a child service. */
  envFor(pod: string, extra?: Record<string, string>): Promise<Record<string, string>>;
  close(): Promise<void>;
}

/** Pods in a manifest file: name → podIP and first containerPort (the files are ours: plain regexes do). */
function podsOf(text: string): Map<string, { ip: string; port: number | undefined }> {
  const pods = new Map<string, { ip: string; port: number | undefined }>();
  for (const document of text.split(/^---$/m)) {
    if (!/^kind: Pod$/m.test(document)) continue;
    const name = /^ {2}name: (\S+)$/m.exec(document)?.[1];
    const ip = /podIP: ([\d.]+)/.exec(document)?.[1];
    const port = /containerPort: (\d+)/.exec(document)?.[1];
    if (name && ip) pods.set(name, { ip, port: port === undefined ? undefined : Number(port) });
  }
  return pods;
}

/** Gives each pod with a port a free one on its address, so runs never collide. */
function withFreePorts(text: string, ports: Map<number, number>): string {
  let result = text;
  for (const [from, to] of ports) result = result.replace(`containerPort: ${from}`, `containerPort: ${to}`);
  return result;
}

export async function startCluster(): Promise<Cluster> {
  const dir = await mkdtemp(path.join(tmpdir(), "inmesh-attack-"));
  const manifestsDir = path.join(dir, "manifests");
  await cp(path.join(ROOT, "examples/manifests"), manifestsDir, { recursive: true });
  await writeFile(path.join(manifestsDir, "90-attack.yaml"), ATTACK_MANIFESTS);

  const pods = new Map<string, Pod>();
  for (const file of ["10-pods.yaml", "90-attack.yaml"]) {
    const filePath = path.join(manifestsDir, file);
    const text = await readFile(filePath, "utf8");
    const remap = new Map<number, number>();
    for (const [name, pod] of podsOf(text)) {
      const port = pod.port === undefined ? undefined : await freeLoopbackPort(pod.ip);
      if (pod.port !== undefined && port !== undefined) remap.set(pod.port, port);
      pods.set(name, { ip: pod.ip, port });
    }
    await writeFile(filePath, withFreePorts(text, remap));
  }

  // Pods take the transport-header port from the control plane (4143 in a cluster). A port of this
  // worker's own, free on every pod address, keeps suites running side by side (and other checkouts'
  // runs) from binding the same address.
  const proxyInboundPort = await freeLoopbackPort([...new Set([...pods.values()].map((pod) => pod.ip))]);
  const controlPlane = await startControlPlane({
    manifestsDir,
    cluster: { proxyInboundPort },
    stateDir: path.join(dir, "state"),
    ports: { identity: 0, destination: 0, policy: 0 },
    certificateLifetimeMs: CERTIFICATE_LIFETIME_MS,
    watch: false,
  });

  return {
    controlPlane,
    pods,
    async envFor(pod, extra = {}) {
      const info = pods.get(pod);
      if (!info) throw new Error(`no pod ${pod} in the manifests`);
      const { variables } = await controlPlane.writeEnv(pod, { namespace: NAMESPACE });
      return {
        ...variables,
        POD_NAME: pod,
        LINKERD2_PROXY_ADMIN_LISTEN_ADDR: `${info.ip}:${await freeLoopbackPort(info.ip)}`,
        ...extra,
      };
    },
    async close() {
      await controlPlane.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
