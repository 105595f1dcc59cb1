import { Readable } from "node:stream";
import type { ControlPlane } from "@inmesh/control-plane";
import { hasMeshErrorCode, MeshErrorCode } from "@inmesh/core";
import type { Discovery } from "@inmesh/destination";
import type { IdentityProvider } from "@inmesh/identity";
import { request } from "undici";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createMeshDispatcher, createMeshFetch, type MeshDispatcher } from "../../src/index.js";
import {
  CLIENT_POD,
  controlPlaneDiscovery,
  manifests,
  type PodSpec,
  patternBytes,
  podIdentity,
  podYaml,
  serviceYaml,
  sha256,
  sleep,
  startMeshedBackend,
  startTestControlPlane,
  type TestBackend,
} from "./support.js";

const url = (service: string, path = "/upload") => `http://${service}.default.svc.cluster.local${path}`;
const KIB64 = 64 * 1024;

const SERVICES: Record<string, Record<string, string>> = {
  retry: { "retry.linkerd.io/http": "503", "retry.linkerd.io/limit": "2" },
  pertry: {
    "retry.linkerd.io/http": "5xx",
    "retry.linkerd.io/limit": "2",
    "retry.linkerd.io/timeout": "300ms",
  },
  deadline: { "timeout.linkerd.io/request": "400ms" },
  budget: {},
};

const PROFILE = `apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata:
  name: budget.default.svc.cluster.local
  namespace: default
spec:
  routes:
    - name: everything
      condition:
        pathRegex: "/.*"
      isRetryable: true
  retryBudget:
    retryRatio: 0.2
    minRetriesPerSecond: 1
    ttl: 10s
`;

