import { connect as netConnect, type Socket } from "node:net";
import { type ConnectionOptions, type TLSSocket, connect as tlsConnect } from "node:tls";
import {
  DestinationError,
  hasMeshErrorCode,
  MeshChannel,
  MeshErrorCode,
  meshChannel,
  type PeerIdentity,
  type TcpConnectionMessage,
} from "@inmesh/core";
import type { Endpoint } from "@inmesh/destination";
import type { IdentityProvider } from "@inmesh/identity";
import { encodeTransportHeader, TRANSPORT_HEADER_ALPN } from "@inmesh/proto/serving";
import type { buildConnector } from "undici";

/** How one endpoint is reached; computed once per pool. */
export interface EndpointRoute {
  readonly endpoint: Endpoint;
  /** Port actually dialled: the application port, or the inbound port when a transport header is used. */
  readonly dialPort: number;
  /** Present for meshed endpoints. */
  readonly tls?: { readonly identity: string; readonly serverName: string };
  readonly transportHeader: boolean;
  /** Prior-knowledge HTTP/2 on this connection (HTTP/1 requests travel with `l5d-orig-proto`). */
  readonly http2: boolean;
}

export interface RouteOptions {
  readonly useTransportHeader: boolean;
  readonly http2PriorKnowledge: boolean;
}

/**
 * Decides how to reach an endpoint (contract §4.2, §4.4, §8.3): mTLS when discovery gave it a TLS
 * identity, plaintext otherwise; through its inbound port with a transport header when it advertises
 * `opaque_transport`; HTTP/2 with prior knowledge when it is hinted `h2`.
 */
export function endpointRoute(endpoint: Endpoint, options: RouteOptions): EndpointRoute {
  const meshed = endpoint.tlsIdentity !== undefined;
  const transportHeader = meshed && options.useTransportHeader && endpoint.opaqueTransportPort !== undefined;
  return {
    endpoint,
    dialPort: transportHeader ? (endpoint.opaqueTransportPort as number) : endpoint.port,
    ...(endpoint.tlsIdentity
      ? { tls: { identity: endpoint.tlsIdentity.name, serverName: endpoint.tlsIdentity.serverName } }
      : {}),
    transportHeader,
    http2: meshed && options.http2PriorKnowledge && endpoint.protocolHint === "h2",
  };
}

/** Identifies a pool: an endpoint whose connection parameters change gets a new pool. */
export function routeKey(route: EndpointRoute): string {
  return [
    route.endpoint.address,
    route.dialPort,
    route.tls?.identity ?? "",
    route.tls?.serverName ?? "",
    route.transportHeader ? "th" : "",
    route.http2 ? "h2" : "h1",
    route.endpoint.protocolHint ?? "",
  ].join("|");
}

/**
 * Marks an error raised while connecting, before any request byte was written: the request may go to
 * another endpoint.
 */
export class EndpointConnectError extends DestinationError {
  readonly endpointAddress: string;
  constructor(address: string, cause: unknown) {
    super(
      MeshErrorCode.DESTINATION_UNREACHABLE,
      `cannot connect to endpoint ${address}: ${(cause as Error)?.message ?? String(cause)}`,
      { cause, details: { endpoint: address } },
    );
    this.name = "EndpointConnectError";
    this.endpointAddress = address;
  }
}

const tcpOpen = meshChannel(MeshChannel.tcpOpen);
const tcpClose = meshChannel(MeshChannel.tcpClose);

function observeTcp(socket: Socket, port: number, peer: PeerIdentity | undefined): void {
  if (!tcpOpen.hasSubscribers && !tcpClose.hasSubscribers) return;
  const message: TcpConnectionMessage = {
    direction: "outbound",
    port,
    peer,
    bytesRead: 0,
    bytesWritten: 0,
    errno: undefined,
    denied: false,
  };
  if (tcpOpen.hasSubscribers) tcpOpen.publish(message);
  let errno: string | undefined;
  socket.once("error", (error: NodeJS.ErrnoException) => {
    errno = error.code;
  });
  socket.once("close", () => {
    message.bytesRead = socket.bytesRead;
    message.bytesWritten = socket.bytesWritten;
    message.errno = errno;
    if (tcpClose.hasSubscribers) tcpClose.publish(message);
  });
}

type Connector = buildConnector.connector;

