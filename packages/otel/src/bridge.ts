import { createRequire } from "node:module";
import { debuglog } from "node:util";
import {
  createMeshChannelSubscription,
  type InboundCallMessage,
  isMeshError,
  MeshChannel,
  MeshError,
  MeshErrorCode,
  type OutboundAttemptMessage,
  type OutboundCallMessage,
  type PeerIdentity,
} from "@inmesh/core";
import type {
  Attributes,
  Context,
  Span,
  TextMapGetter,
  TextMapSetter,
  Tracer,
  TracerProvider,
} from "@opentelemetry/api";
import * as semconv from "./semconv.js";
import { VERSION } from "./version.js";

const log = debuglog("mesh");

type OtelApi = typeof import("@opentelemetry/api");

// @opentelemetry/api is an optional peer: it is loaded when a bridge is created, so a service without it
// loads this package (through @inmesh/mesh) and simply records no spans. Every copy of the API of one
// major version shares its globals, so this copy sees the SDK the application registered.
let api: OtelApi | undefined;
function loadOtelApi(): OtelApi {
  if (api) return api;
  try {
    api = createRequire(import.meta.url)("@opentelemetry/api") as OtelApi;
  } catch (error) {
    throw new MeshError(
      MeshErrorCode.INVALID_CONFIG,
      "@opentelemetry/api is not installed: add it (and an OpenTelemetry SDK) to record spans",
      { cause: error, details: { dependency: "@opentelemetry/api" } },
    );
  }
  return api;
}

/** Whether `@opentelemetry/api` can be loaded here (`createMesh()` bridges only then). Resolves, loads nothing. */
export function isOtelApiInstalled(): boolean {
  if (api) return true;
  try {
    createRequire(import.meta.url).resolve("@opentelemetry/api");
    return true;
  } catch {
    return false;
  }
}

// Where every copy of @opentelemetry/api 1.x keeps what the application registered (its tracer provider,
// propagator, context manager): the key of the major version our peer range allows.
const OTEL_API_GLOBALS = Symbol.for("opentelemetry.js.api.1");

/**
 * Whether a tracer provider or a propagator is registered globally. Without either, a bridge to the
 * globals would only build no-op spans and propagate nothing, so it does not even load the API: most
 * meshed services never register an SDK, and the API was ~0.6 MB of heap in each of them (S8).
 */
function otelGlobalsRegistered(): boolean {
  const globals = (globalThis as { [OTEL_API_GLOBALS]?: { trace?: unknown; propagation?: unknown } })[
    OTEL_API_GLOBALS
  ];
  return globals !== undefined && (globals.trace !== undefined || globals.propagation !== undefined);
}

/** The propagation calls the bridge makes; both `propagation` and any `TextMapPropagator` fit. */
export interface Propagator {
  inject<TCarrier>(context: Context, carrier: TCarrier, setter: TextMapSetter<TCarrier>): void;
  extract<TCarrier>(context: Context, carrier: TCarrier, getter: TextMapGetter<TCarrier>): Context;
}

export interface OtelBridgeOptions {
  /** @default the global tracer provider (`trace.getTracerProvider()`), so nothing records until an SDK is registered */
  tracerProvider?: TracerProvider;
  /** @default the global propagator (`propagation`) */
  propagator?: Propagator;
}

export interface OtelBridge {
  /** Subscribes to the `mesh:*` call channels. Idempotent. */
  register(): void;
  /** Unsubscribes; calls in flight are left unended and never exported. Idempotent. */
  unregister(): void;
  readonly registered: boolean;
}

const inboundGetter: TextMapGetter<InboundCallMessage> = {
  keys: () => [],
  get: (carrier, key) => carrier.getHeader(key.toLowerCase()),
};

const outboundSetter: TextMapSetter<OutboundCallMessage> = {
  set: (carrier, key, value) => carrier.setHeader(key.toLowerCase(), value),
};

/** gRPC codes a server reports as an error (semconv): UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS. */
const GRPC_SERVER_ERRORS = new Set([2, 4, 12, 13, 14, 15]);

/** Query parameters semconv asks instrumentations to redact from `url.full`. */
const REDACTED_QUERY_KEYS = new Set(["AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"]);

