import { DestinationError, MeshError, MeshErrorCode, secureRandom } from "@inmesh/core";
import {
  applyL5dRequestHeaders,
  type GrpcFilter,
  type HeaderModifier,
  type HttpFilter,
  type OpaqueFilter,
  type OutboundRequest,
  selectBackend,
  selectRoute,
} from "@inmesh/destination";
import type { Dispatcher } from "undici";
import { hasBackendChoice } from "../backends.js";
import type { MeshInterceptor } from "../compose.js";
import {
  ForwardingController,
  PassThroughHandler,
  type ResponseHeaders,
  respondSynthetic,
} from "../controller.js";
import { egressParent, httpEgressDenial } from "../egress.js";
import type { ResolvedDispatcherOptions } from "../options.js";
import { redirectAnswer, withResponseHeaderFilters } from "../route-filters.js";
import { type CallState, callOf, passedThroughAttempt } from "../state.js";
import type { EndpointGroup, TargetRegistry } from "../targets.js";

type Controller = Dispatcher.DispatchController;
type AnyFilter = HttpFilter | GrpcFilter | OpaqueFilter;

const NO_HEADERS: readonly string[] = Object.freeze([]);
const NO_FILTERS: readonly AnyFilter[] = Object.freeze([]);

/**
 * Presents one controller to the outer handler for the whole call and re-targets it at whatever the
 * inner layers hand up; every callback carries the outer controller.
 */
class RouteHandler extends PassThroughHandler {
  readonly #controller: ForwardingController;
  /** Set once the caller has its answer; later callbacks from below are dropped. */
  #done = false;

  constructor(inner: Dispatcher.DispatchHandler, controller: ForwardingController) {
    super(inner);
    this.#controller = controller;
  }

