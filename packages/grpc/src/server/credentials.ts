import { constants, type Http2Server, type ServerHttp2Session, type ServerHttp2Stream } from "node:http2";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import { debuglog } from "node:util";
import { experimental, type Server, ServerCredentials, type ServerInterceptor } from "@grpc/grpc-js";
import { checkDuration, holdTickShape, type PeerIdentity } from "@inmesh/core";
import {
  closeEndedSession,
  closeOnlyAfterGoaway,
  createKeepAliveSweep,
  createResetBudgets,
  createStreamAdmission,
  ENHANCE_YOUR_CALM,
  GOAWAY_SEND_GRACE_MS,
  type KeepAliveSweep,
  type ResetBudgets,
  refuseSession,
  type SessionResetBudget,
} from "@inmesh/core/http2-abuse";
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

const debug = debuglog("mesh");

/**
 * Bytes read before a connection is handed over (protocol detection) reach nghttp2 in one synchronous
 * pass when the session starts, so a stream can already be reset (DATA beyond its content-length, DATA
 * after END_STREAM…) when its 'stream' event fires. grpc-js answers some streams synchronously in that
 * event (wrong content-type, unknown method), and `respond()` on a destroyed stream throws, which would
 * take the process down. Every 'stream' listener of the server is wrapped so a stream reaches them only
 * while it is alive, once the bytes that opened it were all read (a stream reset in the same read never
 * costs a call), and always has an error handler.
 */
function guardStreams(server: Http2Server, bounds: SessionBounds, injecting: InjectingConnection): void {
  const listeners = server.rawListeners("stream") as ((...args: unknown[]) => void)[];
  server.removeAllListeners("stream");
  const admission = createStreamAdmission();
  server.on(
    "stream",
    function guardedStream(this: Http2Server, stream: ServerHttp2Stream, ...rest: unknown[]) {
      stream.on("error", (error) => debug("grpc: injected stream error: %s", error.message));
      if (stream.destroyed || stream.closed) return;
      sessionStreamOpened(stream);
      admission.admit(stream, () => {
        for (const listener of listeners) Reflect.apply(listener, this, [stream, ...rest]);
      });
    },
  );
  const budgets = createResetBudgets(RESET_BUDGETS);
  const keepAlive = createKeepAliveSweep({
    intervalMs: bounds.keepAliveIntervalMs,
    timeoutMs: bounds.keepAliveTimeoutMs,
  });
  server.on("session", (session: ServerHttp2Session) =>
    boundSession(session, bounds, budgets, keepAlive, injecting.current),
  );
}

/** The connection being handed to grpc-js's HTTP/2 server (its 'session' event runs synchronously). */
interface InjectingConnection {
  current: { readonly socket: Duplex; readonly address: string | undefined } | undefined;
}

interface SessionBounds {
  readonly headersTimeoutMs: number;
  readonly idleTimeoutMs: number;
  readonly keepAliveIntervalMs: number;
  readonly keepAliveTimeoutMs: number;
}

interface SessionIdle {
  readonly bounds: SessionBounds;
  openStreams: number;
  timer: NodeJS.Timeout;
  readonly resets: SessionResetBudget;
  /**
   * The socket given to the session, destroyed if a refused session does not close by itself; let go
   * once it closed (see {@link boundSession}).
   */
  socket: Duplex | undefined;
  /** Set once a protocol error started the countdown to destroying `socket`. */
  graceTimer?: NodeJS.Timeout | undefined;
}

/** Rapid reset (CVE-2023-44487): the budgets `createMeshServer` applies to its own sessions. */
const RESET_BUDGETS = {
  sessionBurst: 200,
  sessionRefillPerSecond: 100,
  addressBurst: 1_000,
  addressRefillPerSecond: 500,
  maxAddresses: 4_096,
} as const;
/** How long a refused session may take to close before its socket is destroyed. */
const REFUSE_GRACE_MS = 1000;

function earlyReset(session: ServerHttp2Session, state: SessionIdle): void {
  if (state.resets.reset() || session.destroyed) return;
  debug("grpc: injected session reset too many streams");
  if (state.socket !== undefined) refuseSession(session, ENHANCE_YOUR_CALM, REFUSE_GRACE_MS, state.socket);
  else {
    session.goaway(ENHANCE_YOUR_CALM);
    session.destroy();
  }
}

