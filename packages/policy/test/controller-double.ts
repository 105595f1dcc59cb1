import {
  credentials,
  Server,
  ServerCredentials,
  type ServerUnaryCall,
  type ServerWritableStream,
  type sendUnaryData,
  status,
} from "@grpc/grpc-js";
import { inbound } from "@inmesh/proto";

/** A WatchPort stream; `write` takes a Server message, or raw bytes to send something undecodable. */
export type WatchCall = ServerWritableStream<inbound.PortSpec, inbound.Server | Buffer>;

/**
 * A policy-controller test double: a real grpc-js server on 127.0.0.1 serving
 * InboundServerPolicies from the @inmesh/proto service definition. The handler decides per call; every
 * call is recorded. Its serializer also passes raw Buffers through, so tests can send garbage.
 */
export interface ControllerDouble {
  readonly port: number;
  readonly address: string;
  readonly calls: WatchCall[];
  handler: (call: WatchCall, index: number) => void;
  /** Streams still open (not cancelled or ended). */
  open(): WatchCall[];
  /** Kills every stream and the listener, like a crashed controller. */
  kill(): void;
}

const service = {
  ...inbound.InboundServerPoliciesService,
  watchPort: {
    ...inbound.InboundServerPoliciesService.watchPort,
    responseSerialize: (value: inbound.Server | Buffer): Buffer =>
      Buffer.isBuffer(value) ? value : Buffer.from(inbound.Server.encode(value).finish()),
  },
};

export async function startController(
  handler: (call: WatchCall, index: number) => void,
  port = 0,
): Promise<ControllerDouble> {
  const server = new Server();
  const calls: WatchCall[] = [];
  const ended = new WeakSet<WatchCall>();
  const double: ControllerDouble = {
    port: 0,
    address: "",
    calls,
    handler,
    open: () => calls.filter((c) => !ended.has(c) && !c.cancelled),
    kill: () => server.forceShutdown(),
  };
  server.addService(service, {
    getPort(_call: ServerUnaryCall<inbound.PortSpec, inbound.Server>, done: sendUnaryData<inbound.Server>) {
      done({ code: status.UNIMPLEMENTED, details: "not used" });
    },
    watchPort(call: WatchCall) {
      calls.push(call);
      call.on("cancelled", () => ended.add(call));
      call.on("finish", () => ended.add(call));
      double.handler(call, calls.length - 1);
    },
  });
  const bound = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`127.0.0.1:${port}`, ServerCredentials.createInsecure(), (error, p) =>
      error ? reject(error) : resolve(p),
    ),
  );
  return Object.assign(double, { port: bound, address: `127.0.0.1:${bound}` });
}

/** Ends a server stream with a gRPC error status. */
export function fail(call: WatchCall, code: number, details: string): void {
  call.emit("error", { code, details });
}

/** A client that reconnects fast, so controller restarts are noticed quickly. */
export function policyClient(address: string): inbound.InboundServerPoliciesClient {
  return new inbound.InboundServerPoliciesClient(address, credentials.createInsecure(), {
    "grpc.initial_reconnect_backoff_ms": 20,
    "grpc.max_reconnect_backoff_ms": 200,
  });
}

export { status };