function splitAuthority(authority: string): { host: string | undefined; port: number | undefined } {
  const match = /^(?:\[([^\]]+)\]|([^:]*))(?::(\d{1,5}))?$/.exec(authority);
  if (!match) return { host: undefined, port: undefined };
  const host = match[1] ?? match[2];
  const port = match[3] === undefined ? undefined : Number(match[3]);
  return {
    host: host === "" ? undefined : host,
    port: port !== undefined && port <= 65535 ? port : undefined,
  };
}

function pathOnly(path: string): string {
  const query = path.indexOf("?");
  return query === -1 ? path : path.slice(0, query);
}

function redactedUrl(authority: string, path: string): string {
  const query = path.indexOf("?");
  if (query === -1) return `http://${authority}${path}`;
  const params = path
    .slice(query + 1)
    .split("&")
    .map((pair) => {
      const equals = pair.indexOf("=");
      const key = equals === -1 ? pair : pair.slice(0, equals);
      return equals !== -1 && REDACTED_QUERY_KEYS.has(key) ? `${key}=REDACTED` : pair;
    });
  return `http://${authority}${path.slice(0, query)}?${params.join("&")}`;
}

/** `/pkg.Service/Method` → service and method, or undefined when the path is not a gRPC path. */
function grpcPath(path: string): { service: string; method: string } | undefined {
  const match = /^\/([^/]+)\/([^/?]+)$/.exec(pathOnly(path));
  return match ? { service: match[1]!, method: match[2]! } : undefined;
}

function methodAttributes(method: string): Attributes {
  const upper = method.toUpperCase();
  if (semconv.KNOWN_HTTP_METHODS.has(upper)) return { [semconv.ATTR_HTTP_REQUEST_METHOD]: upper };
  return {
    [semconv.ATTR_HTTP_REQUEST_METHOD]: semconv.HTTP_REQUEST_METHOD_OTHER,
    [semconv.ATTR_HTTP_REQUEST_METHOD_ORIGINAL]: method,
  };
}

function spanName(protocol: "http" | "grpc", method: string, path: string): string {
  if (protocol === "grpc") {
    const rpc = grpcPath(path);
    if (rpc) return `${rpc.service}/${rpc.method}`;
  }
  const upper = method.toUpperCase();
  return semconv.KNOWN_HTTP_METHODS.has(upper) ? upper : "HTTP";
}

function rpcAttributes(protocol: "http" | "grpc", path: string): Attributes {
  if (protocol !== "grpc") return {};
  const rpc = grpcPath(path);
  return {
    [semconv.ATTR_RPC_SYSTEM]: semconv.RPC_SYSTEM_GRPC,
    ...(rpc ? { [semconv.ATTR_RPC_SERVICE]: rpc.service, [semconv.ATTR_RPC_METHOD]: rpc.method } : {}),
  };
}

function peerTls(peer: PeerIdentity): string {
  return peer.kind === "none" ? peer.reason : peer.kind;
}

/** A low-cardinality `error.type`: a MeshError code, an errno name, the error's name, or `_OTHER`. */
function errorType(error: unknown): string {
  if (isMeshError(error)) return error.code;
  if (typeof error === "object" && error !== null) {
    const code = (error as { code?: unknown }).code;
    if (typeof code === "string" && /^[A-Z][A-Z0-9_]{1,63}$/.test(code)) return code;
    const name = (error as { name?: unknown }).name;
    if (typeof name === "string" && /^[A-Za-z][A-Za-z0-9_]{0,63}$/.test(name)) return name;
  }
  return semconv.ERROR_TYPE_OTHER;
}

interface Outcome {
  readonly protocol: "http" | "grpc";
  readonly statusCode: number | undefined;
  readonly grpcStatus: number | undefined;
  readonly error: unknown;
}

