import { request } from "node:http";
import { connect, createServer, type Server, type Socket } from "node:net";
import { ConfigError, MeshErrorCode } from "@inmesh/core";
import { afterEach, describe, expect, it } from "vitest";
import { inboundCall } from "../../../test/support/mesh-traffic.js";
import { type AdminServer, createMeshMetrics, startAdminServer } from "../src/index.js";
import { parsePrometheusText, value } from "./prom-text.js";

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

function call(server: AdminServer, method: string, path: string, body?: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: server.host, port: server.port, method, path, agent: false, headers: { connection: "close" } },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => {
          text += chunk;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

/** Sends raw bytes and collects everything until the server closes the connection. */
function raw(server: AdminServer, bytes: string): Promise<{ text: string; socket: Socket }> {
  return new Promise((resolve, reject) => {
    const socket = connect(server.port, server.host);
    let text = "";
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      text += chunk;
    });
    socket.on("close", () => resolve({ text, socket }));
    socket.on("error", reject);
    socket.write(bytes);
  });
}

const servers: AdminServer[] = [];
const blockers: Server[] = [];
async function start(options: Parameters<typeof startAdminServer>[0] = {}): Promise<AdminServer> {
  const server = await startAdminServer({ port: 0, ...options });
  servers.push(server);
  return server;
}

afterEach(async () => {
  await Promise.all(servers.splice(0).map((server) => server.close()));
  await Promise.all(blockers.splice(0).map((b) => new Promise((resolve) => b.close(resolve))));
});

describe("routes", () => {
  it("serves /live, /ready and /metrics as linkerd2-proxy does", async () => {
    const metrics = createMeshMetrics();
    const server = await start({ metrics });
    expect(server.url).toBe(`http://127.0.0.1:${server.port}`);
    expect(await call(server, "GET", "/live")).toMatchObject({ status: 200, body: "live\n" });
    expect(await call(server, "GET", "/ready")).toMatchObject({ status: 200, body: "ready\n" });
    const scraped = await call(server, "GET", "/metrics?format=ignored");
    expect(scraped.status).toBe(200);
    expect(scraped.headers["content-type"]).toBe("text/plain; version=0.0.4; charset=utf-8");
    expect(parsePrometheusText(scraped.body).get("request_total")?.type).toBe("counter");
  });

  it("answers HEAD with headers only", async () => {
    const server = await start();
    const reply = await call(server, "HEAD", "/live");
    expect(reply).toMatchObject({ status: 200, body: "" });
    expect(reply.headers["content-length"]).toBe("5");
  });

  it("reports readiness from the callback, with reasons, and treats a throw as not ready", async () => {
    let state: boolean | { ready: boolean; reasons: string[] } | Error = false;
    const server = await start({
      readiness: () => {
        if (state instanceof Error) throw state;
        return state;
      },
    });
    expect(await call(server, "GET", "/ready")).toMatchObject({ status: 503, body: "not ready\n" });
    state = { ready: false, reasons: ["identity: not certified", "policy: port 8080\r\nnot loaded"] };
    expect(await call(server, "GET", "/ready")).toMatchObject({
      status: 503,
      body: "not ready\nidentity: not certified\npolicy: port 8080 not loaded\n",
    });
    state = new Error("boom");
    expect((await call(server, "GET", "/ready")).status).toBe(503);
    state = { ready: true, reasons: [] };
    expect(await call(server, "GET", "/ready")).toMatchObject({ status: 200, body: "ready\n" });
    state = true;
    expect(await call(server, "GET", "/ready")).toMatchObject({ status: 200, body: "ready\n" });
  });

  it("appends extraMetrics and answers 500 when rendering throws", async () => {
    let fail = false;
    const server = await start({
      extraMetrics: () => {
        if (fail) throw new Error("boom");
        return "# TYPE process_up gauge\nprocess_up 1";
      },
    });
    const parsed = parsePrometheusText((await call(server, "GET", "/metrics")).body);
    expect(value(parsed, "process_up", {})).toBe(1);
    fail = true;
    expect((await call(server, "GET", "/metrics")).status).toBe(500);
    expect((await call(server, "GET", "/live")).status).toBe(200);
  });

  it("answers 404 for every other path, whatever the method", async () => {
    const server = await start();
    for (const [method, path] of [
      ["POST", "/shutdown"],
      ["GET", "/shutdown"],
      ["PUT", "/proxy-log-level"],
      ["GET", "/proxy-log-level"],
      ["GET", "/env.json"],
      ["GET", "/logs.json"],
      ["GET", "/debug/pprof/profile.pb.gz"],
      ["GET", "/"],
      ["GET", "/metrics/"],
      ["GET", "/Metrics"],
      ["GET", "/live/../shutdown"],
    ] as const) {
      expect((await call(server, method, path)).status, `${method} ${path}`).toBe(404);
    }
  });

  it("answers 405 with Allow for other methods on its paths", async () => {
    const server = await start();
    for (const method of ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"]) {
      for (const path of ["/metrics", "/ready", "/live"]) {
        const reply = await call(server, method, path, method === "POST" ? "x" : undefined);
        expect(reply.status, `${method} ${path}`).toBe(405);
        expect(reply.headers.allow).toBe("GET, HEAD");
      }
    }
  });
});

