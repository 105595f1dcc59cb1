import type { Duplex } from "node:stream";
import { experimental, type Server, ServerCredentials, type ServerInterceptor } from "@grpc/grpc-js";
import type { PeerIdentity } from "@inmesh/core";
import {
  type ConnectionRegistry,
  createAuthorizationInterceptor,
  createConnectionRegistry,
  invalidArg,
  type MeshGrpcPolicyInput,
  type MeshGrpcServerIdentity,
} from "./authorization.js";

export interface MeshServerCredentialsOptions {
  /** The workload identity (an `IdentityProvider`). */
  identity: MeshGrpcServerIdentity;
  /** The port's inbound policy: a `PolicyWatcher`, or one compiled policy. */
  policy: MeshGrpcPolicyInput;
  /** The port whose policy applies (the container port the policy controller knows). */
  port: number;
  /**
   * grpc-js terminates TLS itself (for `server.bindAsync`). Set false for connections whose TLS
   * `createMeshServer` already terminated (see `createMeshConnectionInjector`).
   * @default true
   */
  terminateTls?: boolean;
  /** How long a call is held for the port's first policy before being denied (R4). @default 1000 */
  initialPolicyWaitMs?: number;
}

/**
 * Server TLS that follows identity rotation without rebuilding anything: the certificate comes from the
 * identity's SNICallback (current generation, TLS 1.3 only, SNI must be our identity), client
 * certificates are requested but optional and checked by OpenSSL against the trust anchors. grpc-js's
 * certificate-provider credentials could not be used: each rotation calls `setSecureContext` with only
 * `ca`/`cert`/`key`, which silently drops `minVersion: "TLSv1.3"`.
 */
class MeshTlsServerCredentials extends ServerCredentials {
  constructor(identity: MeshGrpcServerIdentity) {
    const options = identity.tlsServerOptions();
    super({ ...options, minVersion: "TLSv1.3" }, { minVersion: "TLSv1.3" });
  }

  override _equals(other: ServerCredentials): boolean {
    return other === this;
  }
}

const registries = new WeakMap<ServerCredentials, ConnectionRegistry>();

function resolve(options: MeshServerCredentialsOptions, where: string) {
  if (typeof options !== "object" || options === null) throw invalidArg(`${where}: options are required`);
  const identity = options.identity;
  if (typeof identity?.tlsServerOptions !== "function" || typeof identity.peerIdentity !== "function") {
    throw invalidArg(`${where}: identity must be an IdentityProvider`);
  }
  const policy = options.policy as Partial<{ policyFor: unknown; authorizeHttp: unknown }> | undefined;
  if (typeof policy?.policyFor !== "function" && typeof policy?.authorizeHttp !== "function") {
    throw invalidArg(`${where}: policy must be a PolicyWatcher or a compiled policy`);
  }
  const port = options.port;
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw invalidArg(`${where}: port must be an integer 1-65535, got ${String(port)}`);
  }
  const initialPolicyWaitMs = options.initialPolicyWaitMs ?? 1000;
  if (!Number.isFinite(initialPolicyWaitMs) || initialPolicyWaitMs < 0) {
    throw invalidArg(`${where}: initialPolicyWaitMs must be a non-negative number`);
  }
  return { identity, port, initialPolicyWaitMs, terminateTls: options.terminateTls !== false };
}

/**
 * grpc-js server credentials that carry Linkerd authorization: an interceptor that runs before any
 * handler or user interceptor and refuses calls the port's policy does not allow (PERMISSION_DENIED /
 * NOT_FOUND), over mesh TLS that follows identity rotation.
 *
 * With `server.bindAsync(address, credentials)` grpc-js terminates TLS, and node:http2 then requires ALPN
 * `h2`: grpc-js and most gRPC clients offer it, Linkerd sidecars (no ALPN) cannot connect. To serve
 * sidecars, plaintext and the transport-header port, let `createMeshServer` accept connections and hand
 * them over with `createMeshConnectionInjector`.
 */
export function createMeshServerCredentials(options: MeshServerCredentialsOptions): ServerCredentials {
  const resolved = resolve(options, "createMeshServerCredentials");
  const registry = createConnectionRegistry();
  const interceptor: ServerInterceptor = createAuthorizationInterceptor({
    policy: options.policy,
    port: resolved.port,
    initialPolicyWaitMs: resolved.initialPolicyWaitMs,
    registry,
    tlsByGrpc: resolved.terminateTls,
  });
  const base = resolved.terminateTls
    ? new MeshTlsServerCredentials(resolved.identity)
    : ServerCredentials.createInsecure();
  const credentials = experimental.createServerCredentialsWithInterceptors(base, [interceptor]);
  registries.set(credentials, registry);
  return credentials;
}

export interface MeshConnectionInjector {
  /** Hands a connection over to the grpc-js server (fits `createMeshServer`'s `onHttp2Connection`). */
  injectConnection(socket: Duplex, info?: { readonly peer: PeerIdentity }): void;
  /** GOAWAY on every session, then cancels what is left after `graceMs`. */
  drain(graceMs: number): void;
  /** Stops serving injected connections. */
  destroy(): void;
}

export type MeshConnectionInjectorOptions = Omit<MeshServerCredentialsOptions, "terminateTls">;

/**
 * Serves connections accepted by `@inmesh/http`'s `createMeshServer` (TLS already terminated, peer
 * identity already verified, protocol already detected as HTTP/2) with a grpc-js server, authorizing
 * each call with the port's policy. The caller identity is computed once per connection.
 *
 * ```ts
 * const injector = createMeshConnectionInjector(grpcServer, { identity, policy, port: 8080 });
 * const mesh = createMeshServer({ identity, policy, port: 8080, onHttp2Connection: injector.injectConnection });
 * await mesh.listen();
 * ```
 */
export function createMeshConnectionInjector(
  server: Server,
  options: MeshConnectionInjectorOptions,
): MeshConnectionInjector {
  const resolved = resolve(options, "createMeshConnectionInjector");
  if (typeof (server as Partial<Server>)?.createConnectionInjector !== "function") {
    throw invalidArg("createMeshConnectionInjector: server must be a grpc-js Server (1.11 or later)");
  }
  const credentials = createMeshServerCredentials({ ...options, terminateTls: false });
  const registry = registries.get(credentials) as ConnectionRegistry;
  const injector = server.createConnectionInjector(credentials);
  const { identity } = resolved;
  return {
    injectConnection(socket, info) {
      registry.register(
        socket,
        info?.peer ?? identity.peerIdentity(socket as Parameters<typeof identity.peerIdentity>[0]),
      );
      injector.injectConnection(socket);
    },
    drain: (graceMs) => injector.drain(graceMs),
    destroy: () => injector.destroy(),
  };
}