describe("retries and timeouts", () => {
  let cp: ControlPlane;
  let clientIdentity: IdentityProvider;
  const identities: IdentityProvider[] = [];
  const backends: Record<string, TestBackend[]> = {};
  let discovery: Discovery;
  let dispatcher: MeshDispatcher;

  const pods = (ports: Record<string, number[]>): PodSpec[] =>
    Object.entries(ports).flatMap(([app, list]) =>
      list.map((port, i) => ({ name: `${app}-${i}`, sa: "books", app, port })),
    );
  const cluster = (ports: Record<string, number[]>) =>
    manifests(
      podYaml(CLIENT_POD),
      ...pods(ports).map(podYaml),
      ...Object.entries(SERVICES).map(([name, annotations]) => serviceYaml(name, name, annotations)),
      PROFILE,
    );
  const counts: Record<string, number> = { retry: 2, pertry: 1, deadline: 1, budget: 1 };
  const all = (service: string) => backends[service] ?? [];
  const arrivals = (service: string) => all(service).reduce((sum, b) => sum + b.arrivals, 0);
  const received = (service: string) => all(service).flatMap((b) => b.requests);
  const setHandler = (service: string, handler: TestBackend["handler"], streaming = false) => {
    let index = 0;
    for (const backend of all(service)) {
      backend.streaming = streaming;
      // One counter across the service's endpoints: the retry may land on another one.
      backend.handler = (req, res, _i, raw) => handler(req, res, index++, raw);
    }
  };

  beforeAll(async () => {
    const placeholder = Object.fromEntries(
      Object.entries(counts).map(([app, n]) => [app, Array.from({ length: n }, (_, i) => i + 1)]),
    );
    cp = await startTestControlPlane(cluster(placeholder));
    clientIdentity = await podIdentity(cp, CLIENT_POD.name, CLIENT_POD.sa);
    for (const [app, n] of Object.entries(counts)) {
      backends[app] = [];
      for (let i = 0; i < n; i += 1) {
        const identity = await podIdentity(cp, `${app}-${i}`, "books");
        identities.push(identity);
        backends[app]?.push(await startMeshedBackend(`${app}-${i}`, identity));
      }
    }
    cp.setManifests(
      cluster(
        Object.fromEntries(Object.entries(backends).map(([app, list]) => [app, list.map((b) => b.port)])),
      ),
    );
    discovery = controlPlaneDiscovery(cp);
    dispatcher = createMeshDispatcher({ identity: clientIdentity, discovery });
  });

  afterEach(() => {
    for (const backend of Object.values(backends).flat()) {
      backend.requests.length = 0;
      backend.arrivals = 0;
      backend.streaming = false;
      backend.handler = (_request, response) => {
        response.end("ok");
      };
    }
  });

  afterAll(async () => {
    await dispatcher?.close();
    await discovery?.close();
    await Promise.all(
      Object.values(backends)
        .flat()
        .map((backend) => backend.close()),
    );
    await Promise.all([clientIdentity, ...identities].map((identity) => identity?.close()));
    await cp?.close();
  });

  const failFirst = (status = 503) => {
    setHandler("retry", (_req, res, index) => {
      res.statusCode = index === 0 ? status : 200;
      res.end(index === 0 ? "unavailable" : "done");
    });
  };

  it("retries a 64 KiB POST after a 503, and the server receives identical bytes on both tries", async () => {
    failFirst();
    const body = patternBytes(KIB64);
    const response = await request(url("retry"), { dispatcher, method: "POST", body });
    expect(response.statusCode).toBe(200);
    expect(await response.body.text()).toBe("done");
    const seen = received("retry");
    expect(seen).toHaveLength(2);
    for (const attempt of seen) {
      expect(attempt.bodyBytes).toBe(KIB64);
      expect(attempt.bodySha256).toBe(sha256(body));
    }
    // No header is added to a retried request (contract §7.2).
    const headerNames = (i: number) => Object.keys(seen[i]?.headers ?? {}).sort();
    expect(headerNames(1)).toEqual(headerNames(0));
  });

  it("retries a 64 KiB body sent through fetch and a 64 KiB stream that ended before the response", async () => {
    const body = patternBytes(KIB64, 3);
    failFirst();
    const meshFetch = createMeshFetch(dispatcher);
    const fetched = await meshFetch(url("retry"), { method: "POST", body });
    expect(fetched.status).toBe(200);
    await fetched.text();
    expect(received("retry").map((r) => r.bodySha256)).toEqual([sha256(body), sha256(body)]);

    for (const backend of all("retry")) {
      backend.requests.length = 0;
      backend.arrivals = 0;
    }
    failFirst();
    const chunks = [body.subarray(0, 1000), body.subarray(1000, 40_000), body.subarray(40_000)];
    const streamed = await request(url("retry"), { dispatcher, method: "POST", body: Readable.from(chunks) });
    expect(streamed.statusCode).toBe(200);
    await streamed.body.text();
    expect(received("retry").map((r) => r.bodySha256)).toEqual([sha256(body), sha256(body)]);
  });

  it("sends a 64 KiB + 1 body once: the 503 passes through and the body arrives intact", async () => {
    failFirst();
    const body = patternBytes(KIB64 + 1);
    const response = await request(url("retry"), { dispatcher, method: "POST", body });
    expect(response.statusCode).toBe(503);
    expect(await response.body.text()).toBe("unavailable");
    const seen = received("retry");
    expect(seen).toHaveLength(1);
    expect(seen[0]?.bodyBytes).toBe(KIB64 + 1);
    expect(seen[0]?.bodySha256).toBe(sha256(body));
  });

  it("sends a streamed body larger than the limit once and never truncates it", async () => {
    failFirst();
    const body = patternBytes(1024 * 1024, 11);
    const chunks: Buffer[] = [];
    for (let offset = 0; offset < body.length; offset += 16 * 1024)
      chunks.push(body.subarray(offset, offset + 16 * 1024));
    const response = await request(url("retry"), { dispatcher, method: "POST", body: Readable.from(chunks) });
    expect(response.statusCode).toBe(503);
    await response.body.text();
    const seen = received("retry");
    expect(seen).toHaveLength(1);
    expect(seen[0]?.bodyBytes).toBe(body.length);
    expect(seen[0]?.bodySha256).toBe(sha256(body));
  });

  it("does not retry a small body that is still streaming when the response arrives", async () => {
    let release: () => void = () => {};
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    // The server answers 503 as soon as the headers arrive, before the body is complete.
    setHandler(
      "retry",
      (_req, res) => {
        res.statusCode = 503;
        res.end("early");
      },
      true,
    );
    async function* slowBody() {
      yield Buffer.from("first part;");
      await released;
      yield Buffer.from("second part");
    }
    const response = await request(url("retry"), {
      dispatcher,
      method: "POST",
      body: Readable.from(slowBody()),
    });
    release();
    expect(response.statusCode).toBe(503);
    expect(await response.body.text()).toBe("early");
    await sleep(100);
    expect(arrivals("retry")).toBe(1);
  });

  it("abandons a try that exceeds the per-try timeout and retries it", async () => {
    setHandler("pertry", async (_req, res, index) => {
      if (index === 0) await sleep(3000);
      res.end(index === 0 ? "slow" : "fast");
    });
    const started = performance.now();
    const response = await request(url("pertry"), { dispatcher, method: "POST", body: "payload" });
    expect(response.statusCode).toBe(200);
    expect(await response.body.text()).toBe("fast");
    expect(performance.now() - started).toBeLessThan(2500);
    expect(arrivals("pertry")).toBe(2);
  });

  it("answers 504 with l5d-proxy-error when the route's request timeout passes", async () => {
    setHandler("deadline", async (_req, res) => {
      await sleep(3000);
      res.end("late");
    });
    const started = performance.now();
    const answer = await request(url("deadline"), { dispatcher });
    expect(answer.statusCode).toBe(504);
    // linkerd2-proxy's words; a policy stream timeout keeps the connection (no l5d-proxy-connection).
    expect(answer.headers["l5d-proxy-error"]).toBe(
      "timed out waiting for response headers: request timeout: 400ms",
    );
    expect(answer.headers["l5d-proxy-connection"]).toBeUndefined();
    expect(await answer.body.text()).toBe("");
    expect(performance.now() - started).toBeLessThan(2500);
  });

  it("applies the dispatcher's own request timeout; proxyErrorResponses: false rejects with MESH_ERR_DEADLINE", async () => {
    const strict = createMeshDispatcher({ identity: clientIdentity, discovery, requestTimeoutMs: 300 });
    const typed = createMeshDispatcher({
      identity: clientIdentity,
      discovery,
      requestTimeoutMs: 300,
      proxyErrorResponses: false,
    });
    try {
      setHandler("retry", async (_req, res) => {
        await sleep(3000);
        res.end("late");
      });
      const answer = await request(url("retry"), { dispatcher: strict });
      expect(answer.statusCode).toBe(504);
      expect(answer.headers["l5d-proxy-error"]).toMatch(/request timeout: 300ms$/);
      await answer.body.text();
      const error = await request(url("retry"), { dispatcher: typed }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(hasMeshErrorCode(error, MeshErrorCode.DEADLINE)).toBe(true);
    } finally {
      await strict.close();
      await typed.close();
    }
  });

  it("respects the retry budget when every response fails", async () => {
    setHandler("budget", (_req, res) => {
      res.statusCode = 503;
      res.end("nope");
    });
    const total = 100;
    let next = 0;
    const statuses: number[] = [];
    const worker = async () => {
      while (next < total) {
        next += 1;
        const response = await request(url("budget", "/items"), { dispatcher });
        statuses.push(response.statusCode);
        await response.body.text();
      }
    };
    await Promise.all(Array.from({ length: 5 }, worker));
    expect(statuses).toHaveLength(total);
    expect(statuses.every((status) => status === 503)).toBe(true);
    const retries = arrivals("budget") - total;
    // ratio 0.2 → one retry per 5 requests, plus the reserve of minRetriesPerSecond × ttl = 10.
    expect(retries).toBeGreaterThan(0);
    expect(retries).toBeLessThanOrEqual(0.2 * total + 10 + 1);
  });
});
