/**
 * Outbound routing against the dev control plane, through the public API (`createMeshDispatcher`,
 * `createMeshFetch`): route timeouts and how they answer, retry exhaustion, RequestRedirect and header
 * filters, a ServiceProfile's weighted `dstOverrides`, and the `l5d-*` request headers a route honours
 * when the controller runs with `--allow-l5d-request-headers`.
 */

import { Readable } from "node:stream";
import { type ControlPlane, startControlPlane } from "@inmesh/control-plane";
import type { Discovery } from "@inmesh/destination";
import type { IdentityProvider } from "@inmesh/identity";
import { request } from "undici";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createMeshDispatcher, createMeshFetch, type MeshDispatcher } from "../../src/index.js";
import {
  CLIENT_POD,
  controlPlaneDiscovery,
  manifests,
  NS,
  type PodSpec,
  podIdentity,
  podYaml,
  serviceYaml,
  sleep,
  startMeshedBackend,
  type TestBackend,
} from "./support.js";

const url = (service: string, path: string) => `http://${service}.${NS}.svc.cluster.local${path}`;

const APPS = ["web", "split-a", "split-b", "profiled"] as const;
type App = (typeof APPS)[number];

const route = (
  name: string,
  spec: string,
  annotations: Record<string, string> = {},
  group = "gateway.networking.k8s.io/v1",
) => `apiVersion: ${group}
kind: HTTPRoute
metadata:
  name: ${name}
  namespace: ${NS}
${
  Object.keys(annotations).length > 0
    ? `  annotations:\n${Object.entries(annotations)
        .map(([k, v]) => `    ${k}: ${JSON.stringify(v)}`)
        .join("\n")}`
    : ""
}
spec:
  parentRefs:
    - { group: core, kind: Service, name: web, port: 80 }
${spec}`;

const ROUTES = [
  route(
    "request-timeout",
    `  rules:
    - matches: [{ path: { type: PathPrefix, value: /request-timeout } }]
      timeouts:
        request: 300ms`,
    {},
    "policy.linkerd.io/v1beta3",
  ),
  route(
    "response-timeout",
    "  rules:\n    - matches: [{ path: { type: PathPrefix, value: /response-timeout } }]",
    {
      "timeout.linkerd.io/response": "300ms",
    },
  ),
  route("idle-timeout", "  rules:\n    - matches: [{ path: { type: PathPrefix, value: /idle } }]", {
    "timeout.linkerd.io/idle": "300ms",
  }),
  route("exhaust", "  rules:\n    - matches: [{ path: { type: PathPrefix, value: /exhaust } }]", {
    "retry.linkerd.io/http": "5xx",
    "retry.linkerd.io/limit": "1",
    "retry.linkerd.io/timeout": "200ms",
    "timeout.linkerd.io/request": "800ms",
  }),
  route(
    "filters",
    `  rules:
    - matches: [{ path: { type: PathPrefix, value: /old } }]
      filters:
        - type: RequestRedirect
          requestRedirect:
            path: { type: ReplacePrefixMatch, replacePrefixMatch: /new }
            statusCode: 307
    - matches: [{ path: { type: PathPrefix, value: /headers } }]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{ name: x-route, value: headers }]
            remove: [x-secret]
        - type: ResponseHeaderModifier
          responseHeaderModifier:
            add: [{ name: x-served-by, value: mesh }]
            set: [{ name: cache-control, value: no-store }]
            remove: [x-internal]`,
  ),
  route(
    "weighted",
    `  rules:
    - matches: [{ path: { type: PathPrefix, value: /weighted } }]
      backendRefs:
        - { name: split-a, port: 80, weight: 3 }
        - name: split-b
          port: 80
          weight: 1
          filters:
            - type: RequestHeaderModifier
              requestHeaderModifier:
                set: [{ name: x-backend, value: b }]`,
  ),
  route(
    "retry-split",
    `  rules:
    - matches: [{ path: { type: PathPrefix, value: /retry-split } }]
      backendRefs:
        - { name: split-a, port: 80, weight: 1 }
        - { name: split-b, port: 80, weight: 1 }`,
    { "retry.linkerd.io/http": "5xx", "retry.linkerd.io/limit": "3" },
  ),
  route("catch-all", "  rules:\n    - matches: [{ path: { type: PathPrefix, value: / } }]"),
];

const PROFILES = `apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata:
  name: split.${NS}.svc.cluster.local
  namespace: ${NS}
spec:
  dstOverrides:
    - authority: split-a.${NS}.svc.cluster.local:80
      weight: 800m
    - authority: split-b.${NS}.svc.cluster.local:80
      weight: 200m
---
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata:
  name: profiled.${NS}.svc.cluster.local
  namespace: ${NS}
spec:
  routes:
    - name: slow
      condition: { pathRegex: /slow.* }
      timeout: 300ms
  retryBudget:
    retryRatio: 0
    minRetriesPerSecond: 0
    ttl: 10s
`;

