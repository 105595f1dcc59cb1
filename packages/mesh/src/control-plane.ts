import { type ChannelCredentials, type ChannelOptions, credentials, experimental } from "@grpc/grpc-js";
import type { ControlPlaneAddress } from "@inmesh/core";
import type { IdentityProvider } from "@inmesh/identity";
import { destination, inbound, outbound } from "@inmesh/proto";

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

/**
 * grpc-js asks a CertificateProvider for the trust anchors and our certificate; this one forwards the
 * identity provider's updates, so channels wait for the first certificate and pick up rotations on
 * their next connection. A control-plane channel makes few connections, so grpc-js building a
 * context per connection costs nothing that matters here.
 */
export function identityCertificateProvider(identity: IdentityProvider): experimental.CertificateProvider {
  const caListeners = new Set<experimental.CaCertificateUpdateListener>();
  const identityListeners = new Set<experimental.IdentityCertificateUpdateListener>();
  let latest: {
    ca: experimental.CaCertificateUpdate;
    identity: experimental.IdentityCertificateUpdate;
  } | null = null;
  let unsubscribe: (() => void) | undefined;

  const start = () => {
    unsubscribe ??= identity.subscribe((material) => {
      latest = material
        ? {
            ca: { caCertificate: Buffer.from(material.trustAnchorsPem) },
            identity: {
              certificate: Buffer.from(material.certificateChainPem),
              privateKey: Buffer.from(material.privateKeyPem),
            },
          }
        : null;
      for (const listener of caListeners) listener(latest?.ca ?? null);
      for (const listener of identityListeners) listener(latest?.identity ?? null);
    });
  };
  const stopWhenUnused = () => {
    if (caListeners.size === 0 && identityListeners.size === 0) {
      unsubscribe?.();
      unsubscribe = undefined;
    }
  };
  return {
    addCaCertificateListener(listener) {
      caListeners.add(listener);
      start();
      if (latest) listener(latest.ca);
    },
    removeCaCertificateListener(listener) {
      caListeners.delete(listener);
      stopWhenUnused();
    },
    addIdentityCertificateListener(listener) {
      identityListeners.add(listener);
      start();
      if (latest) listener(latest.identity);
    },
    removeIdentityCertificateListener(listener) {
      identityListeners.delete(listener);
      stopWhenUnused();
    },
  };
}

export const defaultControlPlaneCredentials: ControlPlaneCredentialsFactory = (address, identity) => {
  if (address.plaintext) return credentials.createInsecure();
  const provider = identityCertificateProvider(identity);
  return experimental.createCertificateProviderChannelCredentials(provider, provider, {
    checkServerIdentity: identity.checkServerIdentity(address.serverName as string),
  });
};

export interface ControlPlaneClients {
  readonly policy: InstanceType<typeof inbound.InboundServerPoliciesClient> | undefined;
  readonly outboundPolicy: InstanceType<typeof outbound.OutboundPoliciesClient> | undefined;
  readonly destination: InstanceType<typeof destination.DestinationClient> | undefined;
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
  // Inbound and outbound policy are one controller: share its channel.
  const outboundPolicy =
    policyAddress && policyCredentials && policy
      ? new outbound.OutboundPoliciesClient(grpcTarget(policyAddress), policyCredentials, {
          ...channelOptions(policyAddress),
          channelOverride: policy.getChannel(),
        })
      : undefined;
  const destinationClient = destinationAddress
    ? new destination.DestinationClient(
        grpcTarget(destinationAddress),
        credentialsFor(destinationAddress, identity),
        channelOptions(destinationAddress),
      )
    : undefined;
  return {
    policy,
    outboundPolicy,
    destination: destinationClient,
    close() {
      outboundPolicy?.close();
      policy?.close();
      destinationClient?.close();
    },
  };
}
