import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerResponse, OutgoingHttpHeaders, ServerHttp2Stream } from "node:http2";
import { debuglog } from "node:util";
import type { PeerIdentity } from "@inmesh/core";
import {
  applyRouteFilters,
  type ClientFacts,
  type CompiledServerPolicy,
  type HttpDecision,
  type HttpRateLimitedDecision,
  type HttpRequestFacts,
  isGrpcContentType,
  type PolicyExplanation,
} from "@inmesh/policy";
import type { MeshRequestContext } from "./context.js";
import {
  L5D_ORIG_PROTO,
  L5D_PROXY_ERROR,
  type OrigProto,
  requestHeaderMutator,
  setClientIdHeader,
  splitTarget,
  takeOrigProto,
} from "./headers.js";
import type { MeshPolicySource } from "./policy-source.js";

/** What is known about one accepted connection; computed once, shared by every request on it. */
export interface ConnectionState {
  readonly facts: ClientFacts;
  readonly peer: PeerIdentity;
  /** The client presented a verified mesh identity: synthesized errors then carry `l5d-proxy-error`. */
  readonly meshed: boolean;
  /** Mesh TLS was terminated on this connection. */
  readonly tls: boolean;
  readonly transportHeader: boolean;
  /** `ip:port` we accepted on (Linkerd's target_addr), for telemetry. */
  readonly targetAddress: string;
  /**
   * Until when (epoch ms) a request on this connection may wait for the port's first policy. The
   * connection's own wait counts against it, so a connection is held once, not once per stage.
   * Undefined: each request may wait `initialPolicyWaitMs`.
   */
  readonly policyWaitUntil?: number | undefined;
}

/**
 * A response the mesh answers on the application's behalf (denials, redirects, injected failures):
 * empty body, `content-length: 0`, exactly as linkerd2-proxy synthesizes them (contract §6.1).
 */
export interface MeshSyntheticResponse {
  /** HTTP status (200 for gRPC requests, whose status is in `grpc-status`). */
  readonly status: number;
  /** Header names are lower-case. */
  readonly headers: Readonly<Record<string, string>>;
  /** The gRPC status code, for gRPC requests. */
  readonly grpcStatus: number | undefined;
  /** Linkerd closes the connection after this response (internal errors). */
  readonly closeConnection: boolean;
  /** `unauthorized`, `route-not-found`, `invalid-policy`, `not-loaded`, `redirect`, `failure-injected`… */
  readonly reason: string;
  readonly message: string;
}

export type MeshAuthorization =
  | {
      readonly allowed: true;
      readonly context: MeshRequestContext;
      readonly decision: HttpDecision;
      readonly response?: undefined;
    }
  | {
      readonly allowed: false;
      readonly response: MeshSyntheticResponse;
      /**
       * The policy decision (an allowed one when a route filter answered instead of the app, a rate-limited
       * one for 429s); undefined when the connection was refused before policy (a client certificate that
       * does not verify).
       */
      readonly decision: HttpDecision | HttpRateLimitedDecision | undefined;
      /**
       * Why the request was refused: which authorizations were tried and why each did not admit the caller.
       * Computed when first read (nothing is spent on it otherwise); undefined without a decision.
       */
      readonly explanation?: PolicyExplanation | undefined;
      readonly context?: undefined;
    };

/** The parts of a request the gate reads and edits (header object and raw list edited in place). */
export interface RequestParts {
  readonly method: string;
  readonly target: string;
  readonly authority: string | undefined;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly rawHeaders: string[] | undefined;
  readonly h2: boolean;
  /** An HTTP/1 request: its lazily built `headersDistinct` must see the same edits. */
  readonly message?: object | undefined;
}

export interface GateConfig {
  readonly source: MeshPolicySource;
  readonly port: number;
  readonly initialPolicyWaitMs: number;
}

const debug = debuglog("mesh");

/**
 * A refusal whose `explanation` is computed on first read, and logged at debug level (NODE_DEBUG=mesh)
 * only when that is on: a denial costs nothing more unless someone asks why.
 */
