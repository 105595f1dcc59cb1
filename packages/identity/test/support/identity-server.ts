import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { type Server as NetServer, connect as netConnect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer as createTlsServer } from "node:tls";
import { Server, ServerCredentials, type ServerUnaryCall, type sendUnaryData, status } from "@grpc/grpc-js";
import { identity, timestampFromMs } from "@inmesh/proto";
import {
  type CertificateAuthority,
  CsrRejectedError,
  createCertificateAuthority,
} from "../../../control-plane/src/ca.js";

export const TRUST_DOMAIN = "cluster.local";
export const WORKLOAD = "default.emojivoto.serviceaccount.identity.linkerd.cluster.local";
export const IDENTITY_SERVICE_NAME = "linkerd-identity.linkerd.serviceaccount.identity.linkerd.cluster.local";
export const TOKEN = "token-for-default.emojivoto";

export interface IdentityServerOptions {
  readonly ca: CertificateAuthority;
  /** token → identity it may request. @default { TOKEN: WORKLOAD } */
  readonly tokens?: ReadonlyMap<string, string>;
  /** Leaf lifetime. @default 24 h */
  readonly lifetimeMs?: number;
  /** Serve TLS with a certificate for IDENTITY_SERVICE_NAME issued by `ca` (grpc-js negotiates ALPN h2). */
  readonly tls?: boolean;
}

export interface IdentityServer {
  readonly port: number;
  /** `127.0.0.1:<port>` */
  readonly address: string;
  /** Every token the server was sent, in order. */
  readonly tokensSeen: string[];
  lifetimeMs: number;
  /** How far the issuer's clock is ahead of ours (clock-skew tests). */
  clockOffsetMs: number;
  /** Replaces answers (for hostile-response tests); undefined restores the CA. */
  respond: ((request: identity.CertifyRequest) => identity.CertifyResponse) | undefined;
  /** Stops listening (connections refused) until start(). */
  stop(): Promise<void>;
  /** Listens again on the same port. */
  start(): Promise<void>;
  close(): Promise<void>;
}

/** A Linkerd identity controller double: grpc-js, `identity.IdentityService`, the dev CA, a token check. */
export async function startIdentityServer(options: IdentityServerOptions): Promise<IdentityServer> {
  const tokens = options.tokens ?? new Map([[TOKEN, WORKLOAD]]);
  const credentials = options.tls
    ? await (async () => {
        const issued = await options.ca.issueCredentials(IDENTITY_SERVICE_NAME);
        return ServerCredentials.createSsl(
          null,
          [
            {
              private_key: Buffer.from(issued.privateKeyPem),
              cert_chain: Buffer.from(issued.certificateChainPem),
            },
          ],
          false,
        );
      })()
    : ServerCredentials.createInsecure();
  let server: Server | undefined;
  let port = 0;
  const state: IdentityServer = {
    port: 0,
    address: "",
    tokensSeen: [],
    lifetimeMs: options.lifetimeMs ?? 86_400_000,
    clockOffsetMs: 0,
    respond: undefined,
    async stop() {
      const current = server;
      server = undefined;
      current?.forceShutdown();
    },
    async start() {
      if (server) return;
      const next = new Server();
      next.addService(identity.IdentityService, {
        certify(
          call: ServerUnaryCall<identity.CertifyRequest, identity.CertifyResponse>,
          done: sendUnaryData<identity.CertifyResponse>,
        ) {
          const request = call.request;
          const token = request.token.toString();
          state.tokensSeen.push(token);
          if (
            request.identity === "" ||
            request.token.length === 0 ||
            request.certificateSigningRequest.length === 0
          ) {
            done({ code: status.INVALID_ARGUMENT, details: "identity, token and csr are required" });
            return;
          }
          if (tokens.get(token) !== request.identity) {
            done({
              code: status.FAILED_PRECONDITION,
              details: "token does not authenticate the requested identity",
            });
            return;
          }
          if (state.respond) {
            done(null, state.respond(request));
            return;
          }
          options.ca
            .issue(request.certificateSigningRequest, request.identity, {
              lifetimeMs: state.lifetimeMs,
              nowMs: Date.now() + state.clockOffsetMs,
            })
            .then((issued) =>
              done(null, {
                leafCertificate: issued.leafDer,
                intermediateCertificates: [...issued.chainDer],
                validUntil: timestampFromMs(issued.validUntilMs),
              }),
            )
            .catch((error: unknown) =>
              done({
                code: error instanceof CsrRejectedError ? status.FAILED_PRECONDITION : status.INTERNAL,
                details: (error as Error).message,
              }),
            );
        },
      });
      port = await new Promise<number>((resolve, reject) =>
        next.bindAsync(`127.0.0.1:${port}`, credentials, (error, bound) =>
          error ? reject(error) : resolve(bound),
        ),
      );
      server = next;
      Object.assign(state, { port, address: `127.0.0.1:${port}` });
    },
    async close() {
      await state.stop();
    },
  };
  await state.start();
  return state;
}

