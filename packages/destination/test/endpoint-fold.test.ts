/**
 * Destination updates applied in slices (issue 11): whatever the slicing, the sets published are the
 * states after whole messages, in order (contract §8.2 Add/Remove/NoEndpoints), a noEndpoints or a newer
 * stream supersedes unfinished work, and a malformed address late in a message refuses it whole.
 */
import { BinaryWriter, destination } from "@inmesh/proto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { createEndpointUpdateFold, type MessageFold } from "../src/endpoint-fold.js";
import {
  applyEndpointUpdate,
  createBalancer,
  type EndpointSet,
  endpointSetChanges,
  LIMITS,
} from "../src/index.js";
import { addUpdate, noEndpoints, removeUpdate, weightedAddr } from "./helpers.js";

const encode = (update: destination.Update) => destination.Update.encode(update).finish();
const address = (i: number) => `10.1.${(i >> 8) & 255}.${i & 255}:80`;
const adds = (from: number, to: number, label = "a") =>
  encode(
    addUpdate(
      Array.from({ length: to - from }, (_, k) =>
        weightedAddr(address(from + k), { metricLabels: { v: label } }),
      ),
    ),
  );

/** address → label, or the non-existence marker: what a set means, independent of its representation. */
function content(set: EndpointSet | undefined): string {
  if (set === undefined) return "undefined";
  if (!set.exists) return "does-not-exist";
  return set.endpoints
    .map((e) => `${e.address}=${e.metricLabels.v ?? ""}`)
    .sort()
    .join(",");
}

function collect(fold: MessageFold<EndpointSet>, maxEntries: number, published: EndpointSet[]): void {
  while (fold.pending()) {
    const step = fold.step({ maxEntries });
    if (step.failure) throw step.failure.error;
    if (step.value) published.push(step.value);
  }
}

