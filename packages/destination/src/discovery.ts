import type { Client } from "@grpc/grpc-js";
import {
  type BackoffOptions,
  type Closable,
  ConfigError,
  closeOnce,
  DestinationError,
  MeshError,
  MeshErrorCode,
  parseIpAddress,
} from "@inmesh/core";
import { destination, outbound, tcpAddressFromString } from "@inmesh/proto";
import { type Clock, defaultRandom, type RandomSource, systemClock } from "./clock.js";
import { applyEndpointUpdate, type EndpointSet } from "./endpoint.js";
import { createEndpointUpdateFold } from "./endpoint-fold.js";
import { LIMITS } from "./limits.js";
import { compileOutboundPolicy, type NoOutboundPolicy, type OutboundPolicy } from "./outbound-policy.js";
import { compileProfile, type NoServiceProfile, type ServiceProfile } from "./profile.js";
import {
  createSharedWatch,
  createWatchHandle,
  GrpcCode,
  type SharedWatch,
  type StatusOutcome,
  type StreamTimeouts,
  type Watch,
  type WatchKind,
} from "./watch.js";

/** The grpc-js client surface the watches use; pass `new destination.DestinationClient(...)`. */
export type StreamingClient = Pick<Client, "makeServerStreamRequest">;

export interface DiscoveryOptions {
  /** For `watchEndpoints` and `watchProfile`; built by the caller, who owns its (m)TLS credentials. */
  destinationClient?: StreamingClient;
  /** For `watchOutboundPolicy`. */
  policyClient?: StreamingClient;
  /** `GetDestination.context_token`: JSON `{"ns","nodeName","pod"}` (see `createContextToken`). @default "" */
  contextToken?: string;
  /** `TrafficSpec.source_workload`: JSON `{"ns","pod"}` or `ns:pod`. Required for `watchOutboundPolicy`. */
  sourceWorkload?: string;
  /** Reconnect backoff. @default 100 ms → 60 s, jitter 0.1 */
  backoff?: BackoffOptions;
  /** @default 3000 */
  initialTimeoutMs?: number;
  /** @default 300000 */
  idleTimeoutMs?: number;
  /** @default 3600000 */
  maxStreamLifetimeMs?: number;
  /** Largest message decoded; larger ones restart the stream. @default 4 MiB */
  maxMessageBytes?: number;
  /**
   * Longest an endpoint update may hold the event loop in one turn; a bigger update is applied over
   * several turns, other I/O running in between. @default 4
   */
  updateSliceMs?: number;
  /** Distinct watched targets (each is one gRPC stream). @default 1024 */
  maxWatches?: number;
  /** Clock for the profiles' retry budgets. @default performance.now */
  clock?: Clock;
  /** @default secureRandom */
  random?: RandomSource;
}

/** `Profile` watches deliver either a profile or "none" (the controller has no profile for the target). */
export type ProfileState = ServiceProfile | NoServiceProfile;
/** `OutboundPolicy` watches deliver either a policy or "none" (NotFound/Unimplemented: fall back). */
export type OutboundPolicyState = OutboundPolicy | NoOutboundPolicy;

/**
 * Linkerd discovery over caller-supplied grpc-js clients. Watches of the same target share one stream
 * and end with their last handle.
 */
export interface Discovery extends Closable {
  /**
   * Endpoints of `svc.ns.svc.cluster.local:port` (`Destination.Get`). NotFound and InvalidArgument end
   * the watch with `DestinationError` `MESH_ERR_DESTINATION_NOT_FOUND`; other errors reconnect.
   */
  watchEndpoints(authority: string): Watch<EndpointSet>;
  /** ServiceProfile of an authority or `ip:port` (`Destination.GetProfile`). */
  watchProfile(target: string): Watch<ProfileState>;
  /** OutboundPolicy of an authority or `ip:port` (`OutboundPolicies.Watch`). */
  watchOutboundPolicy(target: string): Watch<OutboundPolicyState>;
  /** Number of open streams. */
  activeWatches(): number;
}

const AUTHORITY = /^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?(:\d{1,5})?$/;