/** Sets the response attributes and the span status; servers only fail on 5xx, clients on 4xx too. */
function finish(span: Span, outcome: Outcome, side: "server" | "client"): void {
  const { protocol, statusCode, grpcStatus, error } = outcome;
  if (statusCode !== undefined) span.setAttribute(semconv.ATTR_HTTP_RESPONSE_STATUS_CODE, statusCode);
  if (protocol === "grpc" && grpcStatus !== undefined)
    span.setAttribute(semconv.ATTR_RPC_GRPC_STATUS_CODE, grpcStatus);
  let type: string | undefined;
  if (error !== undefined && error !== null) {
    type = errorType(error);
    if (error instanceof Error) span.recordException(error);
  } else if (protocol === "grpc" && grpcStatus !== undefined) {
    const failed = side === "server" ? GRPC_SERVER_ERRORS.has(grpcStatus) : grpcStatus !== 0;
    if (failed) type = String(grpcStatus);
  } else if (statusCode !== undefined && statusCode >= (side === "server" ? 500 : 400)) {
    type = String(statusCode);
  }
  if (type !== undefined) {
    span.setAttribute(semconv.ATTR_ERROR_TYPE, type);
    span.setStatus({ code: loadOtelApi().SpanStatusCode.ERROR });
  }
}

function resolveOptions(options: OtelBridgeOptions): OtelBridgeOptions {
  const provider = options.tracerProvider;
  if (provider !== undefined && typeof provider?.getTracer !== "function")
    throw new MeshError(MeshErrorCode.INVALID_ARG, "tracerProvider must have getTracer()", {
      details: { option: "tracerProvider" },
    });
  const propagator = options.propagator;
  if (
    propagator !== undefined &&
    (typeof propagator?.inject !== "function" || typeof propagator?.extract !== "function")
  )
    throw new MeshError(MeshErrorCode.INVALID_ARG, "propagator must have inject() and extract()", {
      details: { option: "propagator" },
    });
  return options;
}

/**
 * Creates spans for mesh calls from the `mesh:*` diagnostics channels through `@opentelemetry/api` only:
 * with no SDK registered, every span is a no-op and no header is set.
 *
 * - An inbound call is a SERVER span, parented from the trace context in its request headers.
 * - An outbound call is a CLIENT span, whose context is injected into the request headers at the start.
 * - Each attempt of an outbound call is an INTERNAL child span. Retries appear as siblings with
 *   `http.request.resend_count`. The upstream server's span stays a child of the CLIENT span, so
 *   service graphs still pair CLIENT with SERVER.
 */
export function createOtelBridge(options: OtelBridgeOptions = {}): OtelBridge {
  const config = resolveOptions(options);
  const globalOnly = config.tracerProvider === undefined && config.propagator === undefined;
  // A missing API is a configuration error now, not at the first call (loadOtelApi throws it).
  if (!isOtelApiInstalled()) loadOtelApi();
  let handlers: SpanHandlers | undefined;
  /** The span handlers, created (and the API loaded) once there is something to record or propagate. */
  const active = (): SpanHandlers | undefined => {
    if (handlers === undefined && (!globalOnly || otelGlobalsRegistered())) handlers = spanHandlers(config);
    return handlers;
  };
  if (!globalOnly) active();

  const channels = createMeshChannelSubscription(
    {
      [MeshChannel.inboundCallStart]: (message) => active()?.inboundStart(message),
      // A call that started before the handlers existed has no span to end.
      [MeshChannel.inboundCallEnd]: (message) => handlers?.inboundEnd(message),
      [MeshChannel.outboundCallStart]: (message) => active()?.outboundStart(message),
      [MeshChannel.outboundCallEnd]: (message) => handlers?.outboundEnd(message),
      [MeshChannel.outboundAttemptStart]: (message) => active()?.attemptStart(message),
      [MeshChannel.outboundAttemptEnd]: (message) => handlers?.attemptEnd(message),
    },
    (name, error) => log("otel handler for %s failed: %o", name, error),
  );

  const subscription: BridgeSubscription = {
    subscribe() {
      if (channels.active) return;
      channels.subscribe();
    },
    unsubscribe() {
      channels.unsubscribe();
    },
  };
  // Bridges to the global provider and propagator are interchangeable: however many are registered
  // (the application's registerOtel() and each createMesh()), one of them records, so every span is
  // exported once.
  const registry = globalOnly ? globalBridges() : undefined;

  return {
    register() {
      if (!registry) return subscription.subscribe();
      if (registry.includes(subscription)) return;
      registry.push(subscription);
      if (registry.length === 1) subscription.subscribe();
    },
    unregister() {
      if (!registry) return subscription.unsubscribe();
      const index = registry.indexOf(subscription);
      if (index === -1) return;
      registry.splice(index, 1);
      if (index === 0) {
        subscription.unsubscribe();
        registry[0]?.subscribe();
      }
    },
    get registered() {
      return registry ? registry.includes(subscription) : channels.active;
    },
  };
}

