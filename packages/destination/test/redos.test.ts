/**
 * Outbound route matches and ServiceProfile `pathRegex` come from the control plane and match in time
 * linear in the input (issue 11): each hostile pattern is timed through `selectRoute` against a trivial
 * pattern on an input of the same length in the same run, so the budget is a ratio and a loaded machine
 * slows both sides alike. A backtracking engine already fails the 24-character round.
 */
import { performance } from "node:perf_hooks";
import { destination, outbound } from "@inmesh/proto";
import { describe, expect, it } from "vitest";
import { compileOutboundPolicy, compileProfile, type OutboundRequest, selectRoute } from "../src/index.js";

const RATIO_BUDGET = 50;
const ABSOLUTE_CAP_MS = 1_000;

const BACKENDS = {
  kind: {
    $case: "firstAvailable",
    value: {
      backends: [
        {
          backend: {
            metadata: { kind: { $case: "default", value: "svc" } },
            kind: {
              $case: "balancer",
              value: {
                discovery: { kind: { $case: "dst", value: { path: "web.ns.svc.cluster.local:80" } } },
              },
            },
          },
        },
      ],
    },
  },
};

function request(path: string, headers: Record<string, string> = {}): OutboundRequest {
  return { method: "GET", host: "web.ns.svc.cluster.local:80", path, getHeader: (name) => headers[name] };
}

function outboundPathRoute(pattern: string) {
  const policy = compileOutboundPolicy(
    outbound.OutboundPolicy.fromPartial({
      protocol: {
        kind: {
          $case: "http1",
          value: {
            routes: [
              {
                metadata: { kind: { $case: "default", value: "r" } },
                hosts: [],
                rules: [
                  { matches: [{ path: { kind: { $case: "regex", value: pattern } } }], backends: BACKENDS },
                ],
              },
            ],
          },
        },
      },
    } as never),
  );
  return (input: string) => selectRoute(policy, request(input)) !== undefined;
}

function outboundHeaderRoute(pattern: string) {
  const policy = compileOutboundPolicy(
    outbound.OutboundPolicy.fromPartial({
      protocol: {
        kind: {
          $case: "http1",
          value: {
            routes: [
              {
                metadata: { kind: { $case: "default", value: "r" } },
                hosts: [],
                rules: [
                  {
                    matches: [{ headers: [{ name: "x-h", value: { $case: "regex", value: pattern } }] }],
                    backends: BACKENDS,
                  },
                ],
              },
            ],
          },
        },
      },
    } as never),
  );
  return (input: string) => selectRoute(policy, request("/", { "x-h": input })) !== undefined;
}

function profileRoute(pathRegex: string) {
  const profile = compileProfile(
    destination.DestinationProfile.fromPartial({
      fullyQualifiedName: "web.ns.svc.cluster.local",
      routes: [
        {
          condition: { match: { $case: "path", value: { regex: pathRegex } } },
          metricsLabels: { route: "r" },
        },
      ],
    } as never),
  );
  return (input: string) => selectRoute(profile, request(input))?.metricLabels?.route === "r";
}

function medianMs(run: () => unknown): number {
  run();
  const times: number[] = [];
  for (let i = 0; i < 5; i += 1) {
    const start = performance.now();
    run();
    times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  return times[2] as number;
}

const fill = (prefix: string, unit: string, suffix: string) => (length: number) =>
  prefix +
  unit.repeat(Math.max(1, Math.ceil((length - prefix.length - suffix.length) / unit.length))) +
  suffix;

const ATTACKS = [
  {
    name: "outbound path /api/([a-z0-9]+/?)+$",
    match: outboundPathRoute("/api/([a-z0-9]+/?)+$"),
    trivial: outboundPathRoute("/[a-z0-9/!]*"),
    input: fill("/api/", "a", "!"),
  },
  {
    name: "outbound path (a|a)*b",
    match: outboundPathRoute("/(a|a)*b"),
    trivial: outboundPathRoute("/[a-z0-9/!]*"),
    input: fill("/", "a", "!"),
  },
  {
    name: "outbound header (a+)+$",
    match: outboundHeaderRoute("(a+)+$"),
    trivial: outboundHeaderRoute("[a-z!]*"),
    input: fill("", "a", "!"),
  },
  {
    name: "ServiceProfile pathRegex /api/([a-z0-9]+/?)+",
    match: profileRoute("/api/([a-z0-9]+/?)+"),
    trivial: profileRoute("/[a-z0-9/!]*"),
    input: fill("/api/", "a", "!"),
  },
  {
    name: "ServiceProfile pathRegex /(a*)*b",
    match: profileRoute("/(a*)*b"),
    trivial: profileRoute("/[a-z0-9/!]*"),
    input: fill("/", "a", ""),
  },
];

describe("outbound and ServiceProfile regexes run in linear time (ReDoS)", () => {
  it("times every hostile pattern against a trivial pattern, 24 and 10,000 characters", () => {
    const report: string[] = [];
    for (const length of [24, 10_000]) {
      for (const attack of ATTACKS) {
        const input = attack.input(length);
        const trivialMs = medianMs(() => attack.trivial(input));
        const hostileMs = medianMs(() => attack.match(input));
        const kb = input.length / 1024;
        report.push(
          `${attack.name} @${input.length}: ${(hostileMs / kb).toFixed(3)} ms/KB vs trivial ${(trivialMs / kb).toFixed(3)} ms/KB`,
        );
        expect(hostileMs, `${attack.name} at ${input.length} characters`).toBeLessThanOrEqual(
          Math.max(trivialMs, 0.05) * RATIO_BUDGET,
        );
        expect(hostileMs).toBeLessThan(ABSOLUTE_CAP_MS);
      }
    }
    console.log(report.join("\n"));
  });

  it("still matches as linkerd does: outbound full leftmost-first match, profile ^pattern$ by concatenation", () => {
    expect(outboundPathRoute("/a|/ab")("/ab")).toBe(false);
    expect(outboundPathRoute("/api/[0-9]+")("/api/12")).toBe(true);
    // `^/a|/b$`: the second alternative is only end-anchored.
    expect(profileRoute("/a|/b")("/x/b")).toBe(true);
    expect(profileRoute("/a|/b")("/b/x")).toBe(false);
    expect(profileRoute("(?i)/books/\\d+")("/BOOKS/12")).toBe(true);
    // Refused patterns leave the route out, as linkerd2-proxy drops an invalid route.
    expect(profileRoute("/(?=x)")("/x")).toBe(false);
    expect(() => outboundPathRoute("/(?<=x)")).toThrow(/look-behind/);
  });
});