const idleStates = new WeakMap<ServerHttp2Session, SessionIdle>();

/**
 * GOAWAY once `ms` pass; a session that cannot even close (nghttp2 stopped reading) is destroyed, and
 * so is its socket: node would wait for the socket to flush what it queued, which a client that stopped
 * reading never lets it do (R10's SETTINGS flood held its connections for the whole 60 s attack).
 */
function closeAfter(session: ServerHttp2Session, ms: number): NodeJS.Timeout {
  const timer = setTimeout(() => {
    session.close();
    setTimeout(
      () => {
        session.destroy();
        idleStates.get(session)?.socket?.destroy();
      },
      Math.min(ms, 1000),
    ).unref();
  }, ms);
  timer.unref();
  return timer;
}

/**
 * The session bounds `createMeshServer` applies to its own HTTP/2 sessions (grpc-js has none by
 * default): the first call's headers within `headersTimeoutMs` (a client that sends only the preface
 * is closed), then GOAWAY after `idleTimeoutMs` without a call in progress.
 */
function boundSession(
  session: ServerHttp2Session,
  bounds: SessionBounds,
  budgets: ResetBudgets,
  keepAlive: KeepAliveSweep,
  injected: InjectingConnection["current"],
): void {
  // Before anything can close it, grpc-js and node included: see closeOnlyAfterGoaway.
  closeOnlyAfterGoaway(session, GOAWAY_SEND_GRACE_MS, injected?.socket);
  const state: SessionIdle = {
    bounds,
    openStreams: 0,
    timer: closeAfter(session, bounds.headersTimeoutMs),
    resets: budgets.forSession(injected?.address),
    socket: injected?.socket,
  };
  idleStates.set(session, state);
  const injectedSocket = injected?.socket as (Duplex & { readonly bytesRead?: number }) | undefined;
  if (injectedSocket !== undefined && typeof injectedSocket.bytesRead === "number") {
    keepAlive.watch(session, injectedSocket as Duplex & { readonly bytesRead: number }, (why) => {
      debug("grpc: closing an injected session (%s)", why);
      if (why === "ended by nghttp2" && state.socket !== undefined) {
        closeEndedSession(session, REFUSE_GRACE_MS, state.socket);
        return;
      }
      session.destroy();
      state.socket?.destroy();
    });
  }
  // On Node 24 a destroyed session whose SETTINGS the client never acknowledged stays reachable (node's
  // pending-SETTINGS callback is bound to it), and with it this state: holding the closed socket here
  // kept its TLS buffers, its listeners and the session error's stack (which reaches node's native
  // session, so nothing of it was ever freed): ~145 sessions and +120 MiB RSS over R10 before this.
  state.socket?.once("close", () => {
    state.socket = undefined;
    clearTimeout(state.graceTimer);
    state.graceTimer = undefined;
  });
  // Node destroys a session on a protocol error and ends its socket, which waits for the peer: bounded.
  session.on("error", () => {
    const socket = state.socket;
    if (socket === undefined || socket.destroyed || state.graceTimer !== undefined) return;
    const timer = setTimeout(() => socket.destroy(), REFUSE_GRACE_MS);
    timer.unref();
    state.graceTimer = timer;
  });
  session.once("close", () => {
    clearTimeout(state.timer);
    // Node closed what it was given; the socket injected may be a wrapper (TLS) whose own socket must
    // close too, or node keeps the closed session alive (Node 24, SETTINGS never acknowledged).
    state.socket?.destroy();
  });
  session.on("stream", (stream: ServerHttp2Stream) => {
    if (stream.destroyed || stream.closed) {
      earlyReset(session, state);
      return;
    }
    stream.once("close", () => {
      if (stream.rstCode !== undefined && stream.rstCode !== constants.NGHTTP2_NO_ERROR) {
        earlyReset(session, state);
      }
    });
  });
}

function sessionStreamOpened(stream: ServerHttp2Stream): void {
  const session = stream.session as ServerHttp2Session | undefined;
  const state = session === undefined ? undefined : idleStates.get(session);
  if (session === undefined || state === undefined) return;
  state.openStreams += 1;
  clearTimeout(state.timer);
  stream.once("close", () => {
    state.openStreams -= 1;
    if (state.openStreams === 0 && !session.closed && !session.destroyed) {
      state.timer = closeAfter(session, state.bounds.idleTimeoutMs);
    }
  });
}

