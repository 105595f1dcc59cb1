import {
  applyRedirect,
  type GrpcFilter,
  type HeaderModifier,
  type HttpFilter,
  modifyHeaderRecord,
  type OpaqueFilter,
  type OutboundRequest,
  type RequestPolicy,
} from "@inmesh/destination";
import type { Dispatcher } from "undici";
import { PassThroughHandler, type ResponseHeaders } from "./controller.js";
import type { CallState } from "./state.js";

type Controller = Dispatcher.DispatchController;
type AnyFilter = HttpFilter | GrpcFilter | OpaqueFilter;

function hostOf(origin: unknown): string | undefined {
  try {
    return new URL(String(origin)).host || undefined;
  } catch {
    return undefined;
  }
}

/**
 * The answer of a RequestRedirect filter, as linkerd2-proxy gives it: the filter's status (301 by
 * default) with `location` and an empty body, `l5d-proxy-error: redirected`; a prefix rewrite the matched
 * rule cannot support is the proxy's 500. Undefined when the rule has no redirect (or it points back at
 * the request itself).
 */
export function redirectAnswer(
  filters: readonly AnyFilter[],
  policy: RequestPolicy,
  call: CallState,
  origin: unknown,
  request: OutboundRequest,
): { status: number; headers: ResponseHeaders } | undefined {
  for (const filter of filters) {
    if (filter.kind !== "redirect") continue;
    const authority = call.hostHeader ?? hostOf(origin) ?? call.authority;
    const outcome = applyRedirect(
      filter,
      { scheme: "http", authority, pathAndQuery: call.path },
      policy.httpMatches ?? [],
      request,
    );
    if (!outcome) continue;
    if (outcome.kind === "invalid") {
      return {
        status: 500,
        headers: {
          "content-length": "0",
          "l5d-proxy-error": "unexpected error",
          connection: "close",
          "l5d-proxy-connection": "close",
        },
      };
    }
    return {
      status: outcome.status,
      headers: { "content-length": "0", "l5d-proxy-error": "redirected", location: outcome.location },
    };
  }
  return undefined;
}

/** Applies ResponseHeaderModifier filters to the response headers on their way to the caller. */
class ResponseHeadersHandler extends PassThroughHandler {
  readonly #modifiers: readonly HeaderModifier[];

  constructor(inner: Dispatcher.DispatchHandler, modifiers: readonly HeaderModifier[]) {
    super(inner);
    this.#modifiers = modifiers;
  }

  override onResponseStart(
    controller: Controller,
    statusCode: number,
    headers: ResponseHeaders,
    statusMessage?: string,
  ): void {
    super.onResponseStart(
      controller,
      statusCode,
      modifyHeaderRecord(headers as Record<string, string | string[]>, this.#modifiers) as ResponseHeaders,
      statusMessage,
    );
  }
}

/** `handler`, wrapped to apply the rule's and backend's ResponseHeaderModifier filters, if any. */
export function withResponseHeaderFilters(
  handler: Dispatcher.DispatchHandler,
  filters: readonly AnyFilter[],
): Dispatcher.DispatchHandler {
  let modifiers: HeaderModifier[] | undefined;
  for (const filter of filters) {
    if (filter.kind !== "response-header-modifier") continue;
    modifiers ??= [];
    modifiers.push(filter);
  }
  return modifiers ? new ResponseHeadersHandler(handler, modifiers) : handler;
}
