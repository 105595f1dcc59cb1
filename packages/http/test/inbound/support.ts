/** Test helpers for the inbound side: a dev control plane, identities issued by its CA, raw clients. */
import http2, {
  type ClientHttp2Session,
  type IncomingHttpHeaders,
  type OutgoingHttpHeaders,
} from "node:http2";
import net, { type Socket } from "node:net";
import tls, { type TLSSocket } from "node:tls";
import { credentials } from "@grpc/grpc-js";
import { type ControlPlane, type ManifestFile, startControlPlane } from "@inmesh/control-plane";
import { serviceAccountIdentity } from "@inmesh/core";
import { createIdentityProvider, type IdentityProvider } from "@inmesh/identity";
import { createPolicyWatcher, type PolicyWatcher } from "@inmesh/policy";
import { inbound, ipNetworkFromString } from "@inmesh/proto";

export const NS = "default";
export const identityOf = (sa: string) => serviceAccountIdentity(sa, NS);

export interface PodSpec {
  readonly name: string;
  readonly sa: string;
  readonly ip: string;
  readonly port?: number;
  readonly annotations?: Readonly<Record<string, string>>;
  readonly probes?: readonly string[];
  readonly labels?: Readonly<Record<string, string>>;
}

export function podYaml(pod: PodSpec): string {
  const annotations = Object.entries(pod.annotations ?? {})
    .map(([key, value]) => `    ${key}: "${value}"`)
    .join("\n");
  const labels = Object.entries({ app: pod.name, ...(pod.labels ?? {}) })
    .map(([key, value]) => `    ${key}: ${value}`)
    .join("\n");
  const port = pod.port ?? 8080;
  const probes = (pod.probes ?? [])
    .map(
      (path, index) => `      ${index === 0 ? "livenessProbe" : "readinessProbe"}:
        httpGet:
          path: ${path}
          port: ${port}`,
    )
    .join("\n");
  return `apiVersion: v1
kind: Pod
metadata:
  name: ${pod.name}
  namespace: ${NS}
  labels:
    linkerd.io/control-plane-ns: linkerd
${labels}
${annotations === "" ? "" : `  annotations:\n${annotations}`}
spec:
  serviceAccountName: ${pod.sa}
  containers:
    - name: main
      image: app
      ports:
        - name: http
          containerPort: ${port}
${probes}
status:
  podIP: ${pod.ip}
`;
}

export async function startTestControlPlane(
  manifests: readonly ManifestFile[],
  cluster: Record<string, unknown> = {},
): Promise<ControlPlane> {
  return startControlPlane({
    manifests,
    ports: { identity: 0, destination: 0, policy: 0 },
    cluster: { clusterNetworks: ["10.0.0.0/8", "127.0.0.0/8"], ...cluster },
    watch: false,
  });
}

/** A real identity provider for a pod, obtaining its certificate from the control plane's identity service. */
export async function podIdentity(cp: ControlPlane, pod: string, sa: string): Promise<IdentityProvider> {
  const identity = createIdentityProvider({
    localName: identityOf(sa),
    trustAnchorsPem: cp.trustAnchorsPem,
    identityServiceAddress: cp.addresses.identity,
    identityServiceName: cp.serverNames.identity,
    readToken: () => cp.tokenFor(NS, pod),
  });
  await identity.ready({ signal: AbortSignal.timeout(10_000) });
  return identity;
}

export interface ClientCredentials {
  readonly key: string;
  readonly cert: string;
  readonly ca: string;
}

/** A client certificate issued by the control plane's CA for a service account. */
export async function clientCredentials(cp: ControlPlane, sa: string): Promise<ClientCredentials> {
  const issued = await cp.certificateAuthority.issueCredentials(identityOf(sa));
  return { key: issued.privateKeyPem, cert: issued.certificateChainPem, ca: cp.trustAnchorsPem };
}

// ---------- policies built by hand (unit tests) ----------

export type AuthnSpec = "unauthenticated" | "tls-unauthenticated" | { identities: string[] };

export function authz(name: string, authn: AuthnSpec, networks = ["0.0.0.0/0", "::/0"]): inbound.Authz {
  let authentication: inbound.Authn;
  if (authn === "unauthenticated") authentication = { permit: { $case: "unauthenticated", value: {} } };
  else if (authn === "tls-unauthenticated") {
    authentication = {
      permit: { $case: "meshTLS", value: { clients: { $case: "unauthenticated", value: {} } } },
    };
  } else {
    authentication = {
      permit: {
        $case: "meshTLS",
        value: {
          clients: {
            $case: "identities",
            value: { identities: authn.identities.map((n) => ({ name: n })), suffixes: [] },
          },
        },
      },
    };
  }
  return inbound.Authz.fromPartial({
    networks: networks.map((n) => ({ net: ipNetworkFromString(n), except: [] })),
    authentication,
    metadata: {
      kind: { $case: "resource", value: { group: "policy.linkerd.io", kind: "authorizationpolicy", name } },
    },
  });
}