interface SpanHandlers {
  inboundStart(message: InboundCallMessage): void;
  inboundEnd(message: InboundCallMessage): void;
  outboundStart(message: OutboundCallMessage): void;
  outboundEnd(message: OutboundCallMessage): void;
  attemptStart(message: OutboundAttemptMessage): void;
  attemptEnd(message: OutboundAttemptMessage): void;
}

function spanHandlers(config: OtelBridgeOptions): SpanHandlers {
  const { context, propagation, ProxyTracerProvider, ROOT_CONTEXT, SpanKind, trace } = loadOtelApi();
  const propagator: Propagator = config.propagator ?? propagation;
  // A given provider's tracer is resolved once. The global one is looked up per span: the application's
  // copy of the API (ESM) and the one loaded here may be different module instances, and only the
  // registered global (shared by every copy) reaches an SDK registered after this bridge.
  const fixedTracer: Tracer | undefined = config.tracerProvider?.getTracer("@inmesh/otel", VERSION);
  const tracer = (): Tracer => fixedTracer ?? trace.getTracerProvider().getTracer("@inmesh/otel", VERSION);
  // The API's own no-op provider, which an unset global proxies to.
  const noopProvider = new ProxyTracerProvider().getDelegate();
  /** False while no SDK is registered: every span would be a no-op. */
  const sdkRegistered = (): boolean => {
    if (fixedTracer) return true;
    const provider = trace.getTracerProvider();
    return !(provider instanceof ProxyTracerProvider && provider.getDelegate() === noopProvider);
  };

  const inboundSpans = new WeakMap<InboundCallMessage, Span>();
  const callSpans = new WeakMap<OutboundCallMessage, { span: Span; context: Context }>();
  const attemptSpans = new WeakMap<OutboundAttemptMessage, Span>();

  const inboundStart = (message: InboundCallMessage) => {
    const parent = propagator.extract(ROOT_CONTEXT, message, inboundGetter);
    // No SDK and no trace context to carry on: the span would record nothing and propagate nothing. This
    // runs for every request by default, and the context, tracer, attributes and scope closure it built
    // outlived young-generation collections (most of what the S8 service promoted to the old generation).
    if (parent === ROOT_CONTEXT && !sdkRegistered()) return;
    const { host, port } = splitAuthority(message.authority);
    const peer = message.peer;
    const attributes: Attributes = {
      ...methodAttributes(message.method),
      [semconv.ATTR_URL_PATH]: pathOnly(message.path),
      [semconv.ATTR_URL_SCHEME]: peer.kind === "none" ? "http" : "https",
      [semconv.ATTR_SERVER_PORT]: port ?? message.port,
      [semconv.ATTR_NETWORK_PROTOCOL_NAME]: "http",
      [semconv.ATTR_NETWORK_PROTOCOL_VERSION]: message.httpVersion,
      [semconv.ATTR_MESH_PEER_TLS]: peerTls(peer),
      ...rpcAttributes(message.protocol, message.path),
    };
    if (host !== undefined) attributes[semconv.ATTR_SERVER_ADDRESS] = host;
    if (message.clientAddress) attributes[semconv.ATTR_CLIENT_ADDRESS] = message.clientAddress;
    if (peer.kind === "mesh") attributes[semconv.ATTR_MESH_PEER_IDENTITY] = peer.name;
    const userAgent = message.getHeader("user-agent");
    if (userAgent !== undefined) attributes[semconv.ATTR_USER_AGENT_ORIGINAL] = userAgent;
    const span = tracer().startSpan(
      spanName(message.protocol, message.method, message.path),
      { kind: SpanKind.SERVER, attributes },
      parent,
    );
    inboundSpans.set(message, span);
    // The server runs the handler through this, so the SERVER span is active inside it and whatever the
    // handler calls (a child span, an outbound call) joins the same trace.
    const spanContext = trace.setSpan(parent, span);
    message.runInScope = (fn) => context.with(spanContext, fn);
  };

  const inboundEnd = (message: InboundCallMessage) => {
    const span = inboundSpans.get(message);
    if (!span) return;
    inboundSpans.delete(message);
    if (span.isRecording()) {
      const decision = message.decision;
      if (decision) {
        const attributes: Attributes = { [semconv.ATTR_MESH_POLICY_ALLOWED]: decision.allowed };
        if (decision.reason !== undefined) attributes[semconv.ATTR_MESH_POLICY_REASON] = decision.reason;
        if (decision.server) attributes[semconv.ATTR_MESH_POLICY_SERVER] = decision.server.name;
        if (decision.route) attributes[semconv.ATTR_MESH_POLICY_ROUTE] = decision.route.name;
        if (decision.authz) attributes[semconv.ATTR_MESH_POLICY_AUTHZ] = decision.authz.name;
        span.setAttributes(attributes);
      }
      finish(span, message, "server");
    }
    span.end();
  };

  const outboundStart = (message: OutboundCallMessage) => {
    const active = context.active();
    const { host, port } = splitAuthority(message.authority);
    const attributes: Attributes = {
      ...methodAttributes(message.method),
      [semconv.ATTR_URL_FULL]: redactedUrl(message.authority, message.path),
      [semconv.ATTR_NETWORK_PROTOCOL_NAME]: "http",
      ...rpcAttributes(message.protocol, message.path),
    };
    if (host !== undefined) attributes[semconv.ATTR_SERVER_ADDRESS] = host;
    if (port !== undefined) attributes[semconv.ATTR_SERVER_PORT] = port;
    const span = tracer().startSpan(
      spanName(message.protocol, message.method, message.path),
      { kind: SpanKind.CLIENT, attributes },
      active,
    );
    const spanContext = trace.setSpan(active, span);
    callSpans.set(message, { span, context: spanContext });
    propagator.inject(spanContext, message, outboundSetter);
  };

  const outboundEnd = (message: OutboundCallMessage) => {
    const entry = callSpans.get(message);
    if (!entry) return;
    callSpans.delete(message);
    const { span } = entry;
    if (span.isRecording()) {
      span.setAttribute(semconv.ATTR_MESH_ATTEMPTS, message.attempts);
      if (message.route) span.setAttribute(semconv.ATTR_MESH_ROUTE, message.route.name);
      finish(span, message, "client");
    }
    span.end();
  };

  const attemptStart = (message: OutboundAttemptMessage) => {
    const call = message.call;
    const parent = callSpans.get(call)?.context ?? context.active();
    const attributes: Attributes = { [semconv.ATTR_MESH_ATTEMPT]: message.attempt };
    if (message.attempt > 1) attributes[semconv.ATTR_HTTP_REQUEST_RESEND_COUNT] = message.attempt - 1;
    const span = tracer().startSpan(
      `${spanName(call.protocol, call.method, call.path)} attempt`,
      { kind: SpanKind.INTERNAL, attributes },
      parent,
    );
    attemptSpans.set(message, span);
  };

  const attemptEnd = (message: OutboundAttemptMessage) => {
    const span = attemptSpans.get(message);
    if (!span) return;
    attemptSpans.delete(message);
    if (span.isRecording()) {
      const address = message.endpointAddress ? splitAuthority(message.endpointAddress) : undefined;
      if (address?.host !== undefined) span.setAttribute(semconv.ATTR_NETWORK_PEER_ADDRESS, address.host);
      if (address?.port !== undefined) span.setAttribute(semconv.ATTR_NETWORK_PEER_PORT, address.port);
      if (message.serverIdentity)
        span.setAttribute(semconv.ATTR_MESH_SERVER_IDENTITY, message.serverIdentity);
      finish(span, { ...message, protocol: message.call.protocol }, "client");
    }
    span.end();
  };

  return { inboundStart, inboundEnd, outboundStart, outboundEnd, attemptStart, attemptEnd };
}

interface BridgeSubscription {
  subscribe(): void;
  unsubscribe(): void;
}

/**
 * Registered bridges to the global OpenTelemetry API, in registration order; the first one records.
 * Process-wide (a global symbol) so two copies of this package still agree.
 */
function globalBridges(): BridgeSubscription[] {
  const key = Symbol.for("@inmesh/otel.globalBridges");
  const holder = globalThis as { [key]?: BridgeSubscription[] };
  holder[key] ??= [];
  return holder[key];
}

/** Creates a bridge and registers it: the one call most applications need. */
export function registerOtel(options: OtelBridgeOptions = {}): OtelBridge {
  const bridge = createOtelBridge(options);
  bridge.register();
  return bridge;
}
