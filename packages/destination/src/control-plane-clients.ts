import { destination, outbound } from "@inmesh/proto";

/*
 * The gRPC clients discovery streams from. createMesh builds them from here, so their generated code
 * (most of @inmesh/proto) is loaded with discovery, never by a service that only serves.
 */
export const DestinationClient = destination.DestinationClient;
export const OutboundPoliciesClient = outbound.OutboundPoliciesClient;