export function httpRoute(
  name: string,
  pathPrefix: string,
  authorizations: inbound.Authz[] = [],
): inbound.HttpRoute {
  return inbound.HttpRoute.fromPartial({
    metadata: { kind: { $case: "resource", value: { group: "policy.linkerd.io", kind: "HTTPRoute", name } } },
    hosts: [],
    authorizations,
    rules: [
      {
        matches: [{ path: { kind: { $case: "prefix", value: pathPrefix } }, headers: [], queryParams: [] }],
        filters: [],
      },
    ],
  });
}

export function serverMessage(options: {
  authorizations: inbound.Authz[];
  routes?: inbound.HttpRoute[];
  protocol?: "detect" | "opaque" | "http1" | "http2";
  name?: string;
}): inbound.Server {
  const routes = options.routes ?? [];
  const kind = options.protocol ?? "detect";
  const protocol: inbound.ProxyProtocol =
    kind === "detect"
      ? {
          kind: {
            $case: "detect",
            value: { timeout: { seconds: 10n, nanos: 0 }, httpRoutes: routes, httpLocalRateLimit: undefined },
          },
        }
      : kind === "opaque"
        ? { kind: { $case: "opaque", value: {} } }
        : kind === "http1"
          ? { kind: { $case: "http1", value: { routes, localRateLimit: undefined } } }
          : { kind: { $case: "http2", value: { routes, localRateLimit: undefined } } };
  return {
    protocol,
    serverIps: [],
    authorizations: options.authorizations,
    labels: { group: "policy.linkerd.io", kind: "server", name: options.name ?? "foo-http" },
  };
}

// ---------- clients ----------

export interface RawResponse {
  readonly status: number;
  readonly headers: Record<string, string[]>;
  readonly body: string;
}

/** Bytes-level HTTP/1 exchange (so header case and duplicates are exactly what the test wrote). */
export function rawHttp1(
  socket: Socket | TLSSocket,
  request: string,
  timeoutMs = 5000,
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error("raw HTTP/1 exchange timed out"));
    }, timeoutMs);
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    socket.on("close", () => {
      clearTimeout(timer);
      const text = Buffer.concat(chunks).toString("latin1");
      const split = text.indexOf("\r\n\r\n");
      if (split < 0) {
        reject(new Error(`no HTTP response (${JSON.stringify(text.slice(0, 80))})`));
        return;
      }
      const [statusLine = "", ...lines] = text.slice(0, split).split("\r\n");
      const headers: Record<string, string[]> = {};
      for (const line of lines) {
        const colon = line.indexOf(":");
        const name = line.slice(0, colon).trim().toLowerCase();
        const values = headers[name] ?? [];
        values.push(line.slice(colon + 1).trim());
        headers[name] = values;
      }
      let body = text.slice(split + 4);
      if (headers["transfer-encoding"]?.[0] === "chunked") body = dechunk(body);
      resolve({ status: Number(statusLine.split(" ")[1]), headers, body });
    });
    const send = () => socket.write(request);
    if ((socket as TLSSocket).encrypted && !(socket as TLSSocket).getPeerFinished?.())
      socket.once("secureConnect", send);
    else if (socket.connecting) socket.once("connect", send);
    else send();
  });
}

function dechunk(body: string): string {
  let out = "";
  let rest = body;
  for (;;) {
    const line = rest.indexOf("\r\n");
    if (line < 0) return out;
    const size = Number.parseInt(rest.slice(0, line), 16);
    if (!(size > 0)) return out;
    out += rest.slice(line + 2, line + 2 + size);
    rest = rest.slice(line + 2 + size + 2);
  }
}

export interface ConnectTarget {
  readonly port: number;
  /** Source address; anything but 127.0.0.1 escapes Linkerd's implicit localhost authorization. */
  readonly localAddress?: string;
}

export function plainSocket(target: ConnectTarget): Socket {
  return net.connect({
    host: "127.0.0.1",
    port: target.port,
    localAddress: target.localAddress ?? "127.0.0.2",
  });
}

