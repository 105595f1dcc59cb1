import { subscribe, unsubscribe } from "node:diagnostics_channel";
import type { ControlPlane } from "@inmesh/control-plane";
import {
  hasMeshErrorCode,
  isMeshError,
  MeshChannel,
  MeshErrorCode,
  type OutboundAttemptMessage,
  type OutboundCallMessage,
} from "@inmesh/core";
import type { Discovery } from "@inmesh/destination";
import type { IdentityProvider } from "@inmesh/identity";
import { request } from "undici";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createMeshDispatcher, createMeshFetch, type MeshDispatcher } from "../../src/index.js";
import {
  CLIENT_POD,
  controlPlaneDiscovery,
  identityOf,
  manifests,
  type PodSpec,
  podIdentity,
  podYaml,
  serviceYaml,
  startMeshedBackend,
  startPlainBackend,
  startTestControlPlane,
  type TestBackend,
} from "./support.js";

const BOOKS = "http://books.default.svc.cluster.local";
const PLAIN = "http://plain.default.svc.cluster.local";

describe("mesh dispatcher against meshed and plain backends", () => {
  let cp: ControlPlane;
  let clientIdentity: IdentityProvider;
  const serverIdentities: IdentityProvider[] = [];
  const books: TestBackend[] = [];
  const plain: TestBackend[] = [];
  let discovery: Discovery;
  let dispatcher: MeshDispatcher;

  const bookPods = (ports: number[]): PodSpec[] =>
    ports.map((port, i) => ({ name: `books-${i}`, sa: "books", app: "books", port }));
  const plainPods = (ports: number[]): PodSpec[] =>
    ports.map((port, i) => ({ name: `plain-${i}`, sa: "plain", app: "plain", port, meshed: false }));
  const cluster = (bookPorts: number[], plainPorts: number[]) =>
    manifests(
      podYaml(CLIENT_POD),
      ...bookPods(bookPorts).map(podYaml),
      ...plainPods(plainPorts).map(podYaml),
      serviceYaml("books", "books"),
      serviceYaml("plain", "plain"),
      serviceYaml("empty", "nothing-selected"),
    );

  beforeAll(async () => {
    cp = await startTestControlPlane(cluster([1, 2, 3], [4]));
    clientIdentity = await podIdentity(cp, CLIENT_POD.name, CLIENT_POD.sa);
    for (let i = 0; i < 3; i += 1) {
      const identity = await podIdentity(cp, `books-${i}`, "books");
      serverIdentities.push(identity);
      books.push(await startMeshedBackend(`books-${i}`, identity));
    }
    plain.push(await startPlainBackend("plain-0"));
    cp.setManifests(
      cluster(
        books.map((b) => b.port),
        plain.map((b) => b.port),
      ),
    );
    discovery = controlPlaneDiscovery(cp);
    dispatcher = createMeshDispatcher({ identity: clientIdentity, discovery });
  });

  afterEach(() => {
    for (const backend of [...books, ...plain]) {
      backend.requests.length = 0;
      backend.arrivals = 0;
      backend.handler = (_request, response) => {
        response.end("ok");
      };
      backend.streaming = false;
    }
  });

  afterAll(async () => {
    await dispatcher?.close();
    await discovery?.close();
    await Promise.all([...books, ...plain].map((backend) => backend.close()));
    await Promise.all([clientIdentity, ...serverIdentities].map((identity) => identity?.close()));
    await cp?.close();
  });

  it("sends a meshed request over mTLS with the logical authority and the client's identity", async () => {
    const response = await request(`${BOOKS}/hello?x=1`, { dispatcher });
    expect(response.statusCode).toBe(200);
    expect(await response.body.text()).toBe("ok");
    const seen = books.flatMap((b) => b.requests);
    expect(seen).toHaveLength(1);
    expect(seen[0]?.url).toBe("/hello?x=1");
    expect(seen[0]?.headers.host).toBe("books.default.svc.cluster.local:80");
    expect(seen[0]?.clientId).toBe(identityOf("client"));
  });

  it("sends plaintext to an endpoint without an identity", async () => {
    const response = await request(`${PLAIN}/p`, { dispatcher, method: "POST", body: "hi" });
    expect(response.statusCode).toBe(200);
    await response.body.text();
    expect(plain[0]?.requests[0]?.clientId).toBeUndefined();
    expect(plain[0]?.requests[0]?.bodyBytes).toBe(2);
  });

  it("serves fetch bound to the dispatcher, and the global fetch with it as dispatcher", async () => {
    const meshFetch = createMeshFetch(dispatcher);
    const first = await meshFetch(`${BOOKS}/a`, { method: "POST", body: "abc" });
    expect(first.status).toBe(200);
    expect(await first.text()).toBe("ok");
    // Node's bundled fetch speaks the older handler API; the dispatcher accepts both.
    const second = await fetch(`${BOOKS}/b`, { dispatcher } as unknown as RequestInit);
    expect(second.status).toBe(200);
    expect(await second.text()).toBe("ok");
  });

  it("hands undici's request an HTTP/1 endpoint's raw response headers and trailers, and controller-API handlers parsed ones", async () => {
    for (const backend of plain)
      backend.handler = (_request, response) => {
        response.writeHead(200, [
          ["X-Mixed-Case", "a"],
          ["Set-Cookie", "one=1"],
          ["Set-Cookie", "two=2"],
          ["Trailer", "X-Sum"],
        ]);
        response.write("o");
        response.addTrailers({ "X-Sum": "3" });
        response.end("k");
      };
    const raw = await request(`${PLAIN}/raw`, { dispatcher, responseHeaders: "raw" });
    expect(await raw.body.text()).toBe("ok");
    const names = (raw.headers as unknown as string[]).filter((_, i) => i % 2 === 0);
    expect(names).toContain("X-Mixed-Case");
    expect(names.filter((name) => name === "Set-Cookie")).toHaveLength(2);
    expect(raw.trailers).toEqual({ "x-sum": "3" });

    const parsed = await request(`${PLAIN}/parsed`, { dispatcher });
    expect(await parsed.body.text()).toBe("ok");
    expect(parsed.headers["x-mixed-case"]).toBe("a");
    expect(parsed.headers["set-cookie"]).toEqual(["one=1", "two=2"]);

    const seen = await new Promise<{ headers: unknown; trailers: unknown; body: string }>(
      (resolve, reject) => {
        let body = "";
        let headers: unknown;
        dispatcher.dispatch(
          { origin: PLAIN, path: "/controller", method: "GET" },
          {
            onRequestStart() {},
            onResponseStart(_controller, _status, responseHeaders) {
              headers = responseHeaders;
            },
            onResponseData(_controller, chunk) {
              body += chunk.toString();
            },
            onResponseEnd(_controller, trailers) {
              resolve({ headers, trailers, body });
            },
            onResponseError(_controller, error) {
              reject(error);
            },
          },
        );
      },
    );
    expect(seen.body).toBe("ok");
    expect(seen.headers).toMatchObject({ "x-mixed-case": "a", "set-cookie": ["one=1", "two=2"] });
    expect(seen.trailers).toEqual({ "x-sum": "3" });
  });

  it("balances concurrent requests across every endpoint", async () => {
    for (const backend of books) {
      backend.handler = (_request, response) => {
        setTimeout(() => response.end("ok"), 20);
      };
    }
    let next = 0;
    const worker = async () => {
      while (next < 90) {
        next += 1;
        const response = await request(`${BOOKS}/n${next}`, { dispatcher });
        await response.body.text();
      }
    };
    await Promise.all(Array.from({ length: 9 }, worker));
    for (const backend of books) expect(backend.requests.length).toBeGreaterThan(0);
    expect(books.reduce((sum, b) => sum + b.requests.length, 0)).toBe(90);
  });

  it("fails with a DestinationError for a service discovery does not know", async () => {
    const error = await request("http://nope.default.svc.cluster.local/", { dispatcher }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(hasMeshErrorCode(error, MeshErrorCode.DESTINATION_NOT_FOUND)).toBe(true);
    expect((error as Error).name).toBe("DestinationError");
  });

  it("fails fast with a 504 (or MESH_ERR_DESTINATION_NO_ENDPOINTS) when a service has no endpoints", async () => {
    const quick = createMeshDispatcher({ identity: clientIdentity, discovery, failFastTimeoutMs: 200 });
    const typed = createMeshDispatcher({
      identity: clientIdentity,
      discovery,
      failFastTimeoutMs: 200,
      proxyErrorResponses: false,
    });
    try {
      // linkerd2-proxy's fail-fast answer: 504, and the connection to the application is to be closed.
      const answer = await request("http://empty.default.svc.cluster.local/", { dispatcher: quick });
      expect(answer.statusCode).toBe(504);
      expect(answer.headers["l5d-proxy-error"]).toMatch(/no endpoints for empty/);
      expect(answer.headers["l5d-proxy-connection"]).toBe("close");
      expect(await answer.body.text()).toBe("");
      const error = await request("http://empty.default.svc.cluster.local/", { dispatcher: typed }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(hasMeshErrorCode(error, MeshErrorCode.DESTINATION_NO_ENDPOINTS)).toBe(true);
    } finally {
      await quick.close();
      await typed.close();
    }
  });

  it("answers a caller's abort at once while the call waits for an endpoint, with no retry layer in the way", async () => {
    // A fail-fast wait far longer than the test: only the abort can end the call in time.
    const waiting = createMeshDispatcher({ identity: clientIdentity, discovery, failFastTimeoutMs: 60_000 });
    try {
      const controller = new AbortController();
      const reason = new Error("caller gave up");
      const pending = request("http://empty.default.svc.cluster.local/", {
        dispatcher: waiting,
        signal: controller.signal,
      }).then(
        () => undefined,
        (e: unknown) => e,
      );
      await new Promise((resolve) => setTimeout(resolve, 100));
      controller.abort(reason);
      expect(await pending).toBe(reason);
    } finally {
      await waiting.destroy();
    }
  }, 20_000);

  it("sends requests outside the cluster domain to the fallback dispatcher", async () => {
    const response = await request(`http://127.0.0.1:${plain[0]?.port}/direct`, { dispatcher });
    expect(response.statusCode).toBe(200);
    await response.body.text();
    expect(plain[0]?.requests[0]?.url).toBe("/direct");
    expect(dispatcher.targetCount().targets).toBeGreaterThan(0);
  });

  it("checks and strips l5d-require-id", async () => {
    const good = await request(`${BOOKS}/req`, {
      dispatcher,
      headers: { "l5d-require-id": identityOf("books") },
    });
    expect(good.statusCode).toBe(200);
    await good.body.text();
    const seen = books.flatMap((b) => b.requests);
    expect(seen[0]?.headers["l5d-require-id"]).toBeUndefined();
    // A mismatch is linkerd2-proxy's 502; nothing is sent to the endpoint.
    const before = books.reduce((sum, b) => sum + b.arrivals, 0);
    const refused = await request(`${BOOKS}/req`, {
      dispatcher,
      headers: { "l5d-require-id": identityOf("someone-else") },
    });
    expect(refused.statusCode).toBe(502);
    expect(refused.headers["l5d-proxy-error"]).toMatch(/l5d-require-id/);
    await refused.body.text();
    expect(books.reduce((sum, b) => sum + b.arrivals, 0)).toBe(before);
    const typed = createMeshDispatcher({ identity: clientIdentity, discovery, proxyErrorResponses: false });
    try {
      const error = await request(`${BOOKS}/req`, {
        dispatcher: typed,
        headers: { "l5d-require-id": identityOf("someone-else") },
      }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(hasMeshErrorCode(error, MeshErrorCode.IDENTITY_PEER_MISMATCH)).toBe(true);
    } finally {
      await typed.close();
    }
  });

  it("publishes call and attempt diagnostics and injects headers set by subscribers", async () => {
    const calls: OutboundCallMessage[] = [];
    const attempts: OutboundAttemptMessage[] = [];
    const onStart = (message: unknown) => {
      const call = message as OutboundCallMessage;
      call.setHeader("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
      calls.push(call);
    };
    const onAttempt = (message: unknown) => attempts.push(message as OutboundAttemptMessage);
    subscribe(MeshChannel.outboundCallStart, onStart);
    subscribe(MeshChannel.outboundAttemptEnd, onAttempt);
    try {
      const response = await request(`${BOOKS}/traced`, { dispatcher });
      await response.body.text();
    } finally {
      unsubscribe(MeshChannel.outboundCallStart, onStart);
      unsubscribe(MeshChannel.outboundAttemptEnd, onAttempt);
    }
    expect(calls).toHaveLength(1);
    expect(calls[0]).toMatchObject({
      protocol: "http",
      method: "GET",
      path: "/traced",
      statusCode: 200,
      attempts: 1,
    });
    expect(calls[0]?.authority).toBe("books.default.svc.cluster.local:80");
    expect(attempts).toHaveLength(1);
    expect(attempts[0]?.serverIdentity).toBe(identityOf("books"));
    expect(attempts[0]?.endpointLabels?.pod).toMatch(/^books-/);
    const seen = books.flatMap((b) => b.requests);
    expect(seen[0]?.headers.traceparent).toBe("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
  });

  it("refuses requests once closed", async () => {
    const short = createMeshDispatcher({ identity: clientIdentity, discovery });
    const response = await request(`${BOOKS}/x`, { dispatcher: short });
    await response.body.text();
    await short.close();
    await short.close();
    const error = await request(`${BOOKS}/x`, { dispatcher: short }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isMeshError(error) && error.code === MeshErrorCode.CLOSED).toBe(true);
  });

  it("validates its options", () => {
    expect(() => createMeshDispatcher({} as never)).toThrow(/discovery/);
    expect(() => createMeshDispatcher({ discovery, maxRetryBodyBytes: -1 })).toThrow(/maxRetryBodyBytes/);
    expect(() => createMeshDispatcher({ discovery, requestTimeoutMs: 0 })).toThrow(/requestTimeoutMs/);
    expect(() => createMeshDispatcher({ discovery, clusterDomain: "not a domain" })).toThrow(/clusterDomain/);
  });
});
