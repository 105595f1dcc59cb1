import type { Duplex } from "node:stream";
import { debuglog } from "node:util";
import {
  Metadata,
  ServerInterceptingCall,
  type ServerInterceptingCallInterface,
  type ServerInterceptor,
  type ServerMethodDefinition,
} from "@grpc/grpc-js";
import {
  type InboundCallMessage,
  MeshChannel,
  MeshError,
  MeshErrorCode,
  meshChannel,
  NO_PEER,
  type PeerIdentity,
} from "@inmesh/core";
import { checkLeafCertificate, type IdentityProvider } from "@inmesh/identity";
import {
  type AuthzMeta,
  applyRouteFilters,
  type ClientFacts,
  type CompiledServerPolicy,
  clientFacts,
  type HeaderMutator,
  type HttpAllowedDecision,
  type HttpDecision,
  type PolicyWatcher,
  type RouteMeta,
  type ServerMeta,
} from "@inmesh/policy";

const debug = debuglog("mesh");
const L5D_CLIENT_ID = "l5d-client-id";
const callStart = meshChannel(MeshChannel.inboundCallStart);
const callEnd = meshChannel(MeshChannel.inboundCallEnd);

/** What the gRPC server side needs from an `IdentityProvider` (the whole provider satisfies it). */
export type MeshGrpcServerIdentity = Pick<
  IdentityProvider,
  "localName" | "tlsServerOptions" | "peerIdentity"
>;

/** A `PolicyWatcher` (or anything with its `policyFor`/`waitForPolicy`), or one compiled policy. */
export type MeshGrpcPolicyInput =
  | (Pick<PolicyWatcher, "policyFor"> & Partial<Pick<PolicyWatcher, "waitForPolicy">>)
  | CompiledServerPolicy;

/** The mesh facts of one authorized call, for handlers: `meshCallContext(call)`, `meshPeer(call)`. */
export interface MeshGrpcCallContext {
  /** The verified caller (computed once per connection). */
  readonly peer: PeerIdentity;
  /** The caller's mesh identity; also the `l5d-client-id` metadata handlers see. */
  readonly clientIdentity: string | undefined;
  readonly clientAddress: string;
  readonly port: number;
  readonly server: ServerMeta;
  readonly route: RouteMeta;
  readonly authz: AuthzMeta;
  readonly decision: HttpAllowedDecision;
}

const contexts = new WeakMap<Metadata, MeshGrpcCallContext>();

/** The mesh context of a call the authorization interceptor admitted (any server call object with `metadata`). */
export function meshCallContext(call: { readonly metadata: Metadata }): MeshGrpcCallContext | undefined {
  return contexts.get(call.metadata);
}

/** The verified caller of a call the authorization interceptor admitted. */
export function meshPeer(call: { readonly metadata: Metadata }): PeerIdentity | undefined {
  return contexts.get(call.metadata)?.peer;
}

/**
 * Per-connection client facts of connections handed over by the mesh listener, keyed by the peer's
 * address and port (what grpc-js tells an interceptor about its connection), removed when they close.
 */
export interface ConnectionRegistry {
  register(socket: Duplex, peer: PeerIdentity): void;
  lookup(address: string | undefined, port: number | undefined): ClientFacts | undefined;
}

export function createConnectionRegistry(): ConnectionRegistry {
  const byAddress = new Map<string, Map<number, ClientFacts>>();
  return {
    register(socket, peer) {
      const { remoteAddress, remotePort } = socket as Duplex & {
        remoteAddress?: string;
        remotePort?: number;
      };
      if (remoteAddress === undefined || remotePort === undefined) return;
      const facts = clientFacts(remoteAddress, peer);
      let ports = byAddress.get(remoteAddress);
      if (ports === undefined) {
        ports = new Map();
        byAddress.set(remoteAddress, ports);
      }
      ports.set(remotePort, facts);
      socket.once("close", () => {
        const current = byAddress.get(remoteAddress);
        if (current?.get(remotePort) !== facts) return;
        current.delete(remotePort);
        if (current.size === 0) byAddress.delete(remoteAddress);
      });
    },
    lookup(address, port) {
      if (address === undefined || port === undefined) return undefined;
      return byAddress.get(address)?.get(port);
    },
  };
}

/** Bounded cache of verified client leaves for connections grpc-js terminated itself (bindAsync). */
const MAX_CACHED_LEAVES = 1024;

export interface AuthorizationOptions {
  readonly policy: MeshGrpcPolicyInput;
  readonly port: number;
  readonly initialPolicyWaitMs: number;
  readonly registry: ConnectionRegistry;
  /** Connections terminated by grpc-js (bindAsync): no registry entry, identity from the auth context. */
  readonly tlsByGrpc: boolean;
}

