import type { experimental } from "@grpc/grpc-js";
import type { IdentityMaterial, IdentityProvider } from "@inmesh/identity";

type CertificateProvider = experimental.CertificateProvider;
type CaListener = experimental.CaCertificateUpdateListener;
type IdentityListener = experimental.IdentityCertificateUpdateListener;

/**
 * A grpc-js `CertificateProvider` fed by the identity's updates (trust anchors, certificate chain and
 * key of every generation; `null` once the certificate expires), for APIs that take one, such as
 * `experimental.createCertificateProviderServerCredentials`. Mesh clients should prefer
 * `createMeshChannelCredentials`, which shares one SecureContext per generation and pins TLS 1.3.
 */
export function createMeshCertificateProvider(
  identity: Pick<IdentityProvider, "subscribe">,
): CertificateProvider & { close(): void } {
  const caListeners = new Set<CaListener>();
  const identityListeners = new Set<IdentityListener>();
  let latest: IdentityMaterial | null | undefined;
  let unsubscribe: (() => void) | undefined;

  const caUpdate = (material: IdentityMaterial | null) =>
    material ? { caCertificate: Buffer.from(material.trustAnchorsPem) } : null;
  const identityUpdate = (material: IdentityMaterial | null) =>
    material
      ? {
          certificate: Buffer.from(material.certificateChainPem),
          privateKey: Buffer.from(material.privateKeyPem),
        }
      : null;

  const ensureSubscribed = () => {
    unsubscribe ??= identity.subscribe((material) => {
      latest = material;
      for (const listener of caListeners) listener(caUpdate(material));
      for (const listener of identityListeners) listener(identityUpdate(material));
    });
  };
  const maybeUnsubscribe = () => {
    if (caListeners.size === 0 && identityListeners.size === 0 && unsubscribe) {
      unsubscribe();
      unsubscribe = undefined;
      latest = undefined;
    }
  };

  return {
    addCaCertificateListener(listener) {
      const subscribed = unsubscribe !== undefined;
      caListeners.add(listener);
      ensureSubscribed();
      // A new subscription replays the current material itself; an existing one does not.
      if (subscribed && latest !== undefined) listener(caUpdate(latest));
    },
    removeCaCertificateListener(listener) {
      caListeners.delete(listener);
      maybeUnsubscribe();
    },
    addIdentityCertificateListener(listener) {
      const subscribed = unsubscribe !== undefined;
      identityListeners.add(listener);
      ensureSubscribed();
      if (subscribed && latest !== undefined) listener(identityUpdate(latest));
    },
    removeIdentityCertificateListener(listener) {
      identityListeners.delete(listener);
      maybeUnsubscribe();
    },
    close() {
      caListeners.clear();
      identityListeners.clear();
      maybeUnsubscribe();
    },
  };
}
