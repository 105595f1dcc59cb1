import { decodeMessage, inbound } from "@inmesh/proto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { clientFacts, compileServerPolicy } from "../src/index.js";
import { clientArb, encodeServer, rateLimitArb, requestArb, serverArb } from "./arbitraries.js";
import { authz, facts, nodeFacts, peer, request, serverMsg } from "./builders.js";
import {
  refAuthorizeConnection,
  refAuthorizeHttp,
  refInvalidReason,
  refRateLimiter,
} from "./reference-evaluator.js";

const CI = process.env.CI !== undefined && process.env.CI !== "" && process.env.CI !== "false";
/** Time box of the main equivalence property; the others get a fraction of it. */
// CI runs the suite on two Node versions within the 15-minute budget of the README command.
const BUDGET_MS = CI ? 30_000 : 10_000;
const settings = (fraction: number) => ({
  numRuns: 1_000_000,
  interruptAfterTimeLimit: Math.round(BUDGET_MS * fraction),
  markInterruptAsFailure: false,
});

describe("compiled evaluator ≡ reference evaluator", () => {
  it(
    "agrees on validity, route, authorization and filters for random policies and requests",
    () => {
      fc.assert(
        fc.property(serverArb, fc.array(requestArb, { minLength: 1, maxLength: 8 }), (server, requests) => {
          const policy = compileServerPolicy(server);
          expect(policy.status === "invalid").toBe(refInvalidReason(server) !== undefined);
          for (const req of requests) {
            const decision = policy.authorizeHttp(facts(req));
            const ref = refAuthorizeHttp(server, req);
            // Node's view (repeated headers joined, every value in rawHeaders) decides the same: Linkerd
            // matches each value of a repeated header, never the joined string.
            expect(policy.authorizeHttp(nodeFacts(req))).toBe(decision);
            expect(decision.allowed).toBe(ref.allowed);
            expect(decision.route).toEqual(ref.route);
            if (ref.allowed) {
              expect(decision.authz).toEqual(ref.authz);
              expect(decision.filters.map((f) => f.kind)).toEqual(ref.filterKinds);
            } else {
              expect(decision.reason).toBe(ref.reason);
            }
            const connection = policy.authorizeConnection(clientFacts(req.client.address, peer(req.client)));
            const refConnection = refAuthorizeConnection(server, req.client);
            expect(connection.allowed).toBe(refConnection.allowed);
            if (refConnection.allowed) expect(connection.authz).toEqual(refConnection.authz);
            else expect(connection.reason).toBe(refConnection.reason);
          }
        }),
        settings(1),
      );
    },
    BUDGET_MS * 3,
  );
});

describe("local rate limit ≡ reference token buckets", () => {
  it(
    "refuses exactly the requests the reference refuses, with the same scope, for random limits and traffic",
    () => {
      fc.assert(
        fc.property(
          rateLimitArb,
          fc.array(fc.record({ client: clientArb, dt: fc.integer({ min: 0, max: 700 }) }), {
            minLength: 1,
            maxLength: 40,
          }),
          (limit, steps) => {
            let now = 0;
            const message = serverMsg({ authorizations: [authz({})] });
            if (message.protocol?.kind?.$case !== "detect") throw new Error("detect expected");
            message.protocol.kind.value.httpLocalRateLimit = limit;
            const policy = compileServerPolicy(message, { nowMs: () => now });
            const ref = refRateLimiter(limit);
            for (const { client, dt } of steps) {
              now += dt;
              const req = request({ client });
              const decision = policy.authorizeHttp(facts(req));
              if (!decision.allowed) throw new Error("an allow-all policy refused");
              const limited = policy.rateLimit?.check(decision, facts(req).client);
              expect(limited?.rateLimit.scope ?? "ok").toBe(ref.check(client, now));
            }
          },
        ),
        settings(0.3),
      );
    },
    BUDGET_MS * 3,
  );
});

describe("R-class properties", () => {
  it(
    "a request routed to a route is never answered more permissively than that route's own policy",
    () => {
      fc.assert(
        fc.property(serverArb, requestArb, (server, req) => {
          const policy = compileServerPolicy(server);
          const decision = policy.authorizeHttp(facts(req));
          if (policy.status === "invalid" || decision.route === undefined) return;
          const kind = server.protocol?.kind;
          let alone: inbound.Server | undefined;
          const same = (m: inbound.HttpRoute["metadata"]) =>
            m?.kind?.$case === "resource" && m.kind.value.name === decision.route?.name;
          if (kind?.$case === "detect") {
            const only = kind.value.httpRoutes.filter((r) => same(r.metadata));
            if (only.length === 0) return; // the synthesized default route
            alone = {
              ...server,
              protocol: { kind: { ...kind, value: { ...kind.value, httpRoutes: only } } },
            };
          } else if (kind?.$case === "http1" || kind?.$case === "http2") {
            const only = kind.value.routes.filter((r) => same(r.metadata));
            if (only.length === 0) return;
            alone = {
              ...server,
              protocol: {
                kind: { ...kind, value: { ...kind.value, routes: only } },
              } as inbound.ProxyProtocol,
            };
          } else if (kind?.$case === "grpc") {
            const only = kind.value.routes.filter((r) => same(r.metadata));
            if (only.length === 0) return;
            alone = { ...server, protocol: { kind: { $case: "grpc", value: { routes: only } } } };
          }
          if (alone === undefined) return;
          const own = compileServerPolicy(alone).authorizeHttp(facts(req));
          if (decision.allowed) {
            expect(own.allowed).toBe(true);
            expect(own.authz).toEqual(decision.authz);
          }
          expect(own.route).toEqual(decision.route);
          expect(own.allowed).toBe(decision.allowed);
        }),
        settings(0.3),
      );
    },
    BUDGET_MS * 3,
  );

  it(
    "never throws on random messages or mutated bytes, and the result always evaluates",
    () => {
      const evaluate = (server: inbound.Server, client: Parameters<typeof peer>[0]) => {
        const policy = compileServerPolicy(server, { port: 4143 });
        const f = clientFacts(client.address, peer(client));
        policy.authorizeConnection(f);
        policy.authorizeHttp({
          method: "POST",
          authority: "a.example.com",
          path: "/svc.Foo/Get",
          query: "a=1",
          headers: {},
          client: f,
        });
      };
      fc.assert(
        fc.property(
          serverArb,
          fc.array(fc.record({ at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }), { maxLength: 6 }),
          fc.uint8Array({ maxLength: 64 }),
          clientArb,
          (server, flips, random, client) => {
            expect(() => evaluate(server, client)).not.toThrow();
            const bytes = encodeServer(server);
            for (const { at, byte } of flips) if (bytes.length > 0) bytes[at % bytes.length] = byte;
            for (const input of [bytes, random]) {
              let decoded: inbound.Server | undefined;
              try {
                decoded = decodeMessage(inbound.Server, input, { name: "inbound.Server" });
              } catch {
                continue; // a typed decode error is the decoder's job, not the compiler's
              }
              expect(() => evaluate(decoded, client)).not.toThrow();
            }
          },
        ),
        settings(0.3),
      );
    },
    BUDGET_MS * 3,
  );
});