describe("createEndpointUpdateFold", () => {
  it("publishes only states after whole messages, in order, for any slicing (property)", () => {
    const pool = Array.from({ length: 6 }, (_, i) => address(i));
    const message = fc.oneof(
      fc.record({
        kind: fc.constant("add" as const),
        addresses: fc.subarray(pool, { minLength: 1 }),
        label: fc.constantFrom("a", "b"),
      }),
      fc.record({ kind: fc.constant("remove" as const), addresses: fc.subarray(pool) }),
      fc.record({ kind: fc.constant("none" as const), exists: fc.boolean() }),
    );
    const event = fc.record({
      message,
      newStream: fc.boolean(),
      // 0: queue only; otherwise one step of that many addresses before the next message.
      slice: fc.nat({ max: 4 }),
    });
    fc.assert(
      fc.property(fc.array(event, { maxLength: 40 }), (events) => {
        const fold = createEndpointUpdateFold({ maxMessageBytes: 1 << 20 });
        const published: EndpointSet[] = [];
        // The reference: each message applied whole, in order, by the one-shot applyEndpointUpdate.
        let reference: EndpointSet | undefined;
        let fresh = true;
        const prefixStates: string[] = [];
        let stream = 1;
        for (const { message: m, newStream, slice } of events) {
          if (newStream) {
            stream += 1;
            fresh = true;
          }
          const update =
            m.kind === "add"
              ? addUpdate(m.addresses.map((a) => weightedAddr(a, { metricLabels: { v: m.label } })))
              : m.kind === "remove"
                ? removeUpdate(m.addresses)
                : noEndpoints(m.exists);
          const next = applyEndpointUpdate(reference, update, fresh);
          if (next !== undefined) {
            reference = next;
            fresh = false;
          }
          prefixStates.push(content(reference));
          fold.push(encode(update), stream);
          if (slice > 0) {
            const step = fold.step({ maxEntries: slice });
            expect(step.failure).toBeUndefined();
            if (step.value) published.push(step.value);
          }
        }
        collect(fold, 3, published);
        const last = published.at(-1);
        if (events.length > 0) expect(content(last ?? reference)).toBe(content(reference));
        // Every publication is the state after some prefix of the messages, prefixes only growing.
        let at = 0;
        let previous = "undefined";
        for (const set of published) {
          const state = content(set);
          expect(state).not.toBe(previous); // never a no-op
          while (at < prefixStates.length && prefixStates[at] !== state) at += 1;
          expect(at).toBeLessThan(prefixStates.length);
          previous = state;
        }
      }),
      { numRuns: 300 },
    );
  });

  it("applies a big add over many steps and publishes it once, whole", () => {
    const fold = createEndpointUpdateFold({ maxMessageBytes: 1 << 22 });
    fold.push(adds(0, 3000), 1);
    const published: EndpointSet[] = [];
    let steps = 0;
    while (fold.pending()) {
      const step = fold.step({ maxEntries: 100 });
      steps += 1;
      if (step.value) published.push(step.value);
    }
    expect(steps).toBeGreaterThanOrEqual(30);
    expect(published).toHaveLength(1);
    expect(published[0]?.size).toBe(3000);
    expect(published[0]?.endpoints).toHaveLength(3000);
  });

  it("lets a noEndpoints supersede an unfinished add, which then never shows", () => {
    const fold = createEndpointUpdateFold({ maxMessageBytes: 1 << 22 });
    const published: EndpointSet[] = [];
    fold.push(adds(0, 10), 1);
    collect(fold, 1000, published);
    fold.push(adds(10, 2000), 1);
    expect(fold.step({ maxEntries: 500 }).value).toBeUndefined(); // a quarter of it, not published
    fold.push(encode(noEndpoints(true)), 1);
    fold.push(adds(5000, 5002), 1);
    collect(fold, 1000, published);
    expect(published.map((set) => set.size)).toEqual([10, 2]);
    expect(published[1]?.get(address(10))).toBeUndefined();
    expect(published[1]?.get(address(5000))).toBeDefined();
  });

  it("keeps order: a remove of addresses not yet applied removes them once their add is applied", () => {
    const fold = createEndpointUpdateFold({ maxMessageBytes: 1 << 22 });
    const published: EndpointSet[] = [];
    fold.push(adds(0, 5), 1);
    collect(fold, 1000, published);
    fold.push(adds(100, 1100, "new"), 1);
    fold.step({ maxEntries: 200 });
    // Removes two addresses of the unfinished add (one applied already, one not) and one of the base.
    fold.push(encode(removeUpdate([address(150), address(1050), address(0)])), 1);
    // Then re-adds one of them with another label: the last message wins.
    fold.push(adds(1050, 1051, "again"), 1);
    collect(fold, 150, published);
    const last = published.at(-1) as EndpointSet;
    expect(last.size).toBe(4 + 1000 - 2 + 1);
    expect(last.get(address(150))).toBeUndefined();
    expect(last.get(address(0))).toBeUndefined();
    expect(last.get(address(1050))?.metricLabels.v).toBe("again");
    expect(last.get(address(1099))?.metricLabels.v).toBe("new");
    // No publication ever held part of the 1000-address add.
    for (const set of published) {
      const applied = [100, 600, 1099].filter((i) => set.get(address(i)) !== undefined).length;
      expect([0, 3]).toContain(applied);
    }
  });

  it("publishes each committed set as one delta over the previous one, which the balancer applies", () => {
    const fold = createEndpointUpdateFold({ maxMessageBytes: 1 << 22 });
    const published: EndpointSet[] = [];
    fold.push(adds(0, 1000), 1);
    collect(fold, 100, published);
    fold.push(encode(removeUpdate([address(3)])), 1);
    fold.push(adds(2000, 2002), 1);
    collect(fold, 100, published);
    const [first, second] = published as [EndpointSet, EndpointSet];
    const changes = endpointSetChanges(first, second);
    expect(changes?.removed).toEqual([address(3)]);
    expect(changes?.upserted.map((e) => e.address)).toEqual([address(2000), address(2001)]);
    const balancer = createBalancer();
    balancer.update(first);
    balancer.update(second);
    expect(balancer.size()).toBe(1001);
  });

  it("turns a resync of a new stream into the differences: nothing when unchanged", () => {
    const fold = createEndpointUpdateFold({ maxMessageBytes: 1 << 22 });
    const published: EndpointSet[] = [];
    fold.push(adds(0, 100), 1);
    collect(fold, 1000, published);
    fold.push(adds(0, 100), 2);
    collect(fold, 1000, published);
    expect(published).toHaveLength(1);
    // One address gone, one changed, one new: a delta of three.
    fold.push(adds(1, 101), 3);
    fold.push(adds(50, 51, "b"), 3);
    collect(fold, 1000, published);
    const changes = endpointSetChanges(published[0], published[1] as EndpointSet);
    expect(changes?.removed).toEqual([address(0)]);
    expect(changes?.upserted.map((e) => e.address).sort()).toEqual([address(100), address(50)].sort());
  });

  it("applies a resync's changes in slices too, never publishing it half applied", () => {
    const fold = createEndpointUpdateFold({ maxMessageBytes: 1 << 22 });
    const published: EndpointSet[] = [];
    fold.push(adds(0, 1000), 1);
    collect(fold, 5000, published);
    // A new stream with the same addresses relabelled: 1000 reads, then 1000 + 1000 changes to apply.
    fold.push(adds(0, 1000, "b"), 2);
    expect(fold.step({ maxEntries: 1500 }).value).toBeUndefined();
    // Superseding cannot cut the commit short; it applies after it, and nothing half-done is shown.
    fold.push(encode(noEndpoints(true)), 2);
    let steps = 0;
    while (fold.pending()) {
      const step = fold.step({ maxEntries: 100 });
      steps += 1;
      if (step.value) published.push(step.value);
    }
    expect(steps).toBeGreaterThan(5);
    for (const set of published) {
      const labels = new Set(set.endpoints.map((e) => e.metricLabels.v));
      expect(labels.size).toBeLessThanOrEqual(1);
    }
    expect(published.at(-1)?.size).toBe(0);
  });

  it("drops the unfinished messages of an older stream when a newer stream's first message arrives", () => {
    const fold = createEndpointUpdateFold({ maxMessageBytes: 1 << 22 });
    const published: EndpointSet[] = [];
    fold.push(adds(0, 1000), 1);
    fold.step({ maxEntries: 10 });
    fold.push(adds(1000, 1001), 1);
    fold.push(adds(7, 9), 2);
    collect(fold, 1000, published);
    expect(published.map(content)).toEqual([`${address(7)}=a,${address(8)}=a`]);
  });

  it("refuses a message whose last address is malformed, whole, with the rest of its stream", () => {
    const fold = createEndpointUpdateFold({ maxMessageBytes: 1 << 22 });
    const published: EndpointSet[] = [];
    fold.push(adds(0, 3), 1);
    collect(fold, 1000, published);
    // 500 good addresses, then one whose TcpAddress claims 5 bytes and has 1.
    const set = destination.WeightedAddrSet.encode({
      addrs: Array.from({ length: 500 }, (_, i) => weightedAddr(address(100 + i))),
      metricLabels: {},
    }).finish();
    const bad = new BinaryWriter()
      .raw(set)
      .uint32(10)
      .bytes(Uint8Array.of(0x0a, 0x05, 0x01))
      .finish();
    fold.push(new BinaryWriter().uint32(10).bytes(bad).finish(), 1);
    fold.push(adds(9000, 9001), 1);
    let failure: unknown;
    while (fold.pending()) {
      const step = fold.step({ maxEntries: 50 });
      if (step.value) published.push(step.value);
      failure ??= step.failure;
    }
    expect((failure as { stream: number; error: { code: string } }).stream).toBe(1);
    expect((failure as { error: { code: string } }).error.code).toBe("MESH_ERR_PROTO_DECODE");
    expect(published).toHaveLength(1);
    expect(published[0]?.size).toBe(3);
    // The stream restarts: its first message applies afresh.
    fold.push(adds(9000, 9001), 2);
    collect(fold, 1000, published);
    expect(published.at(-1)?.size).toBe(1);
  });

  it("refuses a malformed envelope and an oversized message at once", () => {
    const fold = createEndpointUpdateFold({ maxMessageBytes: 64 });
    expect(() => fold.push(Uint8Array.of(0x0a, 0x10, 0x01), 1)).toThrow(/malformed destination.Update/);
    expect(() => fold.push(adds(0, 10), 1)).toThrow(/exceeds the 64-byte limit/);
    expect(fold.pending()).toBe(false);
  });

  it("caps a 50,000-address add as the one-shot apply does, without decoding past the cap", () => {
    const bytes = adds(0, 50_000);
    const fold = createEndpointUpdateFold({ maxMessageBytes: 1 << 23 });
    const published: EndpointSet[] = [];
    fold.push(bytes, 1);
    collect(fold, 2000, published);
    const oneShot = applyEndpointUpdate(undefined, destination.Update.decode(bytes), true);
    expect(published).toHaveLength(1);
    expect(published[0]?.size).toBe(LIMITS.maxEndpoints);
    expect(content(published[0])).toBe(content(oneShot));
  });

  it("ignores an add without a valid address, and an empty update", () => {
    const fold = createEndpointUpdateFold({ maxMessageBytes: 1 << 20 });
    const published: EndpointSet[] = [];
    fold.push(adds(0, 2), 1);
    fold.push(encode(addUpdate([weightedAddr("10.9.9.9:0")])), 1);
    fold.push(new Uint8Array(0), 1);
    collect(fold, 10, published);
    expect(published.map((set) => set.size)).toEqual([2]);
  });
});
