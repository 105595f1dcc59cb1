/**
 * S4 (performance.md): policy evaluation, 50 routes × 1,000 identities with wildcard suffixes, random
 * requests. Run: `npx vitest bench --run test/bench/policy-eval.bench.ts`.
 * Each task evaluates a batch of BATCH requests, so ns per decision = mean time / BATCH. Allocation per
 * decision is measured by `policy-alloc.mjs` (see its header).
 */

import { clientFacts, compileServerPolicy } from "@inmesh/policy";
import { bench, describe } from "vitest";
import { refAuthorizeHttp } from "../../packages/policy/test/reference-evaluator.js";
import { s4Scenario, s4Server } from "./policy-scenario.js";

const BATCH = 1024;
const { policy, requests } = s4Scenario(4096);
const mask = requests.length - 1;
let cursor = 0;
/** Keeps results observable so the engine cannot drop the work. */
export const sink = { allowed: 0 };

describe(`S4 policy evaluation (batches of ${BATCH} decisions; ns/decision = mean / ${BATCH})`, () => {
  bench(`compiled authorizeHttp × ${BATCH}`, () => {
    for (let i = 0; i < BATCH; i += 1) {
      if (policy.authorizeHttp(requests[cursor & mask] as (typeof requests)[number]).allowed)
        sink.allowed += 1;
      cursor += 1;
    }
  });

  bench(`compiled authorizeConnection × ${BATCH}`, () => {
    for (let i = 0; i < BATCH; i += 1) {
      if (policy.authorizeConnection((requests[cursor & mask] as (typeof requests)[number]).client).allowed)
        sink.allowed += 1;
      cursor += 1;
    }
  });

  const server = s4Server();
  const refRequests = requests.slice(0, 64).map((r) => ({
    method: r.method,
    authority: r.authority ?? "",
    path: r.path,
    query: r.query,
    headers: r.headers as Record<string, string>,
    client: {
      address: r.client.address,
      tls: r.client.tlsEstablished ? ("established" as const) : ("none" as const),
      ...(r.client.identity === undefined ? {} : { identity: r.client.identity }),
    },
  }));
  bench(
    "reference (spec-literal, uncompiled) evaluator × 8, for comparison",
    () => {
      for (let i = 0; i < 8; i += 1) {
        if (refAuthorizeHttp(server, refRequests[cursor & 63] as (typeof refRequests)[number]).allowed)
          sink.allowed += 1;
        cursor += 1;
      }
    },
    { time: 2000 },
  );

  bench(
    "compileServerPolicy (whole S4 server)",
    () => {
      if (compileServerPolicy(server).status === "loaded") sink.allowed += 1;
    },
    { time: 1000 },
  );

  bench("clientFacts (once per connection)", () => {
    if (
      clientFacts("10.1.2.3", {
        kind: "mesh",
        name: "sa1.ns1.serviceaccount.identity.linkerd.cluster.local",
        tls: "established",
      }).family === 4
    )
      sink.allowed += 1;
  });
});