type Http2ServerFactory = (this: Server, credentials: ServerCredentials) => Http2Server;

/**
 * `server.createConnectionInjector`, with the HTTP/2 server grpc-js makes for it guarded (see
 * {@link guardStreams}). grpc-js exposes that server nowhere, so its factory method is wrapped on this
 * instance for the duration of the call; without that method (another grpc-js) the injector is unguarded.
 */
function createGuardedInjector(
  server: Server,
  credentials: ServerCredentials,
  bounds: SessionBounds,
  injecting: InjectingConnection,
): ReturnType<Server["createConnectionInjector"]> {
  const target = server as unknown as { createHttp2Server?: Http2ServerFactory };
  const factory = target.createHttp2Server;
  if (typeof factory !== "function") {
    debug("grpc: this grpc-js has no createHttp2Server; injected connections are not guarded");
    return server.createConnectionInjector(credentials);
  }
  const own = Object.hasOwn(target, "createHttp2Server");
  target.createHttp2Server = function guardedFactory(this: Server, creds: ServerCredentials) {
    const http2Server = Reflect.apply(factory, this, [creds]) as Http2Server;
    guardStreams(http2Server, bounds, injecting);
    return http2Server;
  };
  try {
    return server.createConnectionInjector(credentials);
  } finally {
    if (own) target.createHttp2Server = factory;
    else delete target.createHttp2Server;
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
  const initialPolicyWaitMs = checkDuration(
    options.initialPolicyWaitMs,
    1000,
    "initialPolicyWaitMs",
    where,
    true,
  );
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
  holdTickShape();
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
  injectConnection(
    socket: Duplex,
    info?: { readonly peer: PeerIdentity; readonly clientAddress?: string | undefined },
  ): void;
  /** GOAWAY on every session, then cancels what is left after `graceMs`. */
  drain(graceMs: number): void;
  /** Stops serving injected connections. */
  destroy(): void;
}

export interface MeshConnectionInjectorOptions extends Omit<MeshServerCredentialsOptions, "terminateTls"> {
  /** A connection must send its first call's headers within this, or it is closed. @default 10000 */
  headersTimeoutMs?: number;
  /** A connection with no call in progress is closed (GOAWAY) after this. @default 60000 */
  idleTimeoutMs?: number;
  /** A connection from which nothing was read for this long is sent a PING; 0: never. @default 10000 */
  keepAliveIntervalMs?: number;
  /** A PING unanswered this long closes the connection. @default 3000 */
  keepAliveTimeoutMs?: number;
}

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
  const where = "createMeshConnectionInjector";
  const resolved = resolve(options, where);
  if (typeof (server as Partial<Server>)?.createConnectionInjector !== "function") {
    throw invalidArg("createMeshConnectionInjector: server must be a grpc-js Server (1.11 or later)");
  }
  const credentials = createMeshServerCredentials({ ...options, terminateTls: false });
  const registry = registries.get(credentials) as ConnectionRegistry;
  const injecting: InjectingConnection = { current: undefined };
  const injector = createGuardedInjector(
    server,
    credentials,
    {
      headersTimeoutMs: checkDuration(options.headersTimeoutMs, 10_000, "headersTimeoutMs", where),
      idleTimeoutMs: checkDuration(options.idleTimeoutMs, 60_000, "idleTimeoutMs", where),
      keepAliveIntervalMs: checkDuration(
        options.keepAliveIntervalMs,
        10_000,
        "keepAliveIntervalMs",
        where,
        true,
      ),
      keepAliveTimeoutMs: checkDuration(options.keepAliveTimeoutMs, 3000, "keepAliveTimeoutMs", where),
    },
    injecting,
  );
  const { identity } = resolved;
  return {
    injectConnection(socket, info) {
      registry.register(
        socket,
        info?.peer ?? identity.peerIdentity(socket as Parameters<typeof identity.peerIdentity>[0]),
      );
      // Budgets are kept per client address: createMeshServer passes it along with the peer.
      const address = info?.clientAddress || (socket as Partial<Socket>).remoteAddress || undefined;
      injecting.current = { socket, address };
      try {
        injector.injectConnection(socket);
      } finally {
        injecting.current = undefined;
      }
    },
    drain: (graceMs) => injector.drain(graceMs),
    destroy: () => injector.destroy(),
  };
}
