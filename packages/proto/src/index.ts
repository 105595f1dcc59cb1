import * as destination from "./gen/destination.js";
import * as duration from "./gen/google/protobuf/duration.js";
import * as timestamp from "./gen/google/protobuf/timestamp/timestamp.js";
import * as grpcRoute from "./gen/grpc_route.js";
import * as httpRoute from "./gen/http_route.js";
import * as httpTypes from "./gen/http_types.js";
import * as identity from "./gen/identity.js";
import * as inbound from "./gen/inbound.js";
import * as meta from "./gen/meta.js";
import * as net from "./gen/net.js";
import * as opaqueRoute from "./gen/opaque_route.js";
import * as outbound from "./gen/outbound.js";
import * as tlsRoute from "./gen/tls_route.js";
import * as transportHeader from "./gen/transport_header.js";

/**
 * One namespace per .proto package, because several packages define messages of the same name
 * (inbound.HttpRoute and outbound.HttpRoute, inbound.ProxyProtocol and outbound.ProxyProtocol).
 */
export {
  destination,
  duration,
  timestamp,
  grpcRoute,
  httpRoute,
  httpTypes,
  identity,
  inbound,
  meta,
  net,
  opaqueRoute,
  outbound,
  tlsRoute,
  transportHeader,
};

export { decodeMessage, DEFAULT_MAX_MESSAGE_BYTES } from "./decode.js";
export type { DecodeOptions, MessageCodec } from "./decode.js";
export {
  TRANSPORT_HEADER_ALPN,
  TRANSPORT_HEADER_PREFACE,
  MAX_TRANSPORT_HEADER_BYTES,
  encodeTransportHeader,
  parseTransportHeader,
  decodeTransportHeader,
} from "./transport-header.js";
export type { TransportHeader, TransportHeaderParse, SessionProtocolName } from "./transport-header.js";
export {
  durationFromMs,
  durationToMs,
  timestampFromMs,
  timestampToMs,
  ipAddressFromString,
  ipAddressToString,
  tcpAddressFromString,
  tcpAddressToString,
  ipNetworkFromString,
  ipNetworkToString,
} from "./convert.js";
