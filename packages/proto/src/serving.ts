/**
 * What a meshed service needs to start and serve: the identity and inbound policy APIs, the transport
 * header and the decoder. createMesh loads this alone; the destination and outbound APIs, more than half
 * of the generated code, come with discovery on the first outbound call.
 */
import * as identity from "./gen/identity.js";
import * as inbound from "./gen/inbound.js";

export { timestampToMs } from "./convert.js";
export type { DecodeOptions, MessageCodec } from "./decode.js";
export { DEFAULT_MAX_MESSAGE_BYTES, decodeMessage } from "./decode.js";
export type { SessionProtocolName, TransportHeader, TransportHeaderParse } from "./transport-header.js";
export {
  encodeTransportHeader,
  MAX_TRANSPORT_HEADER_BYTES,
  parseTransportHeader,
  TRANSPORT_HEADER_ALPN,
} from "./transport-header.js";
export { identity, inbound };
