import { readFileSync } from "node:fs";
import { destination, inbound, ipNetworkFromString, ipNetworkToString, outbound } from "@inmesh/proto";
import { expect } from "vitest";
import {
  buildClusterState,
  type ClusterOptions,
  type ClusterState,
  type ManifestFile,
} from "../../src/model/index.js";

export function fixture(name: string): ManifestFile {
  return { path: name, text: readFileSync(new URL(`../fixtures/model/${name}`, import.meta.url), "utf8") };
}

export function build(names: string[], options?: ClusterOptions): ClusterState {
  return buildClusterState(names.map(fixture), options);
}

export function workload(ns: string, pod: string): string {
  return `${JSON.stringify({ ns, pod })}\n`;
}

/** The Server for a pod port; also checks it survives a protobuf encode/decode unchanged. */
export function server(state: ClusterState, ns: string, pod: string, port: number): inbound.Server {
  const result = state.inboundServer(workload(ns, pod), port);
  if (!result.ok) throw new Error(`${result.code}: ${result.message}`);
  expect(inbound.Server.decode(inbound.Server.encode(result.server).finish())).toEqual(result.server);
  return result.server;
}

export function policy(state: ClusterState, authority: string, sourceNs = "shop"): outbound.OutboundPolicy {
  const result = state.outboundPolicy({
    sourceWorkload: workload(sourceNs, "client"),
    target: { $case: "authority", value: authority },
  });
  if (!result.ok) throw new Error(`${result.code}: ${result.message}`);
  expect(outbound.OutboundPolicy.decode(outbound.OutboundPolicy.encode(result.policy).finish())).toEqual(
    result.policy,
  );
  return result.policy;
}

export function endpointSet(state: ClusterState, path: string, token = ""): destination.WeightedAddrSet {
  const result = state.endpoints(path, token);
  if (!result.ok) throw new Error(`${result.code}: ${result.message}`);
  expect(result.exists).toBe(true);
  expect(destination.WeightedAddrSet.decode(destination.WeightedAddrSet.encode(result.set).finish())).toEqual(
    result.set,
  );
  return result.set;
}

export function profileOf(state: ClusterState, path: string, token = ""): destination.DestinationProfile {
  const result = state.profile(path, token);
  if (!result.ok) throw new Error(`${result.code}: ${result.message}`);
  expect(
    destination.DestinationProfile.decode(destination.DestinationProfile.encode(result.profile).finish()),
  ).toEqual(result.profile);
  return result.profile;
}

export function network(cidr: string, except: string[] = []): inbound.Network {
  return { net: ipNetworkFromString(cidr), except: except.map((e) => ipNetworkFromString(e)) };
}

export const ALL = [network("0.0.0.0/0"), network("::/0")];
export const CLUSTER = ["10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8"].map(
  (c) => network(c),
);

/** `0.0.0.0/0`, `10.0.0.0/8 except 10.1.0.0/16`, … for compact assertions. */
export function networksOf(authz: inbound.Authz): string[] {
  return authz.networks.map((n) => {
    const base = ipNetworkToString(n.net) ?? "?";
    return n.except.length === 0
      ? base
      : `${base} except ${n.except.map((e) => ipNetworkToString(e)).join(",")}`;
  });
}

export function authzName(authz: inbound.Authz): string {
  const kind = authz.metadata?.kind;
  if (kind?.$case === "default") return `default:${kind.value}`;
  if (kind?.$case === "resource") return `${kind.value.kind}:${kind.value.name}`;
  return "?";
}

export function httpRoutesOf(s: inbound.Server): inbound.HttpRoute[] {
  const kind = s.protocol?.kind;
  if (kind?.$case === "detect") return kind.value.httpRoutes;
  if (kind?.$case === "http1" || kind?.$case === "http2") return kind.value.routes;
  throw new Error(`no HTTP routes on ${kind?.$case}`);
}

export function routeName(route: { metadata: inbound.HttpRoute["metadata"] }): string {
  const kind = route.metadata?.kind;
  if (kind?.$case === "default") return `default:${kind.value}`;
  if (kind?.$case === "resource") return `${kind.value.group}/${kind.value.kind}:${kind.value.name}`;
  return "?";
}
