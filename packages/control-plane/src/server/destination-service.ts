import type { ServerWritableStream } from "@grpc/grpc-js";
import { destination, tcpAddressToString } from "@inmesh/proto";
import type { ClusterState } from "../model/index.js";
import { attachWatch, LOOKUP_STATUS, serveSnapshotWatch, type WatchRegistry } from "./streams.js";

export interface DestinationServiceDependencies {
  readonly state: () => ClusterState;
  readonly registry: WatchRegistry;
}

type Update = destination.Update;

/** What the client has been told so far: address key → encoded WeightedAddr, and the set-level labels. */
interface Told {
  readonly addrs: Map<string, { readonly bytes: Buffer; readonly addr: destination.WeightedAddr }>;
  readonly labels: string;
  /** The last no_endpoints we sent, so repeating it is skipped. */
  readonly noEndpoints: boolean | undefined;
}

function addressKey(addr: destination.WeightedAddr): string {
  return tcpAddressToString(addr.addr) ?? "";
}

function labelsKey(labels: Readonly<Record<string, string>>): string {
  return JSON.stringify(Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

const noEndpoints = (exists: boolean): Update => ({ update: { $case: "noEndpoints", value: { exists } } });

/**
 * The updates that take a client from `told` to `set` (§8.2): `remove` for addresses that left, `add` for
 * new addresses and for addresses whose metadata changed (an add replaces), `no_endpoints{exists}` when
 * the set is empty and the client was not told so. A service that disappears while watched gets
 * `no_endpoints{exists:false}`, as the destination controller sends on Service deletion.
 */
export function diffEndpoints(
  told: Told | undefined,
  exists: boolean,
  set: destination.WeightedAddrSet | undefined,
): { updates: Update[]; told: Told } {
  const next = new Map<string, { bytes: Buffer; addr: destination.WeightedAddr }>();
  for (const addr of set?.addrs ?? []) {
    const key = addressKey(addr);
    if (key === "") continue;
    next.set(key, { bytes: Buffer.from(destination.WeightedAddr.encode(addr).finish()), addr });
  }
  const labels = labelsKey(set?.metricLabels ?? {});
  const updates: Update[] = [];
  const previous = told?.addrs ?? new Map();
  const removed = [...previous.entries()]
    .filter(([key]) => !next.has(key))
    .map(([, value]) => value.addr.addr);
  const relabelled = told !== undefined && told.labels !== labels;
  const added = [...next.entries()]
    .filter(([key, value]) => relabelled || !previous.get(key)?.bytes.equals(value.bytes))
    .map(([, value]) => value.addr);

  if (removed.length > 0) {
    updates.push({
      update: { $case: "remove", value: { addrs: removed.filter((addr) => addr !== undefined) } },
    });
  }
  if (added.length > 0) {
    updates.push({
      update: { $case: "add", value: { addrs: added, metricLabels: { ...(set?.metricLabels ?? {}) } } },
    });
  }
  let said = told?.noEndpoints;
  if (next.size === 0) {
    // remove of the last endpoint already means "exists, no endpoints"; only a change of existence, or a
    // first message with nothing to add, needs no_endpoints.
    const implied = removed.length > 0 && exists ? true : said;
    if (implied !== exists) updates.push(noEndpoints(exists));
    said = exists;
  } else {
    said = undefined;
  }
  return { updates, told: { addrs: next, labels, noEndpoints: said } };
}

function serveEndpoints(
  call: ServerWritableStream<destination.GetDestination, Update>,
  deps: DestinationServiceDependencies,
): void {
  let told: Told | undefined;
  const stream = attachWatch(call, deps.registry, () => refresh());
  function refresh(): void {
    const result = deps.state().endpoints(call.request.path, call.request.contextToken);
    if (!result.ok) {
      if (told === undefined) {
        stream.fail(LOOKUP_STATUS[result.code], result.message);
        return;
      }
      const diff = diffEndpoints(told, false, undefined);
      told = diff.told;
      for (const update of diff.updates) stream.write(update);
      return;
    }
    const diff = diffEndpoints(told, result.exists, result.set);
    told = diff.told;
    for (const update of diff.updates) stream.write(update);
  }
  stream.refresh();
}

/** Destination (Get, GetProfile), as the Linkerd destination controller serves it. */
export function createDestinationService(
  deps: DestinationServiceDependencies,
): destination.DestinationServer {
  return {
    get: (call: ServerWritableStream<destination.GetDestination, Update>) => serveEndpoints(call, deps),
    getProfile: (call: ServerWritableStream<destination.GetDestination, destination.DestinationProfile>) =>
      serveSnapshotWatch(
        call,
        deps.registry,
        () => {
          const result = deps.state().profile(call.request.path, call.request.contextToken);
          return result.ok ? { ok: true, value: result.profile } : result;
        },
        (message) => destination.DestinationProfile.encode(message).finish(),
      ),
  };
}