describe("no route changes state (CVE-2024-40632)", () => {
  it("leaves metrics, readiness and the server untouched after every method on every path", async () => {
    // Process metrics (CPU, memory) move on their own between two scrapes.
    const metrics = createMeshMetrics({ processMetrics: false });
    metrics.subscribe();
    try {
      inboundCall({});
      let readinessCalls = 0;
      const server = await start({
        metrics,
        readiness: () => {
          readinessCalls += 1;
          return true;
        },
      });
      const before = metrics.render();
      for (const method of ["POST", "PUT", "DELETE", "PATCH"]) {
        for (const path of ["/shutdown", "/proxy-log-level", "/metrics", "/ready", "/live", "/reset"]) {
          await call(server, method, path, method === "DELETE" ? undefined : "level=trace");
        }
      }
      expect(readinessCalls).toBe(0);
      expect(metrics.render()).toBe(before);
      expect(metrics.subscribed).toBe(true);
      expect((await call(server, "GET", "/live")).status).toBe(200);
      expect((await call(server, "GET", "/metrics")).body).toBe(before);
    } finally {
      metrics.unsubscribe();
    }
  });

  it("never reads a request body and closes the connection instead of draining it", async () => {
    const server = await start();
    // Announces 10 MB but sends none of it: the answer must still come, and the connection close.
    const { text } = await raw(
      server,
      "POST /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n\r\n",
    );
    expect(text).toMatch(/^HTTP\/1\.1 405 /);
    expect(text.toLowerCase()).toContain("connection: close");
  });

  it("answers garbage with 400 and never a second reply after a response", async () => {
    const server = await start();
    expect((await raw(server, "NOT HTTP\r\n\r\n")).text).toMatch(/^HTTP\/1\.1 400 /);
    const { text } = await raw(server, "DELETE /live HTTP/1.1\r\nhost: x\r\n\r\nlevel=trace");
    expect(text).toMatch(/^HTTP\/1\.1 405 /);
    expect(text.match(/HTTP\/1\.1/g)).toHaveLength(1);
  });

  it("drops a client that never finishes its headers", async () => {
    const server = await start({ headersTimeoutMs: 200 });
    const { text } = await raw(server, "GET /metrics HTTP/1.1\r\nhost: x\r\n");
    expect(text === "" || /^HTTP\/1\.1 (400|408) /.test(text)).toBe(true);
  });
});

describe("binding", () => {
  it("refuses a non-loopback host unless allowNonLoopback is passed", async () => {
    for (const host of ["0.0.0.0", "::", "10.0.0.1", "192.168.1.10", "example.com", "::ffff:10.0.0.1"]) {
      await expect(startAdminServer({ host, port: 0 }), host).rejects.toMatchObject({
        code: MeshErrorCode.INVALID_ARG,
        details: { option: "host" },
      });
    }
    await expect(
      startAdminServer({ host: "0.0.0.0", port: 0, allowNonLoopback: false }),
    ).rejects.toMatchObject({
      code: MeshErrorCode.INVALID_ARG,
    });
  });

  it("binds loopback hosts, IPv6 included", async () => {
    const v4 = await start({ host: "127.0.0.1" });
    expect(v4.host).toBe("127.0.0.1");
    const v6 = await start({ host: "::1" });
    expect(v6.url).toBe(`http://[::1]:${v6.port}`);
    expect((await call(v6, "GET", "/live")).status).toBe(200);
  });

  it("rejects bad options before binding", async () => {
    for (const bad of [
      { port: 70000 },
      { port: -1 },
      { port: 1.5 },
      { headersTimeoutMs: 0 },
      { maxConnections: 0 },
      { readiness: true as unknown as () => boolean },
      { extraMetrics: "x" as unknown as () => string },
      { metrics: {} as never },
      { host: "" },
    ]) {
      await expect(startAdminServer(bad), JSON.stringify(bad)).rejects.toMatchObject({
        code: MeshErrorCode.INVALID_ARG,
      });
    }
  });

  it("reports a port in use as a ConfigError", async () => {
    const blocker = createServer();
    blockers.push(blocker);
    await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve));
    const port = (blocker.address() as { port: number }).port;
    const error = await startAdminServer({ port }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).details).toMatchObject({ variable: "port" });
  });

  it("closes idempotently and stops listening", async () => {
    const server = await startAdminServer({ port: 0 });
    await Promise.all([server.close(), server.close()]);
    await server[Symbol.asyncDispose]();
    await expect(call(server, "GET", "/live")).rejects.toMatchObject({ code: "ECONNREFUSED" });
  });
});
