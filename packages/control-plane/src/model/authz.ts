/** Authorizations in the controller's wire form (`policy-controller/grpc/src/inbound.rs` `to_authz`). */
import { serviceAccountIdentity } from "@inmesh/core";
import { type inbound, ipNetworkFromString, type meta } from "@inmesh/proto";
import type { Model } from "./model.js";
import { key } from "./model.js";
import { ALL_NETWORKS, type DefaultPolicyName } from "./options.js";
import type {
  AuthorizationPolicyRes,
  ClientAuthn,
  IdentityMatch,
  NetworkSpec,
  ServerAuthorizationRes,
} from "./resources.js";

export type AuthorizationRef =
  | { readonly kind: "default"; readonly name: string }
  | { readonly kind: "authorizationpolicy" | "serverauthorization"; readonly name: string };

export function metadataOf(ref: AuthorizationRef): meta.Metadata {
  if (ref.kind === "default") return { kind: { $case: "default", value: ref.name } };
  return {
    kind: {
      $case: "resource",
      value: {
        group: "policy.linkerd.io",
        kind: ref.kind,
        name: ref.name,
        namespace: "",
        section: "",
        port: 0,
      },
    },
  };
}

/** Deprecated `labels` mirror the metadata for pre-2.12 proxies. */
function labelsOf(ref: AuthorizationRef): Record<string, string> {
  if (ref.kind === "default") return { group: "", kind: "default", name: ref.name };
  return { group: "policy.linkerd.io", kind: ref.kind, name: ref.name };
}

function toNetworks(networks: readonly NetworkSpec[], clusterNetworks: readonly string[]): inbound.Network[] {
  // An authorization without networks means the cluster networks (ServerAuthorization without `networks`).
  if (networks.length === 0)
    return clusterNetworks.map((net) => ({ net: ipNetworkFromString(net), except: [] }));
  return networks.map((network) => ({
    net: ipNetworkFromString(network.net),
    except: network.except.map((cidr) => ipNetworkFromString(cidr)),
  }));
}

function toAuthn(authn: ClientAuthn): inbound.Authn {
  switch (authn.kind) {
    case "unauthenticated":
      return { permit: { $case: "unauthenticated", value: {} } };
    case "tls-unauthenticated":
      return { permit: { $case: "meshTLS", value: { clients: { $case: "unauthenticated", value: {} } } } };
    case "identities": {
      const identities: inbound.Identity[] = [];
      const suffixes: inbound.IdentitySuffix[] = [];
      for (const id of authn.identities) {
        if ("exact" in id) {
          if (!identities.some((existing) => existing.name === id.exact)) identities.push({ name: id.exact });
        } else {
          suffixes.push({ parts: [...id.suffix] });
        }
      }
      return {
        permit: {
          $case: "meshTLS",
          value: { clients: { $case: "identities", value: { identities, suffixes } } },
        },
      };
    }
  }
}

export function toAuthz(
  ref: AuthorizationRef,
  networks: readonly NetworkSpec[],
  authn: ClientAuthn,
  clusterNetworks: readonly string[],
): inbound.Authz {
  return {
    networks: toNetworks(networks, clusterNetworks),
    authentication: toAuthn(authn),
    labels: labelsOf(ref),
    metadata: metadataOf(ref),
  };
}

function networkSpecs(cidrs: readonly string[]): NetworkSpec[] {
  return cidrs.map((net) => ({ net, except: [] }));
}

/** policy-semantics.md §2.1: at most one authorization, named after the policy. */
export function defaultAuthzs(policy: DefaultPolicyName, model: Model): inbound.Authz[] {
  const clusterNetworks = model.options.clusterNetworks;
  const ref: AuthorizationRef = { kind: "default", name: policy };
  const anyIdentity: ClientAuthn = { kind: "identities", identities: [{ suffix: [] }] };
  switch (policy) {
    case "all-unauthenticated":
    case "audit":
      return [toAuthz(ref, networkSpecs(ALL_NETWORKS), { kind: "unauthenticated" }, clusterNetworks)];
    case "all-authenticated":
      return [toAuthz(ref, networkSpecs(ALL_NETWORKS), anyIdentity, clusterNetworks)];
    case "cluster-unauthenticated":
      return [toAuthz(ref, networkSpecs(clusterNetworks), { kind: "unauthenticated" }, clusterNetworks)];
    case "cluster-authenticated":
      return [toAuthz(ref, networkSpecs(clusterNetworks), anyIdentity, clusterNetworks)];
    case "deny":
      return [];
  }
}

export function serverAuthorizationAuthz(authz: ServerAuthorizationRes, model: Model): inbound.Authz {
  const { controlPlaneNamespace, trustDomain, clusterNetworks } = model.options;
  let authn = authz.authn;
  if (authn.kind === "identities") {
    const accounts: IdentityMatch[] = authz.serviceAccounts.map((sa) => ({
      exact: serviceAccountIdentity(sa.name, sa.namespace, controlPlaneNamespace, trustDomain),
    }));
    authn = { kind: "identities", identities: [...authn.identities, ...accounts] };
  }
  return toAuthz(
    { kind: "serverauthorization", name: authz.meta.name },
    authz.networks,
    authn,
    clusterNetworks,
  );
}

/**
 * policy-semantics.md §5.2: no identity source → unauthenticated; no NetworkAuthentication → everywhere
 * (not the cluster networks). References were checked when the model was built.
 */
export function authorizationPolicyAuthz(policy: AuthorizationPolicyRes, model: Model): inbound.Authz {
  const { controlPlaneNamespace, trustDomain, clusterNetworks } = model.options;
  let authn: ClientAuthn = { kind: "unauthenticated" };
  if (policy.serviceAccount) {
    const sa = policy.serviceAccount;
    authn = {
      kind: "identities",
      identities: [
        { exact: serviceAccountIdentity(sa.name, sa.namespace, controlPlaneNamespace, trustDomain) },
      ],
    };
  } else if (policy.meshTLS) {
    const meshTLS = model.meshTLSByKey.get(key(policy.meshTLS.namespace, policy.meshTLS.name));
    const identities: IdentityMatch[] = [...(meshTLS?.identities ?? [])];
    for (const ref of meshTLS?.refs ?? []) {
      if (ref.kind === "serviceaccount") {
        identities.push({
          exact: serviceAccountIdentity(ref.name, ref.namespace, controlPlaneNamespace, trustDomain),
        });
      } else {
        identities.push({
          suffix: [ref.name, "serviceaccount", "identity", controlPlaneNamespace, ...trustDomain.split(".")],
        });
      }
    }
    authn = { kind: "identities", identities };
  }
  let networks = networkSpecs(ALL_NETWORKS);
  if (policy.network) {
    const network = model.networkAuthnByKey.get(key(policy.network.namespace, policy.network.name));
    networks = [...(network?.networks ?? [])];
  }
  return toAuthz({ kind: "authorizationpolicy", name: policy.meta.name }, networks, authn, clusterNetworks);
}
