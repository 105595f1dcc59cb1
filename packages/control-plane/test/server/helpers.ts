import { webcrypto, X509Certificate } from "node:crypto";
import {
  type ChannelCredentials,
  type ClientReadableStream,
  credentials,
  type ServiceError,
} from "@grpc/grpc-js";
import type { ControlPlane } from "@inmesh/control-plane";
import * as x509 from "@peculiar/x509";

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

export const NS = "default";
export const identityOf = (sa: string, ns = NS) =>
  `${sa}.${ns}.serviceaccount.identity.linkerd.cluster.local`;

export interface PodSpec {
  readonly name: string;
  readonly ip: string;
  readonly app: string;
  readonly sa: string;
  readonly port?: number;
  readonly namespace?: string;
}

export function podYaml(pod: PodSpec): string {
  return `apiVersion: v1
kind: Pod
metadata:
  name: ${pod.name}
  namespace: ${pod.namespace ?? NS}
  labels:
    app: ${pod.app}
    linkerd.io/control-plane-ns: linkerd
spec:
  serviceAccountName: ${pod.sa}
  containers:
    - name: main
      image: app
      ports:
        - name: http
          containerPort: ${pod.port ?? 8080}
status:
  podIP: ${pod.ip}
`;
}

export function serviceYaml(name: string, app: string, port = 80, targetPort = 8080): string {
  return `apiVersion: v1
kind: Service
metadata:
  name: ${name}
  namespace: ${NS}
spec:
  selector:
    app: ${app}
  ports:
    - name: http
      port: ${port}
      targetPort: ${targetPort}
`;
}

export function serverYaml(
  name: string,
  app: string,
  port: number | string,
  proxyProtocol = "HTTP/1",
): string {
  return `apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata:
  name: ${name}
  namespace: ${NS}
spec:
  podSelector:
    matchLabels:
      app: ${app}
  port: ${port}
  proxyProtocol: ${proxyProtocol}
`;
}

export const WEB_1: PodSpec = { name: "web-1", ip: "10.1.0.1", app: "web", sa: "web" };
export const WEB_2: PodSpec = { name: "web-2", ip: "10.1.0.2", app: "web", sa: "web" };
export const CLIENT: PodSpec = { name: "client-1", ip: "10.1.0.9", app: "client", sa: "client" };

export const WEB_AUTHORITY = `web.${NS}.svc.cluster.local:80`;
export const workloadOf = (pod: string, ns = NS) => JSON.stringify({ ns, pod });

/** One stream read at a time, each bounded, so a missing message fails the test instead of hanging it. */
export interface StreamReader<T> {
  next(timeoutMs?: number): Promise<T>;
  /** Resolves to the status error that ended the stream (or undefined for OK). */
  ended(timeoutMs?: number): Promise<ServiceError | undefined>;
  /** Messages received and not yet read. */
  readonly pending: number;
  cancel(): void;
}

export function readStream<T>(stream: ClientReadableStream<T>): StreamReader<T> {
  const queue: T[] = [];
  let failure: ServiceError | undefined;
  let done = false;
  let wake: (() => void) | undefined;
  stream.on("data", (message: T) => {
    queue.push(message);
    wake?.();
  });
  stream.on("error", (error: ServiceError) => {
    failure = error;
    done = true;
    wake?.();
  });
  stream.on("end", () => {
    done = true;
    wake?.();
  });
  const wait = (timeoutMs: number, what: string) =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        wake = undefined;
        reject(new Error(`no ${what} within ${timeoutMs} ms`));
      }, timeoutMs);
      wake = () => {
        clearTimeout(timer);
        wake = undefined;
        resolve();
      };
    });
  return {
    async next(timeoutMs = 5000) {
      if (queue.length === 0 && !done) await wait(timeoutMs, "stream message");
      const message = queue.shift();
      if (message !== undefined) return message;
      throw failure ?? new Error("stream ended");
    },
    async ended(timeoutMs = 5000) {
      while (!done) {
        queue.length = 0;
        await wait(timeoutMs, "stream end");
      }
      return failure;
    },
    get pending() {
      return queue.length;
    },
    cancel() {
      stream.cancel();
    },
  };
}

/** Calls a grpc-js unary method and returns either its response or its status error. */
export function unary<Res>(
  invoke: (callback: (error: ServiceError | null, response: Res) => void) => unknown,
): Promise<{ response: Res; error?: undefined } | { response?: undefined; error: ServiceError }> {
  return new Promise((resolve) => {
    invoke((error, response) => resolve(error ? { error } : { response }));
  });
}

/** Server identity check as the contract asks: the expected name among the DNS SANs, no hostname matching. */
export function expectServerName(expected: string) {
  return (_host: string, cert: { raw?: Buffer }) => {
    if (cert.raw === undefined) return new Error("no server certificate");
    const names = new X509Certificate(cert.raw).subjectAltName?.split(", ") ?? [];
    return names.includes(`DNS:${expected}`)
      ? undefined
      : new Error(`server is not ${expected}: ${names.join(",")}`);
  };
}

export interface TlsClient {
  readonly credentials: ChannelCredentials;
  /** Client options: the SNI and verified name must be the service's identity. */
  readonly options: Record<string, string | number>;
}

/** TLS to a control-plane service; with `clientIdentity` the client presents a certificate from the CA (mTLS). */
export async function tlsClient(
  controlPlane: ControlPlane,
  serverName: string,
  clientIdentity?: string,
): Promise<TlsClient> {
  const anchors = Buffer.from(controlPlane.trustAnchorsPem);
  let creds: ChannelCredentials;
  if (clientIdentity === undefined) {
    creds = credentials.createSsl(anchors, null, null, { checkServerIdentity: expectServerName(serverName) });
  } else {
    const issued = await controlPlane.certificateAuthority.issueCredentials(clientIdentity);
    creds = credentials.createSsl(
      anchors,
      Buffer.from(issued.privateKeyPem),
      Buffer.from(issued.certificateChainPem),
      {
        checkServerIdentity: expectServerName(serverName),
      },
    );
  }
  return { credentials: creds, options: { "grpc.ssl_target_name_override": serverName } };
}

export const plaintext = () => credentials.createInsecure();

/** A DER CSR as linkerd's proxy-identity builds it (CN and one DNS SAN = identity), or a variant of it. */
export async function makeCsr(options: {
  commonName?: string;
  dnsNames?: string[];
  uris?: string[];
}): Promise<Buffer> {
  const keys = (await webcrypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
    "sign",
    "verify",
  ])) as webcrypto.CryptoKeyPair;
  const names = [
    ...(options.dnsNames ?? []).map((value) => ({ type: "dns" as const, value })),
    ...(options.uris ?? []).map((value) => ({ type: "url" as const, value })),
  ];
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    ...(options.commonName === undefined ? {} : { name: `CN=${options.commonName}` }),
    keys,
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
    extensions: names.length === 0 ? [] : [new x509.SubjectAlternativeNameExtension(names)],
  });
  return Buffer.from(csr.rawData);
}

export function linkerdCsr(identity: string): Promise<Buffer> {
  return makeCsr({ commonName: identity, dnsNames: [identity] });
}

/** Polls `check` until it returns true (bounded), for things that happen on another process's schedule. */
export async function eventually(
  check: () => boolean | Promise<boolean>,
  timeoutMs = 5000,
  what = "condition",
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`${what} not reached within ${timeoutMs} ms`);
}
