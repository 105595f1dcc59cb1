import { DestinationError, MeshError, MeshErrorCode } from "@inmesh/core";
import { describe, expect, it } from "vitest";
import { EndpointConnectError } from "../../src/outbound/connector.js";
import {
  formatProxyDuration,
  rescueError,
  streamTimeoutError,
  synthesizedHeaders,
} from "../../src/outbound/proxy-errors.js";
import type { CallState } from "../../src/outbound/state.js";

const call = (protocol: "http" | "grpc", source?: "profile" | "http-route") =>
  ({ protocol, policy: source ? { source } : undefined }) as unknown as CallState;

describe("answers to proxy errors, as linkerd2-proxy's rescue gives them", () => {
  it("prints durations as the proxy does", () => {
    expect(formatProxyDuration(300)).toBe("300ms");
    expect(formatProxyDuration(1000)).toBe("1s");
    expect(formatProxyDuration(1500)).toBe("1.5s");
  });

  it("policy stream timeouts: 504 that keeps the connection; profile timeouts and fail-fast close it", () => {
    const policyTimeout = rescueError(streamTimeoutError("request", 400, false, "a:80"), call("http"));
    expect(policyTimeout).toMatchObject({ status: 504, close: false });
    const profile = rescueError(streamTimeoutError("profile", 400, false, "a:80"), call("http", "profile"));
    expect(profile).toMatchObject({ status: 504, close: true, message: "HTTP response timeout after 400ms" });
    const failFast = rescueError(
      new DestinationError(MeshErrorCode.DESTINATION_NO_ENDPOINTS, "no endpoints for a"),
      call("http"),
    );
    expect(failFast).toMatchObject({ status: 504, close: true });
    expect(synthesizedHeaders(failFast as NonNullable<typeof failFast>, call("http"))).toEqual({
      status: 504,
      headers: {
        "content-length": "0",
        "l5d-proxy-error": "no endpoints for a",
        connection: "close",
        "l5d-proxy-connection": "close",
      },
    });
  });

  it("endpoint connection failures: 502, a connect timeout 504", () => {
    const refused = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:1"), { code: "ECONNREFUSED" });
    expect(rescueError(new EndpointConnectError("127.0.0.1:1", refused), call("http"))).toMatchObject({
      status: 502,
      grpcStatus: 14,
    });
    const slow = Object.assign(new Error("Connect Timeout Error"), { code: "UND_ERR_CONNECT_TIMEOUT" });
    expect(rescueError(new EndpointConnectError("127.0.0.1:1", slow), call("http"))).toMatchObject({
      status: 504,
    });
    const reset = Object.assign(new Error("other side closed"), { code: "UND_ERR_SOCKET" });
    expect(rescueError(reset, call("http"))).toMatchObject({ status: 502, close: true });
  });

  it("leaves the caller's abort, closed dispatchers and policy refusals as rejections", () => {
    expect(rescueError(new MeshError(MeshErrorCode.CANCELED, "aborted"), call("http"))).toBeUndefined();
    expect(rescueError(new MeshError(MeshErrorCode.CLOSED, "closed"), call("http"))).toBeUndefined();
    expect(rescueError(new MeshError(MeshErrorCode.EGRESS_DENIED, "denied"), call("http"))).toBeUndefined();
    expect(
      rescueError(new DOMException("This operation was aborted", "AbortError"), call("http")),
    ).toBeUndefined();
  });

  it("gRPC callers get HTTP 200 with grpc-status and an encoded grpc-message", () => {
    const answer = rescueError(streamTimeoutError("response", 250, false, "a:80"), call("grpc"));
    const { status, headers } = synthesizedHeaders(answer as NonNullable<typeof answer>, call("grpc"));
    expect(status).toBe(200);
    expect(headers["content-type"]).toBe("application/grpc");
    expect(headers["grpc-status"]).toBe("4");
    expect(decodeURIComponent(String(headers["grpc-message"]))).toBe(
      "timed out waiting for response headers: response stream timeout: 250ms",
    );
  });

  it("keeps header values to visible ASCII", () => {
    const answer = rescueError(
      new DestinationError(MeshErrorCode.DESTINATION_NO_ENDPOINTS, "no endpoints\r\nx-injected: 1 ✓"),
      call("http"),
    );
    const { headers } = synthesizedHeaders(answer as NonNullable<typeof answer>, call("http"));
    expect(headers["l5d-proxy-error"]).toBe("no endpoints??x-injected: 1 ?");
  });
});
