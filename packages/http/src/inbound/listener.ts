import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse, ServerHttp2Session } from "node:http2";
import type { Socket } from "node:net";
import { checkDuration, holdTickShape, MeshError, MeshErrorCode } from "@inmesh/core";
import { isGrpcContentType } from "@inmesh/policy";
import { type MeshServerIdentity, standaloneConnectionState } from "./connection.js";
import { attachMeshContext, meshContext } from "./context.js";
import {
  authorizeRequest,
  type MeshAuthorization,
  type MeshSyntheticResponse,
  sendSynthetic,
  syntheticResponse,
} from "./gate.js";
import { L5D_ORIG_PROTO } from "./headers.js";
import { checkPort, type MeshPolicyInput, resolvePolicySource } from "./policy-source.js";

export interface MeshRequestAuthorizerOptions {
  /** The workload identity that terminated TLS (`identity.tlsServerOptions()` on your own server). */
  identity: MeshServerIdentity;
  /** The port's inbound policy: a `PolicyWatcher`, a policy source, or one compiled policy. */
  policy: MeshPolicyInput;
  /** The port whose policy applies (the container port the policy controller knows). */
  port: number;
  /** How long a request is held for the port's first policy before being denied (R4). @default 1000 */
  initialPolicyWaitMs?: number;
}

export type MeshRequest = IncomingMessage | Http2ServerRequest;
export type MeshResponse = ServerResponse | Http2ServerResponse;

export interface MeshRequestAuthorizer {
  /**
   * Authorizes a request that reached a server you created yourself: strips any client-sent
   * `l5d-client-id` and sets the verified one, evaluates the policy and the route filters, and on success
   * attaches the mesh context (`meshContext(req)`, `req.mesh`). A request `createMeshServer` already
   * authorized is returned as allowed at once. Synchronous unless the port's first policy is awaited.
   */
  authorize(req: MeshRequest): MeshAuthorization | Promise<MeshAuthorization>;
}

const WHERE = "createMeshRequestAuthorizer";

const UNVERIFIED = {
  status: 403,
  grpcStatus: 7,
  reason: "unverified-client",
  message: "client certificate does not verify against the trust anchors",
  closeConnection: true,
};
const UNVERIFIED_HTTP = syntheticResponse(UNVERIFIED, false, false);
const UNVERIFIED_GRPC = syntheticResponse(UNVERIFIED, true, false);

function connectionKey(req: MeshRequest): { key: object; socket: Socket } {
  const stream = (req as Http2ServerRequest).stream;
  if (stream !== undefined && stream.session !== undefined) {
    const session = stream.session as ServerHttp2Session;
    return { key: session, socket: session.socket as Socket };
  }
  const socket = (req as IncomingMessage).socket;
  return { key: socket, socket };
}

/**
 * Authorization for requests served by a server the application created itself (`https.createServer(
 * identity.tlsServerOptions(), …)`, `http2.createSecureServer`, or plaintext): what the framework
 * adapters use when a request did not come through `createMeshServer`. Prefer `createMeshServer`: it
 * also accepts plaintext and TLS on one port and sidecar clients that send no ALPN.
 */
export function createMeshRequestAuthorizer(options: MeshRequestAuthorizerOptions): MeshRequestAuthorizer {
  if (typeof options !== "object" || options === null) {
    throw new MeshError(MeshErrorCode.INVALID_ARG, `${WHERE}: options are required`);
  }
  const identity = options.identity;
  if (typeof identity?.peerIdentity !== "function") {
    throw new MeshError(MeshErrorCode.INVALID_ARG, `${WHERE}: identity must be an IdentityProvider`);
  }
  const port = checkPort(options.port, "port", WHERE);
  const source = resolvePolicySource(options.policy, WHERE);
  const gate = {
    source,
    port,
    initialPolicyWaitMs: checkDuration(options.initialPolicyWaitMs, 1000, "initialPolicyWaitMs", WHERE, true),
  };
  holdTickShape();

  const finish = (req: MeshRequest, result: MeshAuthorization): MeshAuthorization => {
    if (result.allowed) attachMeshContext(req, result.context);
    return result;
  };

  return {
    authorize(req) {
      const existing = meshContext(req);
      if (existing !== undefined) return { allowed: true, context: existing, decision: existing.decision };
      const { key, socket } = connectionKey(req);
      const state = standaloneConnectionState(identity, key, socket);
      const h2 = (req as Http2ServerRequest).stream !== undefined;
      if (state.tls && state.peer.kind === "none") {
        // linkerd2-proxy would have failed this handshake: the client certificate does not verify.
        const grpc = h2 && isGrpcContentType(req.headers["content-type"]);
        return { allowed: false, decision: undefined, response: grpc ? UNVERIFIED_GRPC : UNVERIFIED_HTTP };
      }
      const headers = req.headers as Record<string, string | string[] | undefined>;
      const result = authorizeRequest(gate, state, {
        method: req.method ?? "GET",
        target: req.url ?? "/",
        authority: h2
          ? ((headers[":authority"] as string | undefined) ?? (headers.host as string | undefined))
          : (headers.host as string | undefined),
        headers,
        rawHeaders: req.rawHeaders,
        h2,
        message: h2 ? undefined : (req as IncomingMessage),
      });
      return result instanceof Promise ? result.then((settled) => finish(req, settled)) : finish(req, result);
    },
  };
}

/** Writes a synthesized mesh response (a denial, redirect or injected failure) on a node response. */
export function sendMeshResponse(res: MeshResponse, response: MeshSyntheticResponse): void {
  sendSynthetic(res, response);
}

export interface MeshRequestListenerOptions extends MeshRequestAuthorizerOptions {
  /** Called for authorized requests; without it the listener calls its third argument (`next`). */
  handler?(req: MeshRequest, res: MeshResponse): void;
}

/**
 * A request listener (`http.createServer(listener)`), also usable as connect-style middleware
 * (`listener(req, res, next)`): authorizes each request, answers denials as Linkerd does, and passes
 * authorized ones on with the mesh context attached.
 */
export type MeshRequestListener = (
  req: MeshRequest,
  res: MeshResponse,
  next?: (error?: unknown) => void,
) => void;

export function createMeshRequestListener(options: MeshRequestListenerOptions): MeshRequestListener {
  const authorizer = createMeshRequestAuthorizer(options);
  const handler = options.handler;
  if (handler !== undefined && typeof handler !== "function") {
    throw new MeshError(MeshErrorCode.INVALID_ARG, "createMeshRequestListener: handler must be a function");
  }
  const proceed = (
    req: MeshRequest,
    res: MeshResponse,
    next: ((error?: unknown) => void) | undefined,
    result: MeshAuthorization,
  ) => {
    if (!result.allowed) {
      sendSynthetic(res, result.response);
      return;
    }
    const origProto = result.context.origProto;
    if (origProto !== undefined && !res.headersSent) res.setHeader(L5D_ORIG_PROTO, origProto);
    if (handler !== undefined) handler(req, res);
    else next?.();
  };
  return function meshRequestListener(req, res, next) {
    let result: MeshAuthorization | Promise<MeshAuthorization>;
    try {
      result = authorizer.authorize(req);
    } catch (error) {
      if (next !== undefined) next(error);
      else throw error;
      return;
    }
    if (result instanceof Promise) {
      result.then(
        (settled) => proceed(req, res, next, settled),
        (error: unknown) => {
          if (next !== undefined) next(error);
          else res.destroy();
        },
      );
    } else {
      proceed(req, res, next, result);
    }
  };
}