function parseTarget(
  target: string,
  allowIp: boolean,
): { authority: string; ip?: { host: string; port: number } } {
  const text = target.trim().toLowerCase();
  const bracketed = /^\[([0-9a-f:.]+)\]:(\d{1,5})$/.exec(text);
  const plain = /^(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})$/.exec(text);
  const ipMatch = bracketed ?? plain;
  if (ipMatch) {
    const host = ipMatch[1] as string;
    const port = Number(ipMatch[2]);
    if (parseIpAddress(host) && port >= 1 && port <= 65535) {
      if (!allowIp) return { authority: text };
      return { authority: text, ip: { host, port } };
    }
  }
  if (!AUTHORITY.test(text)) {
    throw new DestinationError(
      MeshErrorCode.INVALID_ARG,
      `invalid discovery target ${JSON.stringify(target)}`,
      {
        details: { target },
      },
    );
  }
  const port = text.includes(":") ? Number(text.slice(text.lastIndexOf(":") + 1)) : undefined;
  if (port !== undefined && !(port >= 1 && port <= 65535)) {
    throw new DestinationError(MeshErrorCode.INVALID_ARG, `invalid port in ${JSON.stringify(target)}`, {
      details: { target },
    });
  }
  return { authority: text };
}

function positive(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!(Number.isFinite(value) && value > 0)) {
    throw new ConfigError(`${name} must be a positive number, got ${value}`, { details: { variable: name } });
  }
  return value;
}

/** Builds the `context_token` the destination controller expects (contract §2.3). */
export function createContextToken(context: {
  ns?: string | undefined;
  nodeName?: string | undefined;
  pod?: string | undefined;
}): string {
  const token: Record<string, string> = {};
  if (context.ns) token.ns = context.ns;
  if (context.nodeName) token.nodeName = context.nodeName;
  if (context.pod) token.pod = context.pod;
  return JSON.stringify(token);
}