function isCompiledPolicy(input: MeshGrpcPolicyInput): input is CompiledServerPolicy {
  return typeof (input as CompiledServerPolicy).authorizeHttp === "function";
}

function metadataLookup(metadata: Metadata): (name: string) => string | string[] | undefined {
  return (name) => {
    const values = metadata.get(name);
    if (values.length === 0) return undefined;
    if (values.length === 1) return String(values[0]);
    return values.map(String);
  };
}

function metadataMutator(metadata: Metadata): HeaderMutator {
  return {
    append: (name, value) => metadata.add(name, value),
    set: (name, value) => metadata.set(name, value),
    delete: (name) => metadata.remove(name),
  };
}

/**
 * The server interceptor that enforces the port's Linkerd policy on every call before any handler or
 * user interceptor runs: PERMISSION_DENIED (7) when unauthorized, NOT_FOUND (5) when no route matches,
 * status details and `l5d-proxy-error` only for meshed callers; `l5d-client-id` metadata set from the
 * verified identity and never from the client.
 */
export function createAuthorizationInterceptor(options: AuthorizationOptions): ServerInterceptor {
  const { port, registry, initialPolicyWaitMs } = options;
  const input = options.policy;
  const policyFor: (port: number) => CompiledServerPolicy = isCompiledPolicy(input)
    ? () => input
    : (p) => input.policyFor(p);
  const waitForPolicy =
    !isCompiledPolicy(input) && input.waitForPolicy !== undefined
      ? (input.waitForPolicy.bind(input) as PolicyWatcher["waitForPolicy"])
      : undefined;
  const leaves = new Map<string, PeerIdentity>();

  const peerFromAuthContext = (call: ServerInterceptingCallInterface): PeerIdentity => {
    const auth = call.getAuthContext();
    const certificate = auth.sslPeerCertificate;
    if (auth.transportSecurityType !== "ssl") {
      // grpc-js reports nothing for TLS clients whose certificate OpenSSL refused, or that sent none.
      return { kind: "none", reason: "unverified" };
    }
    if (certificate === undefined) return { kind: "tls-anonymous", tls: "established" };
    const key = certificate.fingerprint256;
    const cached = leaves.get(key);
    if (cached !== undefined) return cached;
    const verdict = checkLeafCertificate(certificate.raw, { purpose: "client" });
    const peer: PeerIdentity = verdict.ok
      ? { kind: "mesh", name: verdict.identity, tls: "established" }
      : { kind: "none", reason: "unverified" };
    if (leaves.size >= MAX_CACHED_LEAVES) leaves.delete(leaves.keys().next().value as string);
    leaves.set(key, peer);
    return peer;
  };

  const factsFor = (call: ServerInterceptingCallInterface): ClientFacts => {
    const info = call.getConnectionInfo();
    const registered = registry.lookup(info.remoteAddress, info.remotePort);
    if (registered !== undefined) return registered;
    const peer: PeerIdentity = options.tlsByGrpc
      ? peerFromAuthContext(call)
      : // Inbound plaintext is `no_tls_from_remote` in Linkerd's labels, loopback included.
        NO_PEER;
    return clientFacts(info.remoteAddress, peer);
  };

  return function meshAuthorization(
    methodDescriptor: ServerMethodDefinition<unknown, unknown>,
    call: ServerInterceptingCallInterface,
  ): ServerInterceptingCall {
    let denied = false;
    let telemetry: { message: InboundCallMessage & Record<string, unknown>; startedAt: number } | undefined;
    const decide = (metadata: Metadata, policy: CompiledServerPolicy, next: (metadata: Metadata) => void) => {
      const facts = factsFor(call);
      metadata.remove(L5D_CLIENT_ID);
      if (facts.identity !== undefined) metadata.set(L5D_CLIENT_ID, facts.identity);
      const request = {
        method: "POST",
        authority: call.getHost() || undefined,
        path: methodDescriptor.path,
        query: "",
        headers: metadataLookup(metadata),
        client: facts,
      };
      const decision: HttpDecision = policy.authorizeHttp(request);
      if (callStart.hasSubscribers || callEnd.hasSubscribers)
        telemetry = startTelemetry(call, facts, port, methodDescriptor.path, decision, metadata);
      const meshed = facts.identity !== undefined;
      let refusal: { code: number; message: string } | undefined;
      if (!decision.allowed) {
        refusal = { code: decision.grpcStatus, message: decision.message };
      } else if (decision.filters.length > 0) {
        const outcome = applyRouteFilters(decision.filters, request, metadataMutator(metadata));
        if (outcome.kind === "respond") refusal = { code: outcome.grpcStatus, message: outcome.message };
      }
      if (refusal === undefined && decision.allowed) {
        // The Server's HTTPLocalRateLimitPolicy, last, as in the proxy: RESOURCE_EXHAUSTED (8).
        const limited = policy.rateLimit?.check(decision, facts);
        if (limited !== undefined) {
          refusal = { code: limited.grpcStatus, message: limited.message };
          if (telemetry !== undefined) telemetry.message.decision = limited;
        }
      }
      if (refusal !== undefined) {
        denied = true;
        const trailers = new Metadata();
        if (meshed) trailers.set("l5d-proxy-error", refusal.message);
        debug("inbound grpc: %s refused with %d: %s", methodDescriptor.path, refusal.code, refusal.message);
        if (telemetry !== undefined) {
          endTelemetry(telemetry, refusal.code);
          telemetry = undefined;
        }
        call.sendStatus({ code: refusal.code, details: meshed ? refusal.message : "", metadata: trailers });
        return;
      }
      if (!decision.allowed) return;
      contexts.set(metadata, {
        peer: facts.peer,
        clientIdentity: facts.identity,
        clientAddress: facts.address,
        port,
        server: decision.server,
        route: decision.route,
        authz: decision.authz,
        decision,
      });
      // Streaming handlers start here, unary ones at half-close: both inside the call's scope (its
      // SERVER span when tracing), so what the handler does joins the caller's trace.
      const scope = telemetry?.message.runInScope;
      if (scope === undefined) next(metadata);
      else scope(() => next(metadata));
    };
    return new ServerInterceptingCall(call, {
      start(next) {
        next({
          onReceiveMetadata(metadata, mdNext) {
            const policy = policyFor(port);
            if (policy.status !== "not-loaded" || waitForPolicy === undefined || initialPolicyWaitMs === 0) {
              decide(metadata, policy, mdNext);
              return;
            }
            // Strict mode: hold the call (bounded) for the port's first policy, then decide (R4).
            waitForPolicy(port, { timeoutMs: initialPolicyWaitMs })
              .catch(() => policyFor(port))
              .then((loaded) => decide(metadata, loaded, mdNext));
          },
          onReceiveMessage(message, msgNext) {
            if (!denied) msgNext(message);
          },
          onReceiveHalfClose(halfCloseNext) {
            if (denied) return;
            const scope = telemetry?.message.runInScope;
            if (scope === undefined) halfCloseNext();
            else scope(halfCloseNext);
          },
        });
      },
      sendStatus(status, next) {
        if (telemetry !== undefined) endTelemetry(telemetry, status.code);
        next(status);
      },
    });
  };
}

