import { type ServerUnaryCall, type ServerWritableStream, type sendUnaryData, status } from "@grpc/grpc-js";
import { inbound, outbound } from "@inmesh/proto";
import type { ClusterState } from "../model/index.js";
import {
  LOOKUP_STATUS,
  type Lookup,
  serveSnapshotWatch,
  statusError,
  type WatchRegistry,
} from "./streams.js";

export interface PolicyServiceDependencies {
  readonly state: () => ClusterState;
  readonly registry: WatchRegistry;
}

function inboundLookup(state: ClusterState, spec: inbound.PortSpec): Lookup<inbound.Server> {
  // The policy controller takes the port as a u16 and refuses 0 and anything wider.
  if (!Number.isInteger(spec.port) || spec.port < 1 || spec.port > 65535) {
    return { ok: false, code: "InvalidArgument", message: `invalid port ${spec.port}` };
  }
  const result = state.inboundServer(spec.workload, spec.port);
  return result.ok ? { ok: true, value: result.server } : result;
}

function outboundLookup(state: ClusterState, spec: outbound.TrafficSpec): Lookup<outbound.OutboundPolicy> {
  if (spec.target === undefined) return { ok: false, code: "InvalidArgument", message: "target is required" };
  const result = state.outboundPolicy(spec);
  return result.ok ? { ok: true, value: result.policy } : result;
}

function answer<T>(callback: sendUnaryData<T>, result: Lookup<T>): void {
  if (result.ok) callback(null, result.value);
  else callback(statusError(LOOKUP_STATUS[result.code], result.message));
}

function guarded<Req, Res>(
  handler: (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>) => void,
): (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>) => void {
  return (call, callback) => {
    try {
      handler(call, callback);
    } catch (error) {
      callback(statusError(status.INTERNAL, `internal error: ${(error as Error).message}`));
    }
  };
}

function guardedStream<Req, Res>(
  handler: (call: ServerWritableStream<Req, Res>) => void,
): (call: ServerWritableStream<Req, Res>) => void {
  return (call) => {
    try {
      handler(call);
    } catch (error) {
      call.emit("error", statusError(status.INTERNAL, `internal error: ${(error as Error).message}`));
    }
  };
}

/** InboundServerPolicies (GetPort, WatchPort), as the Linkerd policy controller serves it. */
export function createInboundPolicyService(
  deps: PolicyServiceDependencies,
): inbound.InboundServerPoliciesServer {
  return {
    getPort: guarded((call: ServerUnaryCall<inbound.PortSpec, inbound.Server>, callback) =>
      answer(callback, inboundLookup(deps.state(), call.request)),
    ),
    watchPort: guardedStream((call: ServerWritableStream<inbound.PortSpec, inbound.Server>) =>
      serveSnapshotWatch(
        call,
        deps.registry,
        () => inboundLookup(deps.state(), call.request),
        (message) => inbound.Server.encode(message).finish(),
      ),
    ),
  };
}

/** OutboundPolicies (Get, Watch), as the Linkerd policy controller serves it. */
export function createOutboundPolicyService(
  deps: PolicyServiceDependencies,
): outbound.OutboundPoliciesServer {
  return {
    get: guarded((call: ServerUnaryCall<outbound.TrafficSpec, outbound.OutboundPolicy>, callback) =>
      answer(callback, outboundLookup(deps.state(), call.request)),
    ),
    watch: guardedStream((call: ServerWritableStream<outbound.TrafficSpec, outbound.OutboundPolicy>) =>
      serveSnapshotWatch(
        call,
        deps.registry,
        () => outboundLookup(deps.state(), call.request),
        (message) => outbound.OutboundPolicy.encode(message).finish(),
      ),
    ),
  };
}
