import type { Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import { NO_PEER, type PeerIdentity } from "@inmesh/core";
import type { IdentityProvider } from "@inmesh/identity";
import { clientFacts } from "@inmesh/policy";
import type { ConnectionState } from "./gate.js";

/** What the inbound side needs from an `IdentityProvider` (the whole provider satisfies it). */
export type MeshServerIdentity = Pick<IdentityProvider, "localName" | "tlsServerOptions" | "peerIdentity">;

export function connectionState(
  socket: Socket | TLSSocket,
  peer: PeerIdentity,
  options: {
    readonly tls: boolean;
    readonly transportHeader: boolean;
    readonly policyWaitUntil?: number | undefined;
  },
): ConnectionState {
  // `loopback` is an outbound reason: Linkerd labels every inbound plaintext connection from a remote
  // (loopback included) `no_tls_from_remote`.
  if (peer.kind === "none" && peer.reason === "loopback") peer = NO_PEER;
  const facts = clientFacts(socket.remoteAddress, peer);
  return {
    facts,
    peer,
    meshed: facts.identity !== undefined,
    tls: options.tls,
    transportHeader: options.transportHeader,
    targetAddress: formatTarget(socket.localAddress, socket.localPort),
    policyWaitUntil: options.policyWaitUntil,
  };
}

function formatTarget(address: string | undefined, port: number | undefined): string {
  if (address === undefined) return "";
  const host = address.startsWith("::ffff:") && address.includes(".") ? address.slice(7) : address;
  return host.includes(":") ? `[${host}]:${port ?? 0}` : `${host}:${port ?? 0}`;
}

const cache = new WeakMap<object, ConnectionState>();

/**
 * The connection state of a socket accepted by a server the application created itself (an
 * `https.createServer(identity.tlsServerOptions(), …)`, or a plain `http.createServer`), computed once
 * per connection and cached. `key` is the socket, or the HTTP/2 session of compat requests.
 */
export function standaloneConnectionState(
  identity: MeshServerIdentity,
  key: object,
  socket: Socket | TLSSocket,
): ConnectionState {
  const cached = cache.get(key);
  if (cached !== undefined) return cached;
  const tls = (socket as TLSSocket).encrypted === true;
  const state = connectionState(socket, identity.peerIdentity(socket), { tls, transportHeader: false });
  cache.set(key, state);
  return state;
}