function refused(
  policy: CompiledServerPolicy,
  connection: ConnectionState,
  decision: HttpDecision | HttpRateLimitedDecision,
  response: MeshSyntheticResponse,
): MeshAuthorization {
  let explained: PolicyExplanation | undefined;
  const result = {
    allowed: false as const,
    decision,
    response,
    get explanation(): PolicyExplanation {
      explained ??= policy.explainHttp(decision, connection.facts);
      return explained;
    },
  };
  if (debug.enabled) debug("inbound: request refused (%s):\n%s", response.reason, result.explanation.text);
  return result;
}

/** Percent-encodes a grpc-message as the gRPC HTTP/2 protocol requires. */
function encodeGrpcMessage(message: string): string {
  return encodeURIComponent(message).replace(/%20/g, " ");
}

export function syntheticResponse(
  cause: { status: number; grpcStatus: number; reason: string; message: string; closeConnection: boolean },
  grpc: boolean,
  meshed: boolean,
  location?: string,
): MeshSyntheticResponse {
  const headers: Record<string, string> = { "content-length": "0" };
  if (grpc) {
    headers["content-type"] = "application/grpc";
    headers["grpc-status"] = String(cause.grpcStatus);
  } else if (location !== undefined) {
    headers.location = location;
  }
  // Linkerd tells only meshed clients (its peers) why; others see the bare status.
  if (meshed) {
    headers[L5D_PROXY_ERROR] = cause.message;
    if (grpc) headers["grpc-message"] = encodeGrpcMessage(cause.message);
    if (cause.closeConnection) headers["l5d-proxy-connection"] = "close";
  }
  return {
    status: grpc ? 200 : cause.status,
    headers,
    grpcStatus: grpc ? cause.grpcStatus : undefined,
    closeConnection: cause.closeConnection,
    reason: cause.reason,
    message: cause.message,
  };
}

/**
 * Authorizes one request against the policy in force: sets `l5d-client-id` from the verified identity
 * (removing any the client sent) BEFORE routing, so header matches cannot be spoofed; downgrades
 * `l5d-orig-proto`; picks the route and authorization; runs the route's filters. Pure apart from editing
 * the request's own header object.
 */
export function authorizeWithPolicy(
  gate: GateConfig,
  connection: ConnectionState,
  request: RequestParts,
  policy: CompiledServerPolicy,
): MeshAuthorization {
  const headers = request.headers;
  const message = request.message;
  setClientIdHeader(headers, request.rawHeaders, connection.facts.identity, message);
  let origProto: OrigProto | undefined;
  if (request.h2 && headers[L5D_ORIG_PROTO] !== undefined) {
    origProto = takeOrigProto(headers, request.rawHeaders)?.version;
    // HTTP/1.1 applications expect a Host header; an upgraded request carries it as :authority.
    if (origProto !== undefined && headers.host === undefined && request.authority !== undefined) {
      headers.host = request.authority;
    }
  }
  // The common origin-form target without a query needs no split (and no object for its parts).
  const target = request.target;
  const plain = target.charCodeAt(0) === 0x2f && target.indexOf("?") < 0;
  const split = plain ? undefined : splitTarget(target);
  const facts: HttpRequestFacts = {
    method: request.method,
    authority: request.authority,
    path: split === undefined ? target : split.path,
    query: split === undefined ? "" : split.query,
    headers,
    rawHeaders: request.rawHeaders,
    client: connection.facts,
  };
  const decision = policy.authorizeHttp(facts);
  const grpc = request.h2 && isGrpcContentType(headers["content-type"]);
  if (!decision.allowed) {
    return refused(
      policy,
      connection,
      decision,
      withOrigProto(
        syntheticResponse(
          {
            status: decision.httpStatus,
            grpcStatus: decision.grpcStatus,
            reason: decision.reason,
            message: decision.message,
            closeConnection: false,
          },
          grpc,
          connection.meshed,
        ),
        origProto,
      ),
    );
  }
  if (decision.filters.length > 0) {
    const outcome = applyRouteFilters(
      decision.filters,
      facts,
      requestHeaderMutator(
        headers,
        request.rawHeaders,
        message === undefined ? undefined : () => (message as IncomingMessage).headersDistinct,
      ),
    );
    if (outcome.kind === "respond") {
      return {
        allowed: false,
        decision,
        response: withOrigProto(
          syntheticResponse(
            {
              status: outcome.httpStatus,
              grpcStatus: outcome.grpcStatus,
              reason: outcome.cause,
              message: outcome.message,
              closeConnection: outcome.closeConnection,
            },
            grpc,
            connection.meshed,
            outcome.location,
          ),
          origProto,
        ),
      };
    }
  }
  // Linkerd checks the local rate limit last, after authorization and filters (policy-semantics §8.5).
  const limited = policy.rateLimit?.check(decision, connection.facts);
  if (limited !== undefined) {
    return refused(
      policy,
      connection,
      limited,
      withOrigProto(
        syntheticResponse(
          {
            status: limited.httpStatus,
            grpcStatus: limited.grpcStatus,
            reason: limited.reason,
            message: limited.message,
            closeConnection: false,
          },
          grpc,
          connection.meshed,
        ),
        origProto,
      ),
    );
  }
  return {
    allowed: true,
    decision,
    context: {
      peer: connection.peer,
      clientIdentity: connection.facts.identity,
      clientAddress: connection.facts.address,
      port: gate.port,
      server: decision.server,
      route: decision.route,
      authz: decision.authz,
      decision,
      origProto,
      transportHeader: connection.transportHeader,
    },
  };
}

