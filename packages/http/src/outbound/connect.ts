import { connect as netConnect, type Socket } from "node:net";
import { DestinationError, MeshError, MeshErrorCode } from "@inmesh/core";
import {
  createEndpointConnector,
  EndpointConnectError,
  endpointRoute,
  isOwnIdentityError,
} from "./connector.js";
import { opaqueDecision } from "./egress.js";
import { classifyHost, splitHostPort } from "./names.js";
import type { ResolvedDispatcherOptions } from "./options.js";
import type { OutboundDecision, OutboundResolver } from "./resolve.js";
import type { EndpointGroup, TargetRegistry } from "./targets.js";

export interface MeshConnectOptions {
  /**
   * What the connection will carry, for the transport header: opaque bytes (`opaque`, the default) or
   * HTTP/1 (`http1`, what `node:http` speaks).
   */
  session?: "opaque" | "http1";
  /** Aborts discovery, the wait for an endpoint and the handshake. */
  signal?: AbortSignal;
}

/** Opens one connection to `host:port` through the mesh. */
export type MeshConnect = (target: string, options?: MeshConnectOptions) => Promise<Socket>;

const MAX_CONNECT_ATTEMPTS = 3;

/**
 * A connection to a target as a sidecar would make it: a Service's endpoint picked by the balancer, over
 * mTLS to the endpoint's identity (through its inbound port with a transport header when it asks for
 * one); an address or external name as its OutboundPolicy says (refused with `MESH_ERR_EGRESS_DENIED`
 * when an EgressNetwork denies it); loopback as addressed. Balancing is per connection.
 */
export function createMeshConnect(
  registry: TargetRegistry,
  resolver: OutboundResolver,
  options: ResolvedDispatcherOptions,
): MeshConnect {
  return async (target, connectOptions = {}) => {
    const parsed = typeof target === "string" ? splitHostPort(target) : undefined;
    if (!parsed) {
      throw new MeshError(
        MeshErrorCode.INVALID_ARG,
        `connect target must be host:port, got ${String(target)}`,
        {
          details: { target: String(target) },
        },
      );
    }
    const signal = connectOptions.signal ?? new AbortController().signal;
    signal.throwIfAborted();
    const session = connectOptions.session ?? "opaque";
    const name = classifyHost(parsed.host, parsed.port, options);
    const decision: OutboundDecision = name
      ? (resolver.now(name) ?? (await resolver.resolve(name, parsed.host)))
      : { kind: "passthrough" };
    if (decision.kind === "passthrough") return plainConnect(parsed.host, parsed.port, options, signal);
    const group = await groupFor(decision, registry, options, signal);
    return connectThrough(group, options, session, signal);
  };
}

async function groupFor(
  decision: Exclude<OutboundDecision, { kind: "passthrough" }>,
  registry: TargetRegistry,
  options: ResolvedDispatcherOptions,
  signal: AbortSignal,
): Promise<EndpointGroup> {
  const target =
    decision.kind === "service"
      ? registry.target(decision.authority)
      : registry.addressTarget(decision.address.key, decision.address.ip, decision.address.port);
  await target.ready(signal, options.discoveryTimeoutMs);
  const verdict = opaqueDecision(decision.authority, target.outboundPolicy());
  if (verdict.denied) throw verdict.denied;
  const backend = verdict.backend;
  const original = decision.kind === "address" ? target.meshedOriginalDestination() : undefined;
  let group = original ? registry.forwardGroup(original) : target.group;
  if (backend?.kind === "forward") group = registry.forwardGroup(backend.endpoint);
  else if (backend?.kind === "balancer") group = registry.group(backend.path.toLowerCase());
  const set = await group.ready(signal, options.discoveryTimeoutMs);
  if (!set.exists) {
    throw new DestinationError(
      MeshErrorCode.DESTINATION_NOT_FOUND,
      `discovery says ${group.path} does not exist`,
      {
        details: { target: decision.authority },
      },
    );
  }
  return group;
}

async function connectThrough(
  group: EndpointGroup,
  options: ResolvedDispatcherOptions,
  session: "opaque" | "http1",
  signal: AbortSignal,
): Promise<Socket> {
  let lastError: unknown;
  for (let attempt = 0; attempt < MAX_CONNECT_ATTEMPTS; attempt++) {
    const lease = group.lease() ?? (await waitForLease(group, options.failFastTimeoutMs, signal));
    const endpoint = lease.pick.endpoint;
    const route = endpointRoute(endpoint, {
      useTransportHeader: options.useTransportHeader,
      // A raw connection carries what its user writes: never an HTTP/2 session of ours.
      http2PriorKnowledge: false,
    });
    const connector = createEndpointConnector({
      route,
      identity: options.identity,
      connectTimeoutMs: options.connectTimeoutMs,
      localAddress: options.localAddress,
      session,
    });
    group.inflight += 1;
    try {
      const socket = await new Promise<Socket>((resolve, reject) => {
        const onAbort = () => reject(signal.reason);
        signal.addEventListener("abort", onAbort, { once: true });
        connector(
          {
            hostname: endpoint.host,
            host: endpoint.address,
            protocol: "http:",
            port: String(route.dialPort),
          },
          (error, socket) => {
            signal.removeEventListener("abort", onAbort);
            if (error || !socket) reject(error ?? new Error("no socket"));
            else if (signal.aborted) {
              socket.destroy();
              reject(signal.reason);
            } else resolve(socket as Socket);
          },
        );
      });
      lease.pick.onFirstByte();
      lease.pick.onComplete("success");
      group.connected(endpoint.address);
      return socket;
    } catch (error) {
      lease.pick.onComplete(signal.aborted ? "canceled" : "failure");
      if (signal.aborted || isOwnIdentityError(error) || !(error instanceof EndpointConnectError))
        throw error;
      group.connectFailed(endpoint.address);
      lastError = error;
    } finally {
      group.inflight -= 1;
    }
  }
  throw lastError;
}

async function waitForLease(group: EndpointGroup, failFastMs: number, signal: AbortSignal) {
  const deadline = AbortSignal.any([signal, AbortSignal.timeout(failFastMs)]);
  for (;;) {
    const lease = group.lease();
    if (lease) return lease;
    try {
      await group.changed(deadline);
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      throw new DestinationError(
        MeshErrorCode.DESTINATION_NO_ENDPOINTS,
        `no endpoint of ${group.path} became ready within ${failFastMs} ms`,
        { cause: error, details: { target: group.path } },
      );
    }
  }
}

function plainConnect(
  host: string,
  port: number,
  options: ResolvedDispatcherOptions,
  signal: AbortSignal,
): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = netConnect({ host, port, signal, timeout: options.connectTimeoutMs });
    const onTimeout = () =>
      socket.destroy(
        new DestinationError(
          MeshErrorCode.DEADLINE,
          `connecting to ${host}:${port} took longer than ${options.connectTimeoutMs} ms`,
        ),
      );
    socket.once("timeout", onTimeout);
    socket.once("connect", () => {
      socket.off("timeout", onTimeout);
      socket.setTimeout(0);
      socket.off("error", reject);
      resolve(socket);
    });
    socket.once("error", reject);
  });
}
