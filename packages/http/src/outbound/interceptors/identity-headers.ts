import { IdentityError, MeshErrorCode } from "@inmesh/core";
import { encodeGrpcTimeout } from "@inmesh/destination";
import type { Dispatcher } from "undici";
import type { MeshInterceptor } from "../compose.js";
import { PassThroughHandler, type ResponseHeaders, syntheticController } from "../controller.js";
import { flattenHeaders, getHeader, type HeaderPairs, setHeader } from "../headers.js";
import { attemptOf, callOf } from "../state.js";

type Controller = Dispatcher.DispatchController;

/** Headers that only mean something between the application and its proxy, never on the wire. */
const LOCAL_HEADERS = new Set(["l5d-require-id", "l5d-orig-proto"]);
/** Connection-specific headers HTTP/2 forbids (RFC 9113 §8.2.2). */
const H2_FORBIDDEN = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
]);
/** Peer proxies' informational headers linkerd2-proxy strips from responses (contract §5). */
const PEER_RESPONSE_HEADERS = ["l5d-orig-proto", "l5d-proxy-connection"];

/** Drops headers meant for the hop, not for the application, from an upgraded (HTTP/2) response. */
class OrigProtoHandler extends PassThroughHandler {
  override onResponseStart(
    controller: Controller,
    statusCode: number,
    headers: ResponseHeaders,
    statusMessage?: string,
  ): void {
    let cleaned = headers;
    for (const name of PEER_RESPONSE_HEADERS) {
      if (cleaned[name] === undefined) continue;
      if (cleaned === headers) cleaned = { ...headers };
      delete cleaned[name];
    }
    super.onResponseStart(controller, statusCode, cleaned, statusMessage);
  }
}

/** Whether a request header stays off the wire of this attempt. */
function skipHeader(name: string, http2: boolean, extra: ReadonlySet<string> | undefined): boolean {
  return (
    name === "host" ||
    LOCAL_HEADERS.has(name) ||
    (http2 && H2_FORBIDDEN.has(name)) ||
    extra?.has(name) === true
  );
}

function applyModifiers(
  pairs: HeaderPairs,
  modifiers: ReturnType<typeof callOf>["headerFilters"],
): HeaderPairs {
  let result = pairs;
  // linkerd2-proxy's order: add, then set, then remove.
  for (const modifier of modifiers) {
    for (const [name, value] of modifier.add) result.push([name.toLowerCase(), value]);
    for (const [name, value] of modifier.set) setHeader(result, name, value);
    if (modifier.remove.length > 0) {
      const remove = new Set(modifier.remove.map((name) => name.toLowerCase()));
      result = result.filter(([name]) => !remove.has(name));
    }
  }
  return result;
}

/**
 * Writes the headers of one attempt for the chosen endpoint (contract §5):
 * - `host` is the logical authority, not the endpoint address;
 * - `l5d-require-id`, when the application sets it, must equal the endpoint's mTLS identity, and is
 *   stripped (a mismatch is `MESH_ERR_IDENTITY_PEER_MISMATCH`, which the rescue layer answers as Linkerd: 502);
 * - `l5d-dst-canonical` on ServiceProfile routes; route `l5d-*` headers the route honoured are removed;
 * - the route's RequestHeaderModifier filters and the telemetry headers (trace context) are applied;
 * - gRPC: `grpc-timeout` carries the time left before the call's deadline;
 * - prior-knowledge HTTP/2 to an `h2`-hinted endpoint: HTTP/1 requests carry `l5d-orig-proto: HTTP/1.1`
 *   and no connection-specific headers, so the peer's inbound hands them to its application as HTTP/1.
 */
export function identityHeadersInterceptor(): MeshInterceptor {
  return (dispatch) =>
    function meshIdentityHeaders(opts, handler) {
      const call = callOf(opts);
      const lease = attemptOf(opts).lease;
      if (!lease) throw new TypeError("identityHeaders needs an endpoint chosen by the balance interceptor");
      const pairs = call.headers;
      const required = getHeader(pairs, "l5d-require-id");
      const serverIdentity = lease.route.tls?.identity;
      if (required !== undefined && required.trim() !== serverIdentity) {
        handler.onResponseError?.(
          syntheticController(),
          new IdentityError(
            MeshErrorCode.IDENTITY_PEER_MISMATCH,
            `l5d-require-id ${JSON.stringify(required)} does not match endpoint ${lease.pick.endpoint.address} (${serverIdentity ?? "no identity"})`,
            { details: { required, serverIdentity, endpoint: lease.pick.endpoint.address } },
          ),
        );
        return true;
      }
      const http2 = lease.route.http2 === true;
      const extra = call.stripHeaders.length > 0 ? new Set(call.stripHeaders) : undefined;
      let flat: string[];
      const simple =
        call.headerFilters.length === 0 &&
        call.extraHeaders.length === 0 &&
        call.policy?.source !== "profile" &&
        !(call.protocol === "grpc" && call.deadlineAtMs !== undefined);
      if (simple) {
        // The common case, in one pass and one allocation.
        flat = ["host", call.hostHeader ?? call.authority];
        for (let i = 0; i < pairs.length; i += 1) {
          const pair = pairs[i] as [string, string];
          if (!skipHeader(pair[0], http2, extra)) flat.push(pair[0], pair[1]);
        }
        if (http2 && call.protocol !== "grpc") flat.push("l5d-orig-proto", "HTTP/1.1");
      } else {
        let list: HeaderPairs = pairs.filter(([name]) => !skipHeader(name, http2, extra));
        list = applyModifiers(list, call.headerFilters);
        for (const [name, value] of call.extraHeaders) setHeader(list, name, value);
        list.unshift(["host", call.hostHeader ?? call.authority]);
        if (call.policy?.source === "profile") setHeader(list, "l5d-dst-canonical", call.authority);
        if (call.protocol === "grpc" && call.deadlineAtMs !== undefined) {
          setHeader(list, "grpc-timeout", encodeGrpcTimeout(call.deadlineAtMs - performance.now()));
        }
        // gRPC is HTTP/2 end to end already; only HTTP/1 semantics travel as an upgrade.
        if (http2 && call.protocol !== "grpc") setHeader(list, "l5d-orig-proto", "HTTP/1.1");
        flat = flattenHeaders(list);
      }
      // `opts` is the attempt's own copy (made by the retry interceptor) or, for a route without retries,
      // the call's (made by the dispatcher), never the caller's object, and every pass here rebuilds the
      // headers from the call: set in place rather than copied once more.
      (opts as { headers: unknown }).headers = flat;
      // undici derives a TLS server name from the Host of every request (an IP test with two regexes)
      // unless one is given; its `http:` endpoint pools never use it (mTLS is the connector's, which
      // names the peer's identity) beyond telling null from a name. A Service's Host is a DNS name, so
      // the answer is known: a name. An address's stays undici's to derive (null).
      if (call.address === undefined)
        (opts as { servername?: string }).servername = call.hostHeader ?? call.authority;
      return dispatch(opts, http2 ? new OrigProtoHandler(handler) : handler);
    };
}
