import type { PeerIdentity } from "@inmesh/core";
import type {
  AuthzMeta,
  CompiledServerPolicy,
  ConnectionAllowedDecision,
  HttpAllowedDecision,
  RouteMeta,
  ServerMeta,
} from "@inmesh/policy";
import type { OrigProto } from "./headers.js";

/**
 * What the mesh established about one request the application receives: who called (verified by mTLS),
 * and which Server, route and authorization admitted the call. Read it with `meshContext(req)` or
 * `req.mesh`.
 */
export interface MeshRequestContext {
  /** The verified caller: `{kind:"mesh", name}` for an mTLS client with a mesh identity. */
  readonly peer: PeerIdentity;
  /** The caller's mesh identity, exactly what the application also gets as `l5d-client-id`. */
  readonly clientIdentity: string | undefined;
  /** The client's IP address (IPv4-mapped IPv6 converted to IPv4). */
  readonly clientAddress: string;
  /** The policy port the request was authorized for. */
  readonly port: number;
  readonly server: ServerMeta;
  readonly route: RouteMeta;
  readonly authz: AuthzMeta;
  /** The full decision (shared and frozen: never mutate it). */
  readonly decision: HttpAllowedDecision;
  /**
   * The HTTP version a client proxy upgraded to HTTP/2 (`l5d-orig-proto`), undefined for requests that
   * arrived as they were sent. The response carries `l5d-orig-proto` back automatically.
   */
  readonly origProto: OrigProto | undefined;
  /** Whether the connection arrived on the transport-header port (Linkerd's 4143). */
  readonly transportHeader: boolean;
}

/** What `onConnection` / `onHttp2Connection` hooks learn about a connection they take over. */
export interface MeshConnectionInfo {
  readonly peer: PeerIdentity;
  readonly clientAddress: string;
  readonly port: number;
  /** Mesh TLS was terminated here (the socket handed over is the decrypted TLS socket). */
  readonly tls: boolean;
  readonly transportHeader: boolean;
  /** The connection-level decision for opaque connections; undefined for HTTP/2 hand-overs. */
  readonly decision: ConnectionAllowedDecision | undefined;
  /** The policy in force when the connection was accepted. */
  readonly policy: CompiledServerPolicy;
}

/**
 * The context lives on the request itself under a module-private symbol: it dies with the request, and
 * unlike a WeakMap entry (an ephemeron the collector must trace specially) costs one property.
 */
const kMeshContext = Symbol("inmesh.context");

/**
 * The mesh context of a request served through `createMeshServer` or `createMeshRequestListener`
 * (an `http.IncomingMessage` or `http2.Http2ServerRequest`), or undefined when no mesh authorized it.
 */
export function meshContext(request: object): MeshRequestContext | undefined {
  return (request as { [kMeshContext]?: MeshRequestContext })[kMeshContext];
}

/** @internal */
export function attachMeshContext(request: object, context: MeshRequestContext): void {
  const target = request as {
    [kMeshContext]?: MeshRequestContext;
    mesh?: MeshRequestContext;
    meshPeer?: PeerIdentity;
  };
  target[kMeshContext] = context;
  target.mesh = context;
  target.meshPeer = context.peer;
}

declare module "node:http" {
  interface IncomingMessage {
    /** Set by `@inmesh/http` on requests the mesh authorized (same value as `meshContext(req)`). */
    mesh?: MeshRequestContext;
    /** Set by `@inmesh/http`: the verified caller (`meshContext(req).peer`). */
    meshPeer?: PeerIdentity;
  }
}

declare module "node:http2" {
  interface Http2ServerRequest {
    /** Set by `@inmesh/http` on requests the mesh authorized (same value as `meshContext(req)`). */
    mesh?: MeshRequestContext;
    /** Set by `@inmesh/http`: the verified caller (`meshContext(req).peer`). */
    meshPeer?: PeerIdentity;
  }
}
