import {
  credentials,
  Server,
  ServerCredentials,
  type ServerUnaryCall,
  type ServerWritableStream,
  type sendUnaryData,
  status,
} from "@grpc/grpc-js";
import { destination, outbound } from "@inmesh/proto";

export type GetCall = ServerWritableStream<destination.GetDestination, destination.Update>;
export type ProfileCall = ServerWritableStream<destination.GetDestination, destination.DestinationProfile>;
export type WatchCall = ServerWritableStream<outbound.TrafficSpec, outbound.OutboundPolicy>;

export interface Handlers {
  get?: (call: GetCall, index: number) => void;
  getProfile?: (call: ProfileCall, index: number) => void;
  watch?: (call: WatchCall, index: number) => void;
}

/**
 * A control-plane test double: a real grpc-js server on 127.0.0.1 built from the @inmesh/proto service
 * definitions. Handlers decide per call what to send; every call is recorded.
 */
export interface ControlPlaneDouble {
  readonly port: number;
  readonly address: string;
  readonly getCalls: GetCall[];
  readonly profileCalls: ProfileCall[];
  readonly watchCalls: WatchCall[];
  handlers: Handlers;
  /** Kills every stream and the listener, like a crashed controller. */
  kill(): void;
}

export async function startControlPlane(handlers: Handlers = {}, port = 0): Promise<ControlPlaneDouble> {
  const server = new Server();
  const getCalls: GetCall[] = [];
  const profileCalls: ProfileCall[] = [];
  const watchCalls: WatchCall[] = [];
  const double: ControlPlaneDouble = {
    port: 0,
    address: "",
    getCalls,
    profileCalls,
    watchCalls,
    handlers,
    kill: () => server.forceShutdown(),
  };
  server.addService(destination.DestinationService, {
    get(call: GetCall) {
      getCalls.push(call);
      double.handlers.get?.(call, getCalls.length - 1);
    },
    getProfile(call: ProfileCall) {
      profileCalls.push(call);
      double.handlers.getProfile?.(call, profileCalls.length - 1);
    },
  });
  server.addService(outbound.OutboundPoliciesService, {
    get(
      _call: ServerUnaryCall<outbound.TrafficSpec, outbound.OutboundPolicy>,
      done: sendUnaryData<outbound.OutboundPolicy>,
    ) {
      done({ code: status.UNIMPLEMENTED, details: "not used" });
    },
    watch(call: WatchCall) {
      watchCalls.push(call);
      double.handlers.watch?.(call, watchCalls.length - 1);
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
export function fail(
  call: { emit(event: "error", error: unknown): boolean },
  code: number,
  details: string,
): void {
  call.emit("error", { code, details });
}

/** Clients that retry connections fast, so restarts are noticed quickly. */
export function testClients(address: string) {
  const options = { "grpc.initial_reconnect_backoff_ms": 20, "grpc.max_reconnect_backoff_ms": 200 };
  const insecure = credentials.createInsecure();
  return {
    destinationClient: new destination.DestinationClient(address, insecure, options),
    policyClient: new outbound.OutboundPoliciesClient(address, insecure, options),
    close() {
      this.destinationClient.close();
      this.policyClient.close();
    },
  };
}

export { status };
