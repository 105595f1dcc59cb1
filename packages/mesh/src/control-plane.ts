import { type ChannelCredentials, type ChannelOptions, credentials, experimental } from "@grpc/grpc-js";
import type { ControlPlaneAddress } from "@inmesh/core";
import { createMeshCertificateProvider } from "@inmesh/grpc/credentials";
import type { IdentityProvider } from "@inmesh/identity";
import type { destination, outbound } from "@inmesh/proto";
import { inbound } from "@inmesh/proto/serving";
import { destinationModule } from "./outbound-module.js";

/** Every control-plane message is capped (R7: a stream may not make us buffer a huge message). */
export const CONTROL_PLANE_MAX_MESSAGE_BYTES = 4 * 1024 * 1024;

export function grpcTarget(address: ControlPlaneAddress): string {
  return address.host.includes(":")
    ? `ipv6:[${address.host}]:${address.port}`
    : `${address.host}:${address.port}`;
}

function channelOptions(address: ControlPlaneAddress): ChannelOptions {
  return {
    "grpc.max_receive_message_length": CONTROL_PLANE_MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": CONTROL_PLANE_MAX_MESSAGE_BYTES,
    // Real control-plane pods sit behind a headless Service: balance over every address it resolves to.
    "grpc.service_config": JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }),
    ...(address.plaintext ? {} : { "grpc.ssl_target_name_override": address.serverName ?? address.host }),
  };
}

/**
 * Plaintext to a loopback control plane (as linkerd2-proxy does), otherwise mTLS with our current
 * certificate, checking that the controller presents `<NAME>_SVC_NAME` as its single DNS SAN. The
 * credentials may be created before identity is ready and follow every rotation.
 */
export type ControlPlaneCredentialsFactory = (
  address: ControlPlaneAddress,
  identity: IdentityProvider,
) => ChannelCredentials;

// The CertificateProvider makes channels wait for the first certificate instead of failing (and backing
// off) while identity is still being issued, and picks up rotations on the next connection. A
// control-plane channel makes few connections, so a context per connection costs nothing here.
export const defaultControlPlaneCredentials: ControlPlaneCredentialsFactory = (address, identity) => {
  if (address.plaintext) return credentials.createInsecure();
  const provider = createMeshCertificateProvider(identity);
  return experimental.createCertificateProviderChannelCredentials(provider, provider, {
    checkServerIdentity: identity.checkServerIdentity(address.serverName as string),
  });
};

export interface ControlPlaneClients {
  readonly policy: InstanceType<typeof inbound.InboundServerPoliciesClient> | undefined;
  /** Created on first read: only discovery (the outbound side) reads it. */
  readonly outboundPolicy: InstanceType<typeof outbound.OutboundPoliciesClient> | undefined;
  /** Created on first read: only discovery (the outbound side) reads it. */
  readonly destination: InstanceType<typeof destination.DestinationClient> | undefined;
  /** Whether discovery has a controller to ask (reading the clients would create them). */
  readonly discoveryConfigured: boolean;
  close(): void;
}

export function openControlPlaneClients(
  addresses: { policy: ControlPlaneAddress | undefined; destination: ControlPlaneAddress | undefined },
  identity: IdentityProvider,
  credentialsFor: ControlPlaneCredentialsFactory,
): ControlPlaneClients {
  const policyAddress = addresses.policy;
  const destinationAddress = addresses.destination;
  const policyCredentials = policyAddress ? credentialsFor(policyAddress, identity) : undefined;
  const policy =
    policyAddress && policyCredentials
      ? new inbound.InboundServerPoliciesClient(
          grpcTarget(policyAddress),
          policyCredentials,
          channelOptions(policyAddress),
        )
      : undefined;
  // The outbound clients (a grpc-js client and, for the destination controller, a channel and its
  // credentials each) are only needed by discovery, which an inbound-only service never starts; their
  // code comes with @inmesh/destination, loaded on first outbound use.
  let closed = false;
  let outboundPolicy: InstanceType<typeof outbound.OutboundPoliciesClient> | undefined;
  let destinationClient: InstanceType<typeof destination.DestinationClient> | undefined;
  return {
    policy,
    get outboundPolicy() {
      // Inbound and outbound policy are one controller: share its channel.
      if (outboundPolicy === undefined && !closed && policyAddress && policyCredentials && policy) {
        const { OutboundPoliciesClient } = destinationModule.now();
        outboundPolicy = new OutboundPoliciesClient(grpcTarget(policyAddress), policyCredentials, {
          ...channelOptions(policyAddress),
          channelOverride: policy.getChannel(),
        });
      }
      return outboundPolicy;
    },
    get destination() {
      if (destinationClient === undefined && !closed && destinationAddress) {
        const { DestinationClient } = destinationModule.now();
        destinationClient = new DestinationClient(
          grpcTarget(destinationAddress),
          credentialsFor(destinationAddress, identity),
          channelOptions(destinationAddress),
        );
      }
      return destinationClient;
    },
    discoveryConfigured: destinationAddress !== undefined || policy !== undefined,
    close() {
      closed = true;
      outboundPolicy?.close();
      policy?.close();
      destinationClient?.close();
    },
  };
}
