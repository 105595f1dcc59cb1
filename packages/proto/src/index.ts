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
 * The wire reader and writer the codecs are built on, bundled into this package: code that reads
 * messages field by field and hands the reader to a codec's `decode` must use these classes, since the
 * codecs test `instanceof BinaryReader`.
 */
export { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
export {
  durationFromMs,
  durationToMs,
  ipAddressFromString,
  ipAddressToString,
  ipNetworkFromString,
  ipNetworkToString,
  tcpAddressFromString,
  tcpAddressToString,
  timestampFromMs,
  timestampToMs,
} from "./convert.js";
export type { DecodeOptions, MessageCodec } from "./decode.js";
export { DEFAULT_MAX_MESSAGE_BYTES, decodeMessage } from "./decode.js";
export type { SessionProtocolName, TransportHeader, TransportHeaderParse } from "./transport-header.js";
export {
  decodeTransportHeader,
  encodeTransportHeader,
  MAX_TRANSPORT_HEADER_BYTES,
  parseTransportHeader,
  TRANSPORT_HEADER_ALPN,
  TRANSPORT_HEADER_PREFACE,
} from "./transport-header.js";
/**
 * One namespace per .proto package, because several packages define messages of the same name
 * (inbound.HttpRoute and outbound.HttpRoute, inbound.ProxyProtocol and outbound.ProxyProtocol).
 */
export {
  destination,
  duration,
  grpcRoute,
  httpRoute,
  httpTypes,
  identity,
  inbound,
  meta,
  net,
  opaqueRoute,
  outbound,
  timestamp,
  tlsRoute,
  transportHeader,
};
