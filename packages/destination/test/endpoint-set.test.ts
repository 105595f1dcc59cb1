import type { destination } from "@inmesh/proto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { applyEndpointUpdate, createBalancer, type EndpointSet, LIMITS } from "../src/index.js";
import { addUpdate, noEndpoints, removeUpdate, weightedAddr } from "./helpers.js";

const pool = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "[fd00::1]:80"];

type Op =
  | { kind: "add"; addresses: string[]; label: string }
  | { kind: "remove"; addresses: string[] }
  | { kind: "none"; exists: boolean };

function toUpdate(op: Op): destination.Update {
  if (op.kind === "add")
    return addUpdate(op.addresses.map((a) => weightedAddr(a, { metricLabels: { v: op.label } })));
  if (op.kind === "remove") return removeUpdate(op.addresses);
  return noEndpoints(op.exists);
}

describe("applyEndpointUpdate", () => {
  it("matches a reference model for any sequence of messages, and never publishes a no-op (property)", () => {
    const op = fc.oneof(
      fc.record({
        kind: fc.constant("add" as const),
        addresses: fc.subarray(pool),
        label: fc.constantFrom("a", "b"),
      }),
      fc.record({ kind: fc.constant("remove" as const), addresses: fc.subarray(pool) }),
      fc.record({ kind: fc.constant("none" as const), exists: fc.boolean() }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
        let set: EndpointSet | undefined;
        let model = new Map<string, string>();
        let exists = true;
        let fresh = true;
        for (const o of ops) {
          const next = applyEndpointUpdate(set, toUpdate(o), fresh);
          // Reference semantics (contract §8.2).
          if (o.kind === "add") {
            if (o.addresses.length === 0) {
              expect(next).toBeUndefined(); // an add with no valid address is ignored
              continue;
            }
            if (fresh || !exists) model = new Map();
            for (const a of o.addresses) model.set(a, o.label);
            exists = true;
          } else if (o.kind === "remove") {
            if (fresh || !exists) model = new Map();
            for (const a of o.addresses) model.delete(a);
            exists = true;
          } else {
            model = new Map();
            exists = o.exists;
          }
          fresh = false;
          expect(next).toBeDefined();
          const changed =
            set === undefined ||
            set.exists !== exists ||
            set.endpoints.length !== model.size ||
            set.endpoints.some((e) => model.get(e.address) !== e.metricLabels.v);
          if (!changed) expect(next).toBe(set);
          set = next;
          expect(set?.exists).toBe(exists);
          expect(new Map(set?.endpoints.map((e) => [e.address, e.metricLabels.v]))).toEqual(model);
        }
      }),
    );
  });

  it("keeps a Map's order and lookups over long chains of small updates, and the balancer mirrors each set (property)", () => {
    const wide = Array.from({ length: 8 }, (_, i) => `10.0.1.${i}:80`);
    const op = fc.oneof(
      {
        weight: 3,
        arbitrary: fc.record({
          kind: fc.constant("add" as const),
          addresses: fc.subarray(wide, { maxLength: 3 }),
          label: fc.constantFrom("a", "b", "c"),
        }),
      },
      {
        weight: 2,
        arbitrary: fc.record({
          kind: fc.constant("remove" as const),
          addresses: fc.subarray(wide, { maxLength: 2 }),
        }),
      },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant("none" as const), exists: fc.constant(true) }) },
    );
    fc.assert(
      fc.property(fc.array(fc.tuple(op, fc.nat(9)), { minLength: 40, maxLength: 150 }), (ops) => {
        let set: EndpointSet | undefined;
        let model = new Map<string, string>();
        const balancer = createBalancer();
        for (const [o, resync] of ops) {
          const fresh = set === undefined || resync === 0; // the first message of a new stream
          const next = applyEndpointUpdate(set, toUpdate(o), fresh);
          if (next === undefined) continue;
          if (fresh || o.kind === "none") model = new Map();
          if (o.kind === "add") for (const a of o.addresses) model.set(a, o.label);
          if (o.kind === "remove") for (const a of o.addresses) model.delete(a);
          set = next;
          // Only every few updates is the list read, so chains grow past the flattening depth unread.
          if (model.size % 3 === 0) {
            expect(set.endpoints.map((e) => [e.address, e.metricLabels.v])).toEqual([...model.entries()]);
          }
          for (const address of wide) expect(set.get(address)?.metricLabels.v).toBe(model.get(address));
          balancer.update(set);
          expect(balancer.size()).toBe(model.size);
          expect(new Set(balancer.loads().map((l) => l.address))).toEqual(new Set(model.keys()));
        }
        expect(set?.endpoints.map((e) => [e.address, e.metricLabels.v])).toEqual([
          ...(model?.entries() ?? []),
        ]);
      }),
      { numRuns: 200 },
    );
  });

  it("applies the first message of a new stream to an empty state", () => {
    const old = applyEndpointUpdate(undefined, addUpdate([weightedAddr("10.0.0.1:80")]), true);
    const fresh = applyEndpointUpdate(old, addUpdate([weightedAddr("10.0.0.2:80")]), true);
    expect(fresh?.endpoints.map((e) => e.address)).toEqual(["10.0.0.2:80"]);
    const merged = applyEndpointUpdate(old, addUpdate([weightedAddr("10.0.0.2:80")]), false);
    expect(merged?.endpoints.map((e) => e.address)).toEqual(["10.0.0.1:80", "10.0.0.2:80"]);
    expect(applyEndpointUpdate(old, { update: undefined }, false)).toBeUndefined();
    expect(Object.isFrozen(merged)).toBe(true);
    expect(Object.isFrozen(merged?.endpoints)).toBe(true);
  });

  it(`keeps at most ${LIMITS.maxEndpoints} endpoints and at most ${LIMITS.maxLabels} labels each`, () => {
    const addrs = Array.from({ length: LIMITS.maxEndpoints + 5 }, (_, i) =>
      weightedAddr(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}:80`),
    );
    const set = applyEndpointUpdate(undefined, addUpdate(addrs), true);
    expect(set?.endpoints).toHaveLength(LIMITS.maxEndpoints);
    const labels = Object.fromEntries(Array.from({ length: 100 }, (_, i) => [`l${i}`, "x"]));
    const addr = weightedAddr("10.0.0.1:80");
    // Set after fromPartial, which would drop an own "__proto__" key.
    addr.metricLabels = { ...JSON.parse('{"__proto__":"p"}'), ...labels, ["x".repeat(300)]: "long" };
    const big = applyEndpointUpdate(undefined, addUpdate([addr], { service: "web" }), true);
    const got = big?.endpoints[0]?.metricLabels ?? {};
    expect(Object.keys(got)).toHaveLength(LIMITS.maxLabels);
    expect(got.service).toBe("web");
    // A wire label named "__proto__" stays a plain label and cannot change the object's prototype.
    expect(Object.getPrototypeOf(got)).toBeNull();
    expect(Object.getOwnPropertyDescriptor(got, "__proto__")?.value).toBe("p");
    expect(Object.hasOwn(got, "x".repeat(300))).toBe(false);
  });
});