  /** Answers the caller now (an abort before the attempt reached a socket); the attempt is abandoned. */
  cut(reason: Error): void {
    if (this.#done) return;
    this.#done = true;
    super.onResponseError(this.#controller, reason);
  }

  override onRequestStart(controller: Controller): void {
    // Even after a cut: the forwarding controller aborts the late attempt on its socket.
    this.#controller.target = controller;
  }

  override onRequestUpgrade(
    _controller: Controller,
    statusCode: number,
    headers: Parameters<PassThroughHandler["onRequestUpgrade"]>[2],
    socket: Parameters<PassThroughHandler["onRequestUpgrade"]>[3],
  ): void {
    if (this.#done) return;
    this.#done = true;
    super.onRequestUpgrade(this.#controller, statusCode, headers, socket);
  }

  override onResponseStart(
    _controller: Controller,
    statusCode: number,
    headers: ResponseHeaders,
    statusMessage?: string,
  ): void {
    if (this.#done) return;
    super.onResponseStart(this.#controller, statusCode, headers, statusMessage);
  }

  override onResponseData(_controller: Controller, chunk: Buffer): void {
    if (this.#done) return;
    super.onResponseData(this.#controller, chunk);
  }

  override onResponseEnd(_controller: Controller, trailers: ResponseHeaders): void {
    if (this.#done) return;
    this.#done = true;
    super.onResponseEnd(this.#controller, trailers);
  }

  override onResponseError(_controller: Controller, error: Error): void {
    if (this.#done) return;
    this.#done = true;
    super.onResponseError(this.#controller, error);
  }
}

/** The call as route matching sees it: one object per request, no closure. */
class RouteRequest implements OutboundRequest {
  readonly method: string;
  readonly host: string;
  readonly path: string;
  readonly query: string;
  readonly #pairs: CallState["headers"];

  constructor(call: CallState) {
    this.method = call.method;
    this.host = call.hostHeader ?? call.authority;
    const q = call.path.indexOf("?");
    this.path = q < 0 ? call.path : call.path.slice(0, q);
    this.query = q < 0 ? "" : call.path.slice(q + 1);
    this.#pairs = call.headers;
  }

  getHeader(name: string): string | string[] | undefined {
    let found: string | string[] | undefined;
    for (const [key, value] of this.#pairs) {
      if (key !== name) continue;
      if (found === undefined) found = value;
      else if (typeof found === "string") found = [found, value];
      else found.push(value);
    }
    return found;
  }
}

function headerModifiers(filters: readonly AnyFilter[]): HeaderModifier[] {
  const modifiers: HeaderModifier[] = [];
  for (const filter of filters) if (filter.kind === "request-header-modifier") modifiers.push(filter);
  return modifiers;
}

/** The synthesized response of a failure-injector filter, if this request is chosen to fail. */
function injectedFailure(
  filters: readonly AnyFilter[],
  call: CallState,
): { status: number; headers: ResponseHeaders } | undefined {
  for (const filter of filters) {
    if (filter.kind !== "failure-injector" || !(secureRandom() < filter.ratio)) continue;
    if ("code" in filter) {
      return {
        status: 200,
        headers: {
          "content-type": "application/grpc",
          "grpc-status": String(filter.code),
          "grpc-message": encodeURIComponent(filter.message),
          "content-length": "0",
        },
      };
    }
    const headers: ResponseHeaders = { "content-length": "0" };
    if (filter.message) headers["l5d-proxy-error"] = filter.message;
    return call.protocol === "grpc"
      ? { status: 200, headers: { ...headers, "content-type": "application/grpc", "grpc-status": "13" } }
      : { status: filter.status, headers };
  }
  return undefined;
}

/** Linkerd answers a request no route matches with 404 (gRPC: NOT_FOUND) (contract §6.5). */
function noRouteResponse(call: CallState): { status: number; headers: ResponseHeaders } {
  const headers: ResponseHeaders = { "content-length": "0", "l5d-proxy-error": "no route found for request" };
  return call.protocol === "grpc"
    ? { status: 200, headers: { ...headers, "content-type": "application/grpc", "grpc-status": "5" } }
    : { status: 404, headers };
}

/** One request's trip through route selection; one object instead of a handful of closures. */
class RoutingCall {
  readonly #dispatch: Dispatcher.Dispatch;
  readonly #opts: Dispatcher.DispatchOptions;
  readonly #handler: Dispatcher.DispatchHandler;
  readonly #call: CallState;
  readonly #options: ResolvedDispatcherOptions;
  readonly #registry: TargetRegistry;
  readonly controller: ForwardingController;
  #waitAbort: AbortController | undefined;
  #finished = false;
  #filters: readonly AnyFilter[] = NO_FILTERS;
  /** The handler handed down, once the call is dispatched below. */
  #below: RouteHandler | undefined;

  constructor(
    dispatch: Dispatcher.Dispatch,
    opts: Dispatcher.DispatchOptions,
    handler: Dispatcher.DispatchHandler,
    options: ResolvedDispatcherOptions,
    registry: TargetRegistry,
  ) {
    this.#dispatch = dispatch;
    this.#opts = opts;
    this.#handler = handler;
    this.#call = callOf(opts);
    this.#options = options;
    this.#registry = registry;
    this.controller = new ForwardingController((reason) => this.#aborted(reason));
  }

  #aborted(reason: Error): void {
    this.#waitAbort?.abort(reason);
    const below = this.#below;
    if (below === undefined || this.controller.target !== undefined) return;
    // Sent down but not on a socket yet, and no retry layer took the call (it left its attempt in our
    // options): abandon the attempt (a wait for an endpoint ends now) and answer the caller now; the
    // forwarding controller aborts the attempt if it still reaches a socket.
    const attempt = passedThroughAttempt(this.#opts);
    if (attempt === undefined) return;
    attempt.abandon(reason);
    below.cut(reason);
  }

  /** Created only when the request has to wait for discovery. */
  #signal(): AbortSignal {
    if (!this.#waitAbort) {
      this.#waitAbort = new AbortController();
      if (this.controller.aborted) this.#waitAbort.abort(this.controller.reason);
    }
    return this.#waitAbort.signal;
  }

  start(): void {
    this.#handler.onRequestStart?.(this.controller, {});
    if (this.controller.aborted) {
      this.#fail(this.controller.reason);
      return;
    }
    try {
      const address = this.#call.address;
      const target = address
        ? this.#registry.addressTarget(address.key, address.ip, address.port)
        : this.#registry.target(this.#call.authority, this.#call.startedAtMs);
      this.#call.target = target;
      this.#call.group = target.group;
      if (target.isReady) this.#route();
      else
        target.ready(this.#signal(), this.#options.discoveryTimeoutMs).then(
          () => this.#route(),
          (error: unknown) => this.#fail(error),
        );
    } catch (error) {
      this.#fail(error);
    }
  }

  #fail(error: unknown): void {
    if (this.#finished) return;
    this.#finished = true;
    this.#handler.onResponseError?.(this.controller, MeshError.from(this.controller.reason ?? error));
  }

  #respond(response: { status: number; headers: ResponseHeaders }): void {
    if (this.#finished) return;
    this.#finished = true;
    respondSynthetic(this.#handler, this.controller, response.status, response.headers, "");
  }

  #route(): void {
    if (this.#finished) return;
    try {
      this.#select();
    } catch (error) {
      this.#fail(error);
    }
  }

  #select(): void {
    const call = this.#call;
    const target = call.target;
    if (!target) return;
    const request = new RouteRequest(call);
    const selected = selectRoute(target.routingModel(), request, SELECT_OPTIONS);
    if (!selected) {
      this.#respond(noRouteResponse(call));
      return;
    }
    const egress = call.address ? egressParent(target.outboundPolicy()) : undefined;
    if (egress && call.telemetry) call.telemetry.parent = egress;
    const denial = call.address
      ? httpEgressDenial(call.authority, target.outboundPolicy(), selected)
      : undefined;
    if (denial) {
      this.#fail(denial);
      return;
    }
    const { policy, stripHeaders } = selected.allowL5dRequestHeaders
      ? applyL5dRequestHeaders(selected, (name) => request.getHeader(name))
      : { policy: selected, stripHeaders: NO_HEADERS };
    call.policy = policy;
    call.stripHeaders = stripHeaders;
    call.budget = policy.retry.kind === "budget" ? policy.retry.budget : target.budget;
    let filters: readonly AnyFilter[] = policy.filters;
    let group: EndpointGroup = target.group;
    const original = call.address ? target.meshedOriginalDestination() : undefined;
    if (original) group = this.#registry.forwardGroup(original);
    const backend = policy.backends ? selectBackend<AnyFilter>(policy.backends) : undefined;
    if (backend) {
      if (backend.filters.length > 0) filters = [...filters, ...backend.filters];
      const backendTarget = backend.backend.target;
      group =
        backendTarget.kind === "forward"
          ? this.#registry.forwardGroup(backendTarget.endpoint)
          : this.#registry.group(backendTarget.path.toLowerCase());
      if (hasBackendChoice(policy.backends)) call.splitPolicy = policy;
    }
    if (filters.length > 0) {
      call.headerFilters = headerModifiers(filters);
      const failure = injectedFailure(filters, call);
      if (failure) {
        this.#respond(failure);
        return;
      }
      const redirect = redirectAnswer(filters, policy, call, this.#opts.origin, request);
      if (redirect) {
        this.#respond(redirect);
        return;
      }
      this.#filters = filters;
    }
    if (group === target.group || group.endpointCount() > 0) {
      this.#proceed(group);
      return;
    }
    call.group = group;
    group.ready(this.#signal(), this.#options.discoveryTimeoutMs).then(
      () => this.#proceed(group),
      (error: unknown) => this.#fail(error),
    );
  }

  #proceed(group: EndpointGroup): void {
    if (this.#finished) return;
    if (this.controller.aborted) {
      this.#fail(this.controller.reason);
      return;
    }
    const call = this.#call;
    if (!group.exists) {
      this.#fail(
        new DestinationError(
          MeshErrorCode.DESTINATION_NOT_FOUND,
          `discovery says ${group.path} does not exist`,
          {
            details: { authority: call.authority },
          },
        ),
      );
      return;
    }
    call.group = group;
    this.#finished = true;
    try {
      const below = new RouteHandler(
        withResponseHeaderFilters(this.#handler, this.#filters),
        this.controller,
      );
      this.#below = below;
      this.#dispatch(this.#opts, below);
    } catch (error) {
      const below = this.#below;
      if (below) below.onResponseError(this.controller, MeshError.from(error));
      else this.#handler.onResponseError?.(this.controller, MeshError.from(error));
    }
  }
}

const SELECT_OPTIONS = Object.freeze({ httpVersion: "http1" as const });

/**
 * Resolves the logical target: waits (bounded) for its first discovery answers, picks the route from the
 * ServiceProfile or OutboundPolicy (Gateway API precedence), honours `l5d-*` request headers when the
 * route allows them, applies the rule's filters and chooses the backend whose endpoints the balance
 * interceptor uses.
 */
export function routeInterceptor(
  options: ResolvedDispatcherOptions,
  registry: TargetRegistry,
): MeshInterceptor {
  return (dispatch) =>
    function meshRoute(opts, handler) {
      new RoutingCall(dispatch, opts, handler, options, registry).start();
      return true;
    };
}