/** Mesh TLS as a Linkerd client sends it: SNI = the server's identity, no ALPN, optional client certificate. */
export function meshTlsSocket(
  target: ConnectTarget,
  serverIdentity: string,
  anchorsPem: string,
  client?: ClientCredentials,
  alpn?: string[],
): TLSSocket {
  return tls.connect({
    socket: plainSocket(target),
    servername: serverIdentity,
    ca: anchorsPem,
    minVersion: "TLSv1.3",
    checkServerIdentity: () => undefined,
    ...(client === undefined ? {} : { key: client.key, cert: client.cert }),
    ...(alpn === undefined ? {} : { ALPNProtocols: alpn }),
  });
}

export interface H2Response {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
  readonly trailers: IncomingHttpHeaders | undefined;
  /** The response ended with its HEADERS frame (trailers-only). */
  readonly headersOnly: boolean;
}

/** One prior-knowledge HTTP/2 session over a socket we made (TLS without ALPN, or plaintext). */
export function h2Session(socket: Socket | TLSSocket, authority: string): ClientHttp2Session {
  const session = http2.connect(authority, { createConnection: () => socket });
  session.on("error", () => undefined);
  return session;
}

export function h2Request(
  session: ClientHttp2Session,
  headers: OutgoingHttpHeaders,
  body?: string,
  timeoutMs = 5000,
): Promise<H2Response> {
  return new Promise((resolve, reject) => {
    const stream = session.request(headers, { endStream: body === undefined });
    const chunks: Buffer[] = [];
    let responseHeaders: IncomingHttpHeaders = {};
    let trailers: IncomingHttpHeaders | undefined;
    let headersOnly = false;
    const timer = setTimeout(() => {
      stream.close();
      reject(new Error("HTTP/2 request timed out"));
    }, timeoutMs);
    stream.on("response", (h, flags) => {
      responseHeaders = h;
      headersOnly = (flags & http2.constants.NGHTTP2_FLAG_END_STREAM) !== 0;
    });
    stream.on("trailers", (t) => {
      trailers = t;
    });
    stream.on("data", (chunk: Buffer) => chunks.push(chunk));
    stream.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    stream.on("close", () => {
      clearTimeout(timer);
      resolve({
        status: Number(responseHeaders[":status"]),
        headers: responseHeaders,
        body: Buffer.concat(chunks).toString(),
        trailers,
        headersOnly,
      });
    });
    if (body !== undefined) stream.end(body);
  });
}

/** Resolves when the socket closes; reports whether any byte arrived first. */
export function closedWithoutBytes(
  socket: Socket,
  write?: Buffer | string,
  timeoutMs = 5000,
): Promise<boolean> {
  return new Promise((resolve, reject) => {
    let received = 0;
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error("socket was not closed"));
    }, timeoutMs);
    socket.on("data", (chunk: Buffer) => {
      received += chunk.byteLength;
    });
    socket.on("error", () => undefined);
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(received === 0);
    });
    if (write !== undefined) {
      if (socket.connecting) socket.once("connect", () => socket.write(write));
      else socket.write(write);
    }
  });
}

/** Polls until `check` holds (bounded), for things that happen on another component's schedule. */
export async function eventually(
  check: () => boolean | Promise<boolean>,
  timeoutMs = 5000,
  what = "condition",
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`${what} not reached within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * A TCP relay on 127.0.0.1 whose upstream connections come from 127.0.0.2, for clients that cannot pick
 * their source address (grpc-js, curl to TLS): Linkerd's implicit localhost authorization covers only
 * 127.0.0.1/32 and ::1/128, so denials can only be observed from another address.
 */
export async function startRelay(targetPort: number): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = net.createServer((downstream) => {
    const upstream = net.connect({ host: "127.0.0.1", port: targetPort, localAddress: "127.0.0.2" });
    for (const socket of [downstream, upstream]) {
      sockets.add(socket);
      socket.on("close", () => sockets.delete(socket));
      socket.on("error", () => {
        downstream.destroy();
        upstream.destroy();
      });
    }
    downstream.pipe(upstream).pipe(downstream);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** A policy watcher for a pod of the control plane (plaintext to the loopback policy service). */
export function watchPodPolicy(
  cp: ControlPlane,
  pod: string,
  ports: readonly number[] = [8080],
): { watcher: PolicyWatcher; close(): Promise<void> } {
  const client = new inbound.InboundServerPoliciesClient(cp.addresses.policy, credentials.createInsecure());
  const watcher = createPolicyWatcher({ client, workload: JSON.stringify({ ns: NS, pod }), ports });
  return {
    watcher,
    async close() {
      await watcher.close();
      client.close();
    },
  };
}