export function createDiscovery(options: DiscoveryOptions): Discovery {
  if (!options.destinationClient && !options.policyClient) {
    throw new ConfigError("createDiscovery needs a destinationClient, a policyClient, or both", {
      details: { variable: "destinationClient" },
    });
  }
  const timeouts: StreamTimeouts = {
    initialTimeoutMs: positive("initialTimeoutMs", options.initialTimeoutMs, 3000),
    idleTimeoutMs: positive("idleTimeoutMs", options.idleTimeoutMs, 300_000),
    maxLifetimeMs: positive("maxStreamLifetimeMs", options.maxStreamLifetimeMs, 3_600_000),
  };
  const maxMessageBytes = positive("maxMessageBytes", options.maxMessageBytes, LIMITS.maxMessageBytes);
  const maxWatches = positive("maxWatches", options.maxWatches, 1024);
  const updateSliceMs = positive("updateSliceMs", options.updateSliceMs, 4);
  const backoff: BackoffOptions = { minMs: 100, maxMs: 60_000, jitterRatio: 0.1, ...options.backoff };
  const contextToken = options.contextToken ?? "";
  const clock = options.clock ?? systemClock;
  const random = options.random ?? defaultRandom;
  if (contextToken.length > 4096)
    throw new ConfigError("contextToken is too long", { details: { variable: "contextToken" } });

  const shared = new Map<string, { watch: SharedWatch<unknown>; refs: number }>();

  const acquire = <T>(kind: WatchKind, target: string, create: () => SharedWatch<T>): Watch<T> => {
    if (lifecycle.closed) throw new MeshError(MeshErrorCode.CLOSED, "discovery is closed");
    const key = `${kind}\u0000${target}`;
    let entry = shared.get(key);
    if (!entry) {
      if (shared.size >= maxWatches) {
        throw new DestinationError(
          MeshErrorCode.DESTINATION_WATCH_LIMIT,
          `cannot watch ${target}: ${shared.size} targets are already watched (maxWatches)`,
          { details: { maxWatches } },
        );
      }
      entry = { watch: create() as SharedWatch<unknown>, refs: 0 };
      shared.set(key, entry);
    }
    entry.refs += 1;
    const current = entry;
    return createWatchHandle(current.watch as SharedWatch<T>, () => {
      current.refs -= 1;
      if (current.refs === 0 && shared.get(key) === current) {
        shared.delete(key);
        current.watch.close();
      }
    });
  };

  const requireClient = (client: StreamingClient | undefined, name: string): StreamingClient => {
    if (!client)
      throw new ConfigError(`createDiscovery was given no ${name}`, { details: { variable: name } });
    return client;
  };

  const common = { maxMessageBytes, backoff, timeouts, random };

  const lifecycle = closeOnce(() => {
    for (const entry of shared.values()) entry.watch.close();
    shared.clear();
  });

  return {
    watchEndpoints(authority) {
      const client = requireClient(options.destinationClient, "destinationClient");
      const { authority: path } = parseTarget(authority, false);
      return acquire("endpoints", path, () =>
        createSharedWatch<destination.Update, EndpointSet>({
          ...common,
          kind: "endpoints",
          target: path,
          client,
          method: destination.DestinationService.get.path,
          request: destination.GetDestination.encode({ scheme: "", path, contextToken }).finish(),
          codec: destination.Update,
          messageName: "destination.Update",
          apply: applyEndpointUpdate,
          fold: createEndpointUpdateFold({ maxMessageBytes }),
          sliceMs: updateSliceMs,
          onStatus(status): StatusOutcome<EndpointSet> {
            if (status.code === GrpcCode.NOT_FOUND || status.code === GrpcCode.INVALID_ARGUMENT) {
              return {
                kind: "terminal",
                error: new DestinationError(
                  MeshErrorCode.DESTINATION_NOT_FOUND,
                  `destination ${path} not found: ${status.details || `gRPC status ${status.code}`}`,
                  { details: { target: path, grpcCode: status.code } },
                ),
              };
            }
            return { kind: "retry" };
          },
        }),
      );
    },

    watchProfile(target) {
      const client = requireClient(options.destinationClient, "destinationClient");
      const { authority: path } = parseTarget(target, true);
      return acquire("profile", path, () =>
        createSharedWatch<destination.DestinationProfile, ProfileState>({
          ...common,
          kind: "profile",
          target: path,
          client,
          method: destination.DestinationService.getProfile.path,
          request: destination.GetDestination.encode({ scheme: "", path, contextToken }).finish(),
          codec: destination.DestinationProfile,
          messageName: "destination.DestinationProfile",
          apply(previous, message) {
            const previousBudget = previous?.kind === "profile" ? previous.retryBudget : undefined;
            return compileProfile(message, { clock, previousBudget });
          },
          onStatus(status): StatusOutcome<ProfileState> {
            // linkerd2-proxy treats a refused profile lookup as "no profile" and routes by policy.
            if (status.code === GrpcCode.NOT_FOUND) return { kind: "final", value: noProfile("not-found") };
            if (status.code === GrpcCode.INVALID_ARGUMENT)
              return { kind: "final", value: noProfile("invalid-argument") };
            if (status.code === GrpcCode.UNIMPLEMENTED)
              return { kind: "final", value: noProfile("unimplemented") };
            return { kind: "retry" };
          },
        }),
      );
    },

    watchOutboundPolicy(target) {
      const client = requireClient(options.policyClient, "policyClient");
      const sourceWorkload = options.sourceWorkload;
      if (!sourceWorkload) {
        throw new ConfigError("watchOutboundPolicy needs the sourceWorkload option", {
          details: { variable: "sourceWorkload" },
        });
      }
      const parsed = parseTarget(target, true);
      const spec: outbound.TrafficSpec = {
        sourceWorkload,
        target: parsed.ip
          ? { $case: "addr", value: tcpAddressFromString(parsed.ip.host, parsed.ip.port) }
          : { $case: "authority", value: parsed.authority },
      };
      return acquire("outbound-policy", parsed.authority, () =>
        createSharedWatch<outbound.OutboundPolicy, OutboundPolicyState>({
          ...common,
          kind: "outbound-policy",
          target: parsed.authority,
          client,
          method: outbound.OutboundPoliciesService.watch.path,
          request: outbound.TrafficSpec.encode(spec).finish(),
          codec: outbound.OutboundPolicy,
          messageName: "outbound.OutboundPolicy",
          apply: (_previous, message) => compileOutboundPolicy(message),
          onStatus(status): StatusOutcome<OutboundPolicyState> {
            if (status.code === GrpcCode.NOT_FOUND) return { kind: "final", value: noPolicy("not-found") };
            if (status.code === GrpcCode.UNIMPLEMENTED)
              return { kind: "final", value: noPolicy("unimplemented") };
            if (status.code === GrpcCode.INVALID_ARGUMENT || status.code === GrpcCode.FAILED_PRECONDITION) {
              return {
                kind: "terminal",
                error: new DestinationError(
                  MeshErrorCode.CP_REJECTED,
                  `policy controller rejected ${parsed.authority}: ${status.details || `gRPC status ${status.code}`}`,
                  { details: { target: parsed.authority, grpcCode: status.code } },
                ),
              };
            }
            return { kind: "retry" };
          },
        }),
      );
    },

    activeWatches: () => shared.size,
    close: lifecycle.close,
    [Symbol.asyncDispose]: lifecycle.close,
  };
}

function noProfile(reason: NoServiceProfile["reason"]): NoServiceProfile {
  return Object.freeze({ kind: "none", reason });
}

function noPolicy(reason: NoOutboundPolicy["reason"]): NoOutboundPolicy {
  return Object.freeze({ kind: "none", reason });
}
