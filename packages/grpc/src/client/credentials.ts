import type { Socket } from "node:net";
import { type TLSSocket, connect as tlsConnect } from "node:tls";
import { CallCredentials, ChannelCredentials, type experimental } from "@grpc/grpc-js";
import { holdTickShape, isDnsName, MeshError, MeshErrorCode } from "@inmesh/core";
import type { IdentityProvider } from "@inmesh/identity";
import { encodeTransportHeader, TRANSPORT_HEADER_ALPN } from "@inmesh/proto/serving";

type SecureConnector = experimental.SecureConnector;
type GrpcUri = experimental.GrpcUri;
type ChannelOptions = Parameters<ChannelCredentials["_createSecureConnector"]>[1];

/** The identity surface the client credentials need; an `IdentityProvider` has it. */
export type MeshClientIdentity = Pick<IdentityProvider, "tlsClientOptions" | "localName">;

export interface MeshChannelCredentialsOptions {
  /** Our workload identity: its current client certificate is presented on every new connection. */
  identity: MeshClientIdentity;
  /**
   * The identity the server must prove (its certificate's single DNS SAN). Defaults to the channel's
   * `grpc.ssl_target_name_override`, else the target host.
   */
  expectedServerIdentity?: string;
  /** SNI to send. @default expectedServerIdentity (Linkerd sets both to the pod identity) */
  serverName?: string;
  /**
   * Connect through the peer's inbound port: offer ALPN `transport.l5d.io/v1` and send a transport header
   * naming this application port with session protocol HTTP/2 (contract §4.4).
   */
  transportHeaderPort?: number;
  /**
   * Also offer ALPN `h2`, for plain grpc-js TLS servers that require it. Mesh TLS carries no ALPN
   * (contract §4.2) and a sidecar ignores an offer it does not configure.
   * @default false
   */
  offerH2Alpn?: boolean;
}

function hostOf(target: GrpcUri, options: ChannelOptions): string {
  const override = options["grpc.ssl_target_name_override"];
  if (typeof override === "string" && override !== "") return override;
  const path = target.path;
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(path);
  if (bracketed) return bracketed[1] as string;
  const colon = path.lastIndexOf(":");
  return colon > 0 && !path.slice(0, colon).includes(":") ? path.slice(0, colon) : path;
}

/**
 * grpc-js channel credentials for mesh TLS. Each new connection reads the identity's current client
 * SecureContext (so rotation needs no rebuild and no new context per connection), sends SNI = the
 * server's identity, offers no ALPN (or `transport.l5d.io/v1` with a transport header), requires TLS 1.3
 * and accepts only a server whose certificate chains to the trust anchors and whose single DNS SAN is
 * the expected identity. An expired identity fails the connection attempt at once (R2).
 *
 * grpc-js's own `experimental.createCertificateProviderChannelCredentials` is not used: it builds a new
 * SecureContext for every connection, without `minVersion`, and always offers ALPN `h2`.
 *
 * @example
 * const creds = createMeshChannelCredentials({ identity, expectedServerIdentity: "books.default.serviceaccount.identity.linkerd.cluster.local" });
 * const client = new BooksClient("10.0.0.7:8080", creds);
 */
export function createMeshChannelCredentials(options: MeshChannelCredentialsOptions): ChannelCredentials {
  if (typeof options?.identity?.tlsClientOptions !== "function") {
    throw new MeshError(MeshErrorCode.INVALID_ARG, "createMeshChannelCredentials needs an identity provider");
  }
  for (const [name, value] of [
    ["expectedServerIdentity", options.expectedServerIdentity],
    ["serverName", options.serverName],
  ] as const) {
    if (value !== undefined && !isDnsName(value)) {
      throw new MeshError(MeshErrorCode.INVALID_ARG, `${name} ${JSON.stringify(value)} is not a DNS name`);
    }
  }
  const port = options.transportHeaderPort;
  if (port !== undefined && !(Number.isInteger(port) && port >= 1 && port <= 65535)) {
    throw new MeshError(MeshErrorCode.INVALID_ARG, `transportHeaderPort ${port} is outside 1-65535`);
  }
  holdTickShape();
  return new MeshChannelCredentials({ ...options });
}

class MeshChannelCredentials extends ChannelCredentials {
  readonly #options: MeshChannelCredentialsOptions;

  constructor(options: MeshChannelCredentialsOptions) {
    super();
    this.#options = options;
  }

  _isSecure(): boolean {
    return true;
  }

  _equals(other: ChannelCredentials): boolean {
    return other === this;
  }

  _createSecureConnector(
    channelTarget: GrpcUri,
    channelOptions: ChannelOptions,
    callCredentials?: CallCredentials,
  ): SecureConnector {
    const options = this.#options;
    const expected = options.expectedServerIdentity ?? hostOf(channelTarget, channelOptions);
    const serverName = options.serverName ?? expected;
    const credentials = callCredentials ?? CallCredentials.createEmpty();
    return {
      connect(socket: Socket) {
        return new Promise((resolve, reject) => {
          let tlsOptions: ReturnType<MeshClientIdentity["tlsClientOptions"]>;
          try {
            tlsOptions = options.identity.tlsClientOptions(expected);
          } catch (error) {
            reject(error);
            return;
          }
          const alpn: string[] = [];
          if (options.transportHeaderPort !== undefined) alpn.push(TRANSPORT_HEADER_ALPN);
          else if (options.offerH2Alpn) alpn.push("h2");
          const tlsSocket: TLSSocket = tlsConnect({
            ...tlsOptions,
            socket,
            servername: serverName,
            ...(alpn.length > 0 ? { ALPNProtocols: alpn } : {}),
          });
          const onError = (error: Error) => reject(error);
          tlsSocket.once("error", onError);
          tlsSocket.once("close", () => reject(new Error("connection closed during the TLS handshake")));
          tlsSocket.once("secureConnect", () => {
            tlsSocket.removeListener("error", onError);
            tlsSocket.removeAllListeners("close");
            const done = () => resolve({ socket: tlsSocket, secure: true });
            if (
              options.transportHeaderPort !== undefined &&
              tlsSocket.alpnProtocol === TRANSPORT_HEADER_ALPN
            ) {
              const header = encodeTransportHeader({
                port: options.transportHeaderPort,
                name: "",
                sessionProtocol: "http2",
              });
              // Flushed before grpc-js puts an HTTP/2 session on the socket.
              tlsSocket.write(header, (error) => (error ? reject(error) : done()));
              return;
            }
            done();
          });
        });
      },
      waitForReady: () => Promise.resolve(),
      getCallCredentials: () => credentials,
      destroy() {},
    };
  }
}