describe("outbound routing through the dev control plane", () => {
  let cp: ControlPlane;
  let clientIdentity: IdentityProvider;
  const identities: IdentityProvider[] = [];
  const backends = {} as Record<App, TestBackend>;
  let discovery: Discovery;
  let dispatcher: MeshDispatcher;

  const cluster = (ports: Record<App, number>) =>
    manifests(
      podYaml(CLIENT_POD),
      ...APPS.map((app): PodSpec => ({ name: `${app}-0`, sa: "books", app, port: ports[app] })).map(podYaml),
      ...APPS.map((app) => serviceYaml(app, app)),
      // The split's own Service: its profile sends all of its traffic to the two others.
      serviceYaml("split", "split-a"),
      ...ROUTES,
      PROFILES,
    );

  beforeAll(async () => {
    cp = await startControlPlane({
      manifests: cluster({ web: 1, "split-a": 2, "split-b": 3, profiled: 4 }),
      ports: { identity: 0, destination: 0, policy: 0 },
      cluster: { clusterNetworks: ["10.0.0.0/8", "127.0.0.0/8"], allowL5dRequestHeaders: true },
      watch: false,
    });
    clientIdentity = await podIdentity(cp, CLIENT_POD.name, CLIENT_POD.sa);
    for (const app of APPS) {
      const identity = await podIdentity(cp, `${app}-0`, "books");
      identities.push(identity);
      backends[app] = await startMeshedBackend(`${app}-0`, identity);
    }
    const ports = Object.fromEntries(APPS.map((app) => [app, backends[app].port])) as Record<App, number>;
    cp.setManifests(cluster(ports));
    discovery = controlPlaneDiscovery(cp);
    dispatcher = createMeshDispatcher({ identity: clientIdentity, discovery });
  });

  afterEach(() => {
    for (const backend of Object.values(backends)) {
      backend.requests.length = 0;
      backend.arrivals = 0;
      backend.handler = (_request, response) => {
        response.end("ok");
      };
    }
  });

  afterAll(async () => {
    await dispatcher?.close();
    await discovery?.close();
    await Promise.all(Object.values(backends).map((backend) => backend.close()));
    await Promise.all([clientIdentity, ...identities].map((identity) => identity?.close()));
    await cp?.close();
  });

  const stall = (backend: TestBackend, ms = 3000) => {
    backend.handler = async (_req, res) => {
      await sleep(ms);
      if (!res.destroyed) res.end("late");
    };
  };

  describe("timeouts answer as linkerd2-proxy does", () => {
    it("a route's timeouts.request: 504 with l5d-proxy-error before the server answers, connection kept", async () => {
      stall(backends.web);
      const fetch = createMeshFetch(dispatcher);
      const started = performance.now();
      const response = await fetch(url("web", "/request-timeout/books"));
      const elapsed = performance.now() - started;
      expect(response.status).toBe(504);
      expect(response.headers.get("l5d-proxy-error")).toBe(
        "timed out waiting for response headers: request timeout: 300ms",
      );
      expect(response.headers.get("l5d-proxy-connection")).toBeNull();
      expect(await response.text()).toBe("");
      // Bounded by the route's timeout, not the server's 3 s.
      expect(elapsed).toBeGreaterThanOrEqual(290);
      expect(elapsed).toBeLessThan(2500);
    });

    it("timeouts.response: 504 before headers; once headers are out, the body ends with an error", async () => {
      stall(backends.web);
      const early = await request(url("web", "/response-timeout"), { dispatcher });
      expect(early.statusCode).toBe(504);
      expect(early.headers["l5d-proxy-error"]).toBe(
        "timed out waiting for response headers: response stream timeout: 300ms",
      );
      await early.body.text();

      backends.web.handler = async (_req, res) => {
        res.writeHead(200, { "content-type": "text/plain" });
        res.write("partial");
        await sleep(3000);
        if (!res.destroyed) res.end("rest");
      };
      const late = await request(url("web", "/response-timeout"), { dispatcher });
      expect(late.statusCode).toBe(200);
      const error = await late.body.text().then(
        () => undefined,
        (e: unknown) => e as Error,
      );
      expect(error?.message).toMatch(/timed out processing response stream: response stream timeout: 300ms/);
    });

    it("timeouts.response starts when a streamed request body has been sent, not before", async () => {
      backends.web.handler = (req, res) => {
        res.end(`got ${req.bodyBytes} bytes`);
      };
      async function* slowUpload() {
        for (let i = 0; i < 4; i += 1) {
          await sleep(200);
          yield Buffer.from("chunk");
        }
      }
      // 800 ms of upload against a 300 ms response timeout: the clock runs from the end of the body.
      const response = await request(url("web", "/response-timeout/upload"), {
        dispatcher,
        method: "POST",
        body: Readable.from(slowUpload()),
      });
      expect(response.statusCode).toBe(200);
      expect(await response.body.text()).toBe("got 20 bytes");
    });

    it("timeouts.idle bounds a quiet response body, not the wait for headers", async () => {
      backends.web.handler = async (_req, res) => {
        await sleep(500); // longer than the idle timeout, before any header
        res.writeHead(200);
        res.write("a");
        await sleep(200);
        res.write("b");
        await sleep(1500); // quiet for too long
        if (!res.destroyed) res.end("c");
      };
      const response = await request(url("web", "/idle"), { dispatcher });
      expect(response.statusCode).toBe(200);
      const error = await response.body.text().then(
        () => undefined,
        (e: unknown) => e as Error,
      );
      expect(error?.message).toMatch(/idle timeout: 300ms/);
    });

    it("a ServiceProfile route's timeout: 504 that closes the connection (the proxy's fatal timeout)", async () => {
      stall(backends.profiled);
      const response = await request(url("profiled", "/slow"), { dispatcher });
      expect(response.statusCode).toBe(504);
      expect(response.headers["l5d-proxy-error"]).toBe("HTTP response timeout after 300ms");
      expect(response.headers["l5d-proxy-connection"]).toBe("close");
      await response.body.text();
    });

    it("a ServiceProfile timeout bounds the wait for headers only: a slow body still arrives", async () => {
      backends.profiled.handler = async (_req, res) => {
        res.writeHead(200);
        res.write("first ");
        await sleep(600);
        res.end("last");
      };
      const response = await request(url("profiled", "/slow-body"), { dispatcher });
      expect(response.statusCode).toBe(200);
      expect(await response.body.text()).toBe("first last");
    });

    it("retries exhausted by per-try timeouts end in the request timeout's 504", async () => {
      stall(backends.web);
      const response = await request(url("web", "/exhaust"), { dispatcher });
      expect(response.statusCode).toBe(504);
      expect(response.headers["l5d-proxy-error"]).toBe(
        "timed out waiting for response headers: request timeout: 800ms",
      );
      await response.body.text();
      // The first try was abandoned at its 200 ms per-try timeout and retried once.
      expect(backends.web.arrivals).toBe(2);
    });

    it("exhausted retries and an empty budget return the last response as it came", async () => {
      backends.web.handler = (_req, res) => {
        res.statusCode = 503;
        res.end("still down");
      };
      const exhausted = await request(url("web", "/exhaust"), { dispatcher });
      expect(exhausted.statusCode).toBe(503);
      expect(await exhausted.body.text()).toBe("still down");
      expect(exhausted.headers["l5d-proxy-error"]).toBeUndefined();
      expect(backends.web.arrivals).toBe(2);

      // The profile's budget allows no retry at all: the failure is answered once, unchanged.
      backends.profiled.handler = (_req, res) => {
        res.statusCode = 500;
        res.end("broken");
      };
      const unbudgeted = await request(url("profiled", "/other"), { dispatcher });
      expect(unbudgeted.statusCode).toBe(500);
      expect(await unbudgeted.body.text()).toBe("broken");
    });
  });

  describe("filters", () => {
    it("RequestRedirect answers with the filter's status and location; nothing reaches the service", async () => {
      const response = await request(url("web", "/old/books?page=2"), { dispatcher });
      expect(response.statusCode).toBe(307);
      expect(response.headers.location).toBe(`http://web.${NS}.svc.cluster.local/new/books?page=2`);
      expect(response.headers["l5d-proxy-error"]).toBe("redirected");
      expect(await response.body.text()).toBe("");
      expect(backends.web.arrivals).toBe(0);
    });

    it("request and response header modifiers apply on the way out and back", async () => {
      backends.web.handler = (req, res) => {
        res.setHeader("x-internal", "secret");
        res.setHeader("cache-control", "max-age=60");
        res.end(JSON.stringify({ route: req.headers["x-route"], secret: req.headers["x-secret"] ?? null }));
      };
      const fetch = createMeshFetch(dispatcher);
      const response = await fetch(url("web", "/headers"), { headers: { "x-secret": "s3cr3t" } });
      expect(response.status).toBe(200);
      expect(await response.json()).toEqual({ route: "headers", secret: null });
      expect(response.headers.get("x-served-by")).toBe("mesh");
      expect(response.headers.get("cache-control")).toBe("no-store");
      expect(response.headers.get("x-internal")).toBeNull();
    });
  });

  it("a ServiceProfile's dstOverrides split traffic by weight across authorities", async () => {
    const total = 200;
    for (let i = 0; i < total; i += 1) {
      const response = await request(url("split", `/item/${i}`), { dispatcher });
      expect(response.statusCode).toBe(200);
      await response.body.text();
    }
    const a = backends["split-a"].arrivals;
    const b = backends["split-b"].arrivals;
    console.log(`dstOverrides 80/20 over ${total} requests: split-a ${a}, split-b ${b}`);
    expect(a + b).toBe(total);
    // Binomial(200, 0.2): mean 40, sd 5.7; these bounds are more than 4 sd away.
    expect(b).toBeGreaterThanOrEqual(15);
    expect(b).toBeLessThanOrEqual(70);
    // Host and l5d-dst-canonical stay the logical target's, not the override's (the proxy rewrites neither).
    const seen = backends["split-b"].requests[0]?.headers;
    expect(seen?.host).toBe(`split.${NS}.svc.cluster.local:80`);
    expect(seen?.["l5d-dst-canonical"]).toBe(`split.${NS}.svc.cluster.local:80`);
  });

  it("an HTTPRoute's weighted backendRefs split traffic, each backend with its own filters", async () => {
    const total = 200;
    for (let i = 0; i < total; i += 1) {
      const response = await request(url("web", `/weighted/${i}`), { dispatcher });
      expect(response.statusCode).toBe(200);
      await response.body.text();
    }
    const a = backends["split-a"].arrivals;
    const b = backends["split-b"].arrivals;
    console.log(`backendRefs 3:1 over ${total} requests: split-a ${a}, split-b ${b}`);
    expect(a + b).toBe(total);
    expect(backends.web.arrivals).toBe(0);
    // Binomial(200, 0.25): mean 50, sd 6.1.
    expect(b).toBeGreaterThanOrEqual(20);
    expect(b).toBeLessThanOrEqual(85);
    expect(backends["split-b"].requests.every((r) => r.headers["x-backend"] === "b")).toBe(true);
    expect(backends["split-a"].requests.some((r) => r.headers["x-backend"] !== undefined)).toBe(false);
  });

  it("a retry draws its backend again, so a split with one failing backend mostly succeeds", async () => {
    backends["split-b"].handler = (_req, res) => {
      res.statusCode = 503;
      res.end("b is down");
    };
    const total = 40;
    let ok = 0;
    for (let i = 0; i < total; i += 1) {
      const response = await request(url("web", `/retry-split/${i}`), { dispatcher });
      if (response.statusCode === 200) ok += 1;
      await response.body.text();
    }
    console.log(`retries over a 1:1 split with one backend failing: ${ok}/${total} succeeded`);
    // All four tries on the failing backend has odds 1/16 when each retry draws again (mean 37.5 of 40);
    // retries pinned to the first pick would succeed half the time (mean 20, sd 3.2).
    expect(ok).toBeGreaterThanOrEqual(30);
  });

  describe("l5d-* request headers (controller with --allow-l5d-request-headers)", () => {
    it("l5d-retry-http and l5d-retry-limit retry a route that has no retry of its own; the headers never leave", async () => {
      backends.web.handler = (req, res, index) => {
        res.statusCode = index === 0 ? 503 : 200;
        res.end(JSON.stringify(Object.keys(req.headers).filter((name) => name.startsWith("l5d-r"))));
      };
      const plain = await request(url("web", "/catch"), { dispatcher });
      expect(plain.statusCode).toBe(503);
      await plain.body.text();
      expect(backends.web.arrivals).toBe(1);

      backends.web.arrivals = 0;
      const retried = await request(url("web", "/catch"), {
        dispatcher,
        headers: { "l5d-retry-http": "503", "l5d-retry-limit": "1", "l5d-response-timeout": "5s" },
      });
      expect(retried.statusCode).toBe(200);
      expect(await retried.body.json()).toEqual([]);
      expect(backends.web.arrivals).toBe(2);
    });

    it("l5d-timeout sets the request's deadline", async () => {
      stall(backends.web);
      const started = performance.now();
      const response = await request(url("web", "/catch"), {
        dispatcher,
        headers: { "l5d-timeout": "250ms" },
      });
      expect(response.statusCode).toBe(504);
      expect(response.headers["l5d-proxy-error"]).toBe(
        "timed out waiting for response headers: request timeout: 250ms",
      );
      await response.body.text();
      expect(performance.now() - started).toBeLessThan(2500);
      const header = backends.web.requests[0]?.headers ?? {};
      expect(Object.keys(header).some((name) => name.startsWith("l5d-timeout"))).toBe(false);
    });

    it("l5d-response-timeout tightens the response timeout of a route that has one", async () => {
      stall(backends.web);
      const response = await request(url("web", "/response-timeout"), {
        dispatcher,
        headers: { "l5d-response-timeout": "100ms" },
      });
      expect(response.statusCode).toBe(504);
      expect(response.headers["l5d-proxy-error"]).toBe(
        "timed out waiting for response headers: response stream timeout: 100ms",
      );
      await response.body.text();
    });
  });
});