function withOrigProto(
  response: MeshSyntheticResponse,
  origProto: OrigProto | undefined,
): MeshSyntheticResponse {
  if (origProto === undefined) return response;
  return { ...response, headers: { ...response.headers, [L5D_ORIG_PROTO]: origProto } };
}

/**
 * Authorizes with the policy in force, or, while the port has no policy yet (strict mode), holds the
 * request for at most `initialPolicyWaitMs` and then decides (a still-missing policy denies: R4).
 */
export function authorizeRequest(
  gate: GateConfig,
  connection: ConnectionState,
  request: RequestParts,
): MeshAuthorization | Promise<MeshAuthorization> {
  const policy = gate.source.policyFor(gate.port);
  // The clock is read only while the port has no policy yet, not for every request.
  if (policy.status !== "not-loaded" || gate.source.waitForPolicy === undefined) {
    return authorizeWithPolicy(gate, connection, request, policy);
  }
  const waitMs =
    connection.policyWaitUntil === undefined
      ? gate.initialPolicyWaitMs
      : Math.max(0, connection.policyWaitUntil - Date.now());
  if (waitMs === 0) return authorizeWithPolicy(gate, connection, request, policy);
  return gate.source
    .waitForPolicy(gate.port, { timeoutMs: waitMs })
    .catch(() => gate.source.policyFor(gate.port))
    .then((loaded) => authorizeWithPolicy(gate, connection, request, loaded));
}

/** Writes a synthesized response on an HTTP/1 or HTTP/2-compat response object. */
export function sendSynthetic(
  res: ServerResponse | Http2ServerResponse,
  response: MeshSyntheticResponse,
): void {
  if ("stream" in res && res.stream !== undefined) {
    sendSyntheticOnStream(res.stream, response);
    return;
  }
  const http1 = res as ServerResponse;
  if (http1.headersSent) {
    http1.destroy();
    return;
  }
  if (response.closeConnection) http1.setHeader("connection", "close");
  http1.writeHead(response.status, response.headers);
  http1.end();
}

/** Writes a synthesized response on a raw HTTP/2 stream: one HEADERS frame with END_STREAM (trailers-only for gRPC). */
export function sendSyntheticOnStream(stream: ServerHttp2Stream, response: MeshSyntheticResponse): void {
  if (stream.destroyed || stream.closed) return;
  if (stream.headersSent) {
    stream.close();
    return;
  }
  const headers: OutgoingHttpHeaders = {
    ":status": response.status,
    ...response.headers,
  };
  stream.respond(headers, { endStream: true });
  // Linkerd closes the connection after internal errors: GOAWAY, letting other streams finish.
  if (response.closeConnection) stream.session?.close();
}