/** Our own identity being unusable (not issued yet, expired) is not the endpoint's fault. */
export function isOwnIdentityError(error: unknown): boolean {
  return (
    hasMeshErrorCode(error, MeshErrorCode.IDENTITY_EXPIRED) ||
    hasMeshErrorCode(error, MeshErrorCode.IDENTITY_NOT_READY)
  );
}

export interface ConnectorOptions {
  readonly route: EndpointRoute;
  readonly identity: IdentityProvider | undefined;
  readonly connectTimeoutMs: number;
  readonly localAddress: string | undefined;
  /**
   * What the connection carries, for the transport header: `opaque` bytes (no session protocol, as
   * for opaque ports) or `http1`. @default from the route (HTTP/2 when hinted, else HTTP/1)
   */
  readonly session?: "opaque" | "http1";
}

/**
 * The undici `connect` function of one endpoint's pool. The TLS material is read from the identity
 * provider at every connect, so new connections use the current certificate generation and existing
 * ones are left alone (design rule 1); an expired identity fails the connect at once (R2). Session
 * resumption is not used (contract §4.1).
 */
export function createEndpointConnector(options: ConnectorOptions): Connector {
  const { route, identity, connectTimeoutMs, localAddress } = options;
  const { endpoint } = route;
  return (_params, callback) => {
    let settled = false;
    let timer: NodeJS.Timeout | undefined;
    const finish = (error: Error | null, socket?: Socket) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (error) {
        socket?.destroy();
        callback(isOwnIdentityError(error) ? error : new EndpointConnectError(endpoint.address, error), null);
        return;
      }
      callback(null, socket as Socket);
    };
    let socket: Socket;
    if (route.tls) {
      if (!identity) {
        finish(
          new DestinationError(
            MeshErrorCode.INVALID_CONFIG,
            `endpoint ${endpoint.address} requires mTLS as ${route.tls.identity}, but the dispatcher has no identity`,
          ),
        );
        return;
      }
      let tlsOptions: ConnectionOptions;
      try {
        tlsOptions = identity.tlsClientOptions(route.tls.identity);
      } catch (error) {
        // IdentityError NOT_READY / EXPIRED: fail fast, before any socket exists.
        settled = true;
        callback(error as Error, null);
        return;
      }
      const tlsSocket: TLSSocket = tlsConnect({
        ...tlsOptions,
        host: endpoint.host,
        port: route.dialPort,
        ...(localAddress ? { localAddress } : {}),
        servername: route.tls.serverName,
        // No ALPN on mesh TLS, except the transport-header protocol on the inbound port (contract §4.2).
        ...(route.transportHeader ? { ALPNProtocols: [TRANSPORT_HEADER_ALPN] } : {}),
      });
      socket = tlsSocket;
      tlsSocket.once("secureConnect", () => {
        const ready = () => {
          // undici speaks HTTP/2 on a socket whose ALPN says h2; mesh H2 is prior knowledge (contract §4.2).
          if (route.http2) (tlsSocket as { alpnProtocol: string | false | null }).alpnProtocol = "h2";
          observeTcp(tlsSocket, endpoint.port, {
            kind: "mesh",
            name: route.tls?.identity as string,
            tls: "established",
          });
          finish(null, tlsSocket);
        };
        if (route.transportHeader && tlsSocket.alpnProtocol === TRANSPORT_HEADER_ALPN) {
          const header = encodeTransportHeader({
            port: endpoint.port,
            name: "",
            sessionProtocol:
              options.session === "opaque" || endpoint.protocolHint === "opaque"
                ? undefined
                : route.http2
                  ? "http2"
                  : "http1",
          });
          // Flushed before the socket is handed over: an HTTP/2 session must not inherit a pending write.
          tlsSocket.write(header, (error) => {
            if (error) finish(error, tlsSocket);
            else ready();
          });
          return;
        }
        ready();
      });
    } else {
      const plain = netConnect({
        host: endpoint.host,
        port: route.dialPort,
        ...(localAddress ? { localAddress } : {}),
      });
      socket = plain;
      plain.once("connect", () => {
        observeTcp(plain, endpoint.port, undefined);
        finish(null, plain);
      });
    }
    socket.setNoDelay(true);
    socket.once("error", (error) => finish(error, socket));
    timer = setTimeout(() => {
      finish(
        new DestinationError(
          MeshErrorCode.DEADLINE,
          `connecting to ${endpoint.address} took longer than ${connectTimeoutMs} ms`,
        ),
        socket,
      );
    }, connectTimeoutMs);
    timer.unref();
  };
}