/**
 * A TLS terminator in front of a plaintext server, negotiating no ALPN, as the identity pod's
 * linkerd-proxy does (rustls with no ALPN on app ports, then plaintext gRPC to the controller).
 */
export async function startTlsTerminator(options: {
  readonly ca: CertificateAuthority;
  readonly serverName: string;
  readonly backendPort: number;
}): Promise<{ port: number; close(): Promise<void> }> {
  const issued = await options.ca.issueCredentials(options.serverName);
  const sockets = new Set<Socket>();
  const server = createTlsServer(
    { key: issued.privateKeyPem, cert: issued.certificateChainPem, minVersion: "TLSv1.3" },
    (tlsSocket) => {
      const backend = netConnect(options.backendPort, "127.0.0.1");
      sockets.add(backend);
      sockets.add(tlsSocket);
      tlsSocket.pipe(backend).pipe(tlsSocket);
      const destroy = () => {
        tlsSocket.destroy();
        backend.destroy();
      };
      tlsSocket.on("error", destroy).on("close", destroy);
      backend.on("error", destroy).on("close", destroy);
    },
  );
  server.on("connection", (socket: Socket) => sockets.add(socket));
  await listen(server);
  return {
    port: portOf(server),
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

export function listen(server: NetServer): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
}

export function portOf(server: NetServer): number {
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("server is not listening on TCP");
  return address.port;
}

export async function createTestCa(options: Parameters<typeof createCertificateAuthority>[0] = {}) {
  return createCertificateAuthority({ trustDomain: TRUST_DOMAIN, ...options });
}

/** A scratch directory removed by the returned cleanup. */
export async function scratchDir(): Promise<{
  path: string;
  write(name: string, content: string | Uint8Array): Promise<string>;
  remove(): Promise<void>;
}> {
  const path = await mkdtemp(join(tmpdir(), "inmesh-identity-"));
  return {
    path,
    async write(name, content) {
      const file = join(path, name);
      await writeFile(file, content, { mode: 0o600 });
      return file;
    },
    remove: () => rm(path, { recursive: true, force: true }),
  };
}

export const OPENSSL = "/usr/bin/openssl";

/** Runs the openssl CLI; resolves with exit code and output (never rejects on a non-zero exit). */
export function openssl(
  args: readonly string[],
  options: { input?: string | Uint8Array; timeoutMs?: number } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      OPENSSL,
      [...args],
      { timeout: options.timeoutMs ?? 15_000, encoding: "buffer", maxBuffer: 4 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === "number" ? error.code : -1) : 0;
        if (error && typeof error.code !== "number") {
          reject(error);
          return;
        }
        resolve({ code, stdout: stdout.toString("latin1"), stderr: stderr.toString("latin1") });
      },
    );
    // openssl may exit before reading its input; that is not an error here.
    child.stdin?.on("error", () => undefined);
    child.stdin?.end(options.input ?? "");
  });
}