function startTelemetry(
  call: ServerInterceptingCallInterface,
  facts: ClientFacts,
  port: number,
  path: string,
  decision: HttpDecision,
  metadata: Metadata,
): { message: InboundCallMessage & Record<string, unknown>; startedAt: number } {
  const info = call.getConnectionInfo();
  const message = {
    protocol: "grpc" as const,
    httpVersion: "2" as const,
    method: "POST",
    path,
    authority: call.getHost(),
    port,
    targetAddress: `${info.localAddress ?? ""}:${info.localPort ?? 0}`,
    clientAddress: facts.address,
    peer: facts.peer,
    // Trace context (traceparent…) arrives as metadata.
    getHeader: (name: string) => {
      const value = metadata.get(name)[0];
      return typeof value === "string" ? value : undefined;
    },
    decision,
    statusCode: 200 as number | undefined,
    grpcStatus: undefined as number | undefined,
    error: undefined as unknown,
    durationMs: undefined as number | undefined,
    runInScope: undefined as InboundCallMessage["runInScope"],
  };
  if (callStart.hasSubscribers) callStart.publish(message);
  return { message, startedAt: performance.now() };
}

function endTelemetry(
  telemetry: { message: InboundCallMessage & Record<string, unknown>; startedAt: number },
  code: number | undefined,
): void {
  const message = telemetry.message as { grpcStatus: number | undefined; durationMs: number | undefined };
  message.grpcStatus = code;
  message.durationMs = performance.now() - telemetry.startedAt;
  if (callEnd.hasSubscribers) callEnd.publish(telemetry.message);
}

export function invalidArg(message: string): MeshError {
  return new MeshError(MeshErrorCode.INVALID_ARG, message);
}
