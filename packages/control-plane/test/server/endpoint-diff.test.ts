import { destination, tcpAddressFromString, tcpAddressToString } from "@inmesh/proto";
import { describe, expect, it } from "vitest";
import { diffEndpoints } from "../../src/server/destination-service.js";

const addr = (ip: string, weight = 10_000): destination.WeightedAddr =>
  destination.WeightedAddr.fromPartial({ addr: tcpAddressFromString(ip, 8080), weight });
const set = (...addrs: destination.WeightedAddr[]) =>
  destination.WeightedAddrSet.fromPartial({ addrs, metricLabels: { service: "web", namespace: "default" } });

function describeUpdates(updates: destination.Update[]): string[] {
  return updates.map((update) => {
    const u = update.update;
    if (u?.$case === "add") return `add ${u.value.addrs.map((a) => tcpAddressToString(a.addr)).join(",")}`;
    if (u?.$case === "remove") return `remove ${u.value.addrs.map((a) => tcpAddressToString(a)).join(",")}`;
    return `no_endpoints exists=${u?.value.exists}`;
  });
}

describe("destination Get updates (contract §8.2)", () => {
  it("starts with add, or no_endpoints when there is nothing to add", () => {
    expect(describeUpdates(diffEndpoints(undefined, true, set(addr("10.0.0.1"))).updates)).toEqual([
      "add 10.0.0.1:8080",
    ]);
    expect(describeUpdates(diffEndpoints(undefined, true, set()).updates)).toEqual([
      "no_endpoints exists=true",
    ]);
    expect(describeUpdates(diffEndpoints(undefined, false, set()).updates)).toEqual([
      "no_endpoints exists=false",
    ]);
  });

  it("sends only what changed: remove for addresses that left, add for new or changed ones", () => {
    const first = diffEndpoints(undefined, true, set(addr("10.0.0.1"), addr("10.0.0.2")));
    const same = diffEndpoints(first.told, true, set(addr("10.0.0.1"), addr("10.0.0.2")));
    expect(same.updates).toEqual([]);
    const changed = diffEndpoints(same.told, true, set(addr("10.0.0.2", 5), addr("10.0.0.3")));
    expect(describeUpdates(changed.updates)).toEqual([
      "remove 10.0.0.1:8080",
      "add 10.0.0.2:8080,10.0.0.3:8080",
    ]);
  });

  it("lets the removal of the last endpoint stand for no_endpoints{exists:true}, and reports a deleted service", () => {
    const first = diffEndpoints(undefined, true, set(addr("10.0.0.1")));
    const emptied = diffEndpoints(first.told, true, set());
    expect(describeUpdates(emptied.updates)).toEqual(["remove 10.0.0.1:8080"]);
    const deleted = diffEndpoints(emptied.told, false, undefined);
    expect(describeUpdates(deleted.updates)).toEqual(["no_endpoints exists=false"]);
    expect(diffEndpoints(deleted.told, false, undefined).updates).toEqual([]);
    const back = diffEndpoints(deleted.told, true, set());
    expect(describeUpdates(back.updates)).toEqual(["no_endpoints exists=true"]);
  });
});
