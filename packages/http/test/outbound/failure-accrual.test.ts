import {
  compileOutboundPolicy,
  type FailureAccrualPolicy,
  type OutboundPolicy,
  type RoutingModel,
} from "@inmesh/destination";
import { outbound } from "@inmesh/proto";
import { describe, expect, it } from "vitest";
import { BackendFailureAccrual, type RoutingSource } from "../../src/outbound/failure-accrual.js";

const backend = (path: string) => ({
  backend: {
    metadata: { kind: { $case: "default", value: "svc" } },
    kind: { $case: "balancer", value: { discovery: { kind: { $case: "dst", value: { path } } } } },
  },
});

/** An http1 policy routing everything to `paths`, breaking after `maxFailures` (undefined: off). */
function policy(paths: readonly string[], maxFailures: number | undefined): OutboundPolicy {
  return compileOutboundPolicy(
    outbound.OutboundPolicy.fromPartial({
      protocol: {
        kind: {
          $case: "http1",
          value: {
            routes: [
              {
                metadata: { kind: { $case: "default", value: "r" } },
                rules: [
                  {
                    matches: [],
                    backends: {
                      kind: {
                        $case: "randomAvailable",
                        value: { backends: paths.map((path) => ({ weight: 1, backend: backend(path) })) },
                      },
                    },
                  },
                ],
              },
            ],
            failureAccrual:
              maxFailures === undefined
                ? undefined
                : { kind: { $case: "consecutiveFailures", value: { maxFailures } } },
          },
        },
      },
    } as never),
  );
}

class Target implements RoutingSource {
  readonly authority: string;
  model: RoutingModel;
  readonly #listeners: ((closed: boolean) => void)[] = [];
  constructor(authority: string, model: RoutingModel) {
    this.authority = authority;
    this.model = model;
  }
  routingModel(): RoutingModel {
    return this.model;
  }
  onRoutingChange(listener: (closed: boolean) => void): void {
    this.#listeners.push(listener);
  }
  update(model: RoutingModel): void {
    this.model = model;
    for (const listener of this.#listeners) listener(false);
  }
  close(): void {
    for (const listener of this.#listeners) listener(true);
  }
}

const maxFailuresOf = (policy: FailureAccrualPolicy) => (policy.kind === "none" ? 0 : policy.maxFailures);

describe("BackendFailureAccrual", () => {
  it("applies each parent's settings to its backends, the backend's own Service first, and forgets closed parents", () => {
    const applied = new Map<string, FailureAccrualPolicy>();
    const open = new Set(["web:80", "web-v2:80"]);
    const accrual = new BackendFailureAccrual((path) =>
      open.has(path) ? { setFailureAccrual: (policy) => applied.set(path, policy) } : undefined,
    );

    // A split parent sends to web and web-v2 with 3; web's own Service says 5.
    const split = new Target("split:80", policy(["web:80", "web-v2:80"], 3));
    accrual.follow(split);
    expect(maxFailuresOf(applied.get("web:80") as FailureAccrualPolicy)).toBe(3);
    expect(maxFailuresOf(applied.get("web-v2:80") as FailureAccrualPolicy)).toBe(3);
    const web = new Target("web:80", undefined);
    accrual.follow(web);
    web.update(policy(["web:80"], 5));
    expect(maxFailuresOf(applied.get("web:80") as FailureAccrualPolicy)).toBe(5);
    expect(maxFailuresOf(accrual.policyFor("web-v2:80"))).toBe(3);
    // A group opened later gets the settings at once; an unknown path gets none.
    expect(maxFailuresOf(accrual.policyFor("web:80"))).toBe(5);
    expect(accrual.policyFor("other:80")).toEqual({ kind: "none" });

    // web's Service drops the annotation: the other parent's settings apply again.
    web.update(policy(["web:80"], undefined));
    expect(applied.get("web:80")).toEqual({ kind: "none" });
    web.update(undefined);
    expect(maxFailuresOf(applied.get("web:80") as FailureAccrualPolicy)).toBe(3);

    // The split parent closes: nothing breaks any more.
    split.close();
    expect(applied.get("web:80")).toEqual({ kind: "none" });
    expect(applied.get("web-v2:80")).toEqual({ kind: "none" });
  });

  it("gives ServiceProfile routing no breakers, as linkerd2-proxy", () => {
    const applied = new Map<string, FailureAccrualPolicy>();
    const accrual = new BackendFailureAccrual((path) => ({
      setFailureAccrual: (policy) => applied.set(path, policy),
    }));
    const target = new Target("web:80", policy(["web:80"], 3));
    accrual.follow(target);
    expect(maxFailuresOf(applied.get("web:80") as FailureAccrualPolicy)).toBe(3);
    target.update({ kind: "profile" } as unknown as RoutingModel);
    expect(applied.get("web:80")).toEqual({ kind: "none" });
  });
});
