/**
 * linkerd2-proxy's inbound authorization metrics at the wire: real clients (plaintext from 127.0.0.2,
 * mesh TLS with certificates from the dev CA, TLS for another SNI), the metrics registry of
 * `@inmesh/admin` subscribed to the same channels, and the exact label sets Linkerd exports.
 */
import type { AddressInfo, Socket } from "node:net";
import type { ControlPlane } from "@inmesh/control-plane";
import type { IdentityProvider } from "@inmesh/identity";
import { type CompiledServerPolicy, compileServerPolicy, type PolicyWatchEvent } from "@inmesh/policy";
import { inbound } from "@inmesh/proto";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createMeshMetrics, type MeshMetrics } from "../../../admin/src/index.js";
import { type MetricFamily, parsePrometheusText, total, value } from "../../../admin/test/prom-text.js";
import { createMeshServer, type MeshServer, type MeshServerOptions } from "../../src/index.js";
import {
  authz,
  type ClientCredentials,
  clientCredentials,
  eventually,
  identityOf,
  meshTlsSocket,
  plainSocket,
  podIdentity,
  podYaml,
  rawHttp1,
  serverMessage,
  startTestControlPlane,
} from "./support.js";

const FOO = identityOf("foo");
const BAR = identityOf("bar");

const srv = (name: string, port: string) => ({
  srv_group: "policy.linkerd.io",
  srv_kind: "server",
  srv_name: name,
  srv_port: port,
});
const authzLabels = (name: string) => ({
  authz_group: "policy.linkerd.io",
  authz_kind: "authorizationpolicy",
  authz_name: name,
});

/** A policy source whose policy the test replaces, notifying subscribers as a PolicyWatcher does. */
function mutableSource(initial: CompiledServerPolicy) {
  let current = initial;
  const listeners = new Set<(event: PolicyWatchEvent) => void>();
  return {
    policyFor: () => current,
    subscribe(listener: (event: PolicyWatchEvent) => void) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    update(next: CompiledServerPolicy) {
      const previous = current;
      current = next;
      for (const listener of listeners) listener({ type: "updated", port: 8080, policy: next, previous });
    },
  };
}

describe("inbound authorization metrics at the wire", () => {
  let cp: ControlPlane;
  let identity: IdentityProvider;
  let bar: ClientCredentials;
  let metrics: MeshMetrics;
  const servers: MeshServer[] = [];
  const sockets: Socket[] = [];

  beforeAll(async () => {
    cp = await startTestControlPlane([
      { path: "pods.yaml", text: podYaml({ name: "foo", sa: "foo", ip: "10.1.0.1" }) },
    ]);
    identity = await podIdentity(cp, "foo", "foo");
    bar = await clientCredentials(cp, "bar");
  });
  afterEach(async () => {
    metrics?.unsubscribe();
    for (const socket of sockets.splice(0)) socket.destroy();
    await Promise.all(servers.splice(0).map((server) => server.close()));
  });
  afterAll(async () => {
    await identity?.close();
    await cp?.close();
  });

  async function serve(options: Partial<MeshServerOptions>): Promise<number> {
    metrics = createMeshMetrics();
    metrics.subscribe();
    const server = createMeshServer({
      identity,
      policy: compileServerPolicy(serverMessage({ authorizations: [] }), { port: 8080 }),
      port: 8080,
      onConnection: (socket) => socket.pipe(socket),
      ...options,
    });
    servers.push(server);
    const address: AddressInfo = await server.listen(0, "127.0.0.1");
    return address.port;
  }

  const scrape = (): Map<string, MetricFamily> => parsePrometheusText(metrics.render());

  /** Writes and waits for the echo, so the connection is known to be authorized and served. */
  async function echoOnce(socket: Socket): Promise<void> {
    sockets.push(socket);
    const echoed = new Promise<void>((resolve, reject) => {
      socket.once("data", () => resolve());
      socket.once("error", reject);
    });
    // A first byte no HTTP request starts with: detection decides "opaque" at once.
    socket.write("\x00ping");
    await echoed;
  }

  it("labels opaque-port connections with the server, the authorization and no_tls_reason=port_skipped; counts revocations", async () => {
    const opaque = (authorizations: ReturnType<typeof authz>[]) =>
      compileServerPolicy(serverMessage({ protocol: "opaque", name: "foo-tcp", authorizations }), {
        port: 8080,
      });
    const source = mutableSource(opaque([authz("tcp-from-loopback", "unauthenticated", ["127.0.0.0/8"])]));
    const port = await serve({ policy: source });
    const target = { target_addr: `127.0.0.1:8080`, target_ip: "127.0.0.1", target_port: "8080" };
    const skipped = { tls: "no_identity", no_tls_reason: "port_skipped" };

    const kept = plainSocket({ port });
    await echoOnce(kept);
    let families = scrape();
    expect(
      value(families, "inbound_tcp_authz_allow_total", {
        ...target,
        ...srv("foo-tcp", "8080"),
        ...authzLabels("tcp-from-loopback"),
        ...skipped,
      }),
    ).toBe(1);

    // The policy changes: only 127.0.0.3 is admitted now. The open connection is terminated and counted.
    const closed = new Promise<void>((resolve) => kept.once("close", () => resolve()));
    source.update(opaque([authz("tcp-from-3", "unauthenticated", ["127.0.0.3/32"])]));
    await closed;
    const refused = plainSocket({ port });
    sockets.push(refused);
    await new Promise<void>((resolve) => refused.once("close", () => resolve()));
    families = scrape();
    expect(
      value(families, "inbound_tcp_authz_terminate_total", {
        ...target,
        ...srv("foo-tcp", "8080"),
        ...skipped,
      }),
    ).toBe(1);
    expect(
      value(families, "inbound_tcp_authz_deny_total", { ...target, ...srv("foo-tcp", "8080"), ...skipped }),
    ).toBe(1);
    await echoOnce(plainSocket({ port, localAddress: "127.0.0.3" }));
    expect(total(scrape(), "inbound_tcp_authz_allow_total")).toBe(2);
  });

  it("counts HTTP per request, not per connection, and labels loopback plaintext no_tls_from_remote", async () => {
    const port = await serve({
      policy: compileServerPolicy(
        serverMessage({ authorizations: [authz("all", "unauthenticated")], name: "foo-http" }),
        { port: 8080 },
      ),
      handler: (_req, res) => res.end("ok"),
    });
    for (let i = 0; i < 2; i += 1) {
      const response = await rawHttp1(
        plainSocket({ port }),
        "GET / HTTP/1.1\r\nHost: foo\r\nConnection: close\r\n\r\n",
      );
      expect(response.status).toBe(200);
    }
    await eventually(() => total(scrape(), "inbound_http_authz_allow_total") === 2, 2000, "two allows");
    const families = scrape();
    expect(
      value(families, "inbound_http_authz_allow_total", {
        target_addr: "127.0.0.1:8080",
        target_ip: "127.0.0.1",
        target_port: "8080",
        ...srv("foo-http", "8080"),
        route_group: "",
        route_kind: "default",
        route_name: "default",
        ...authzLabels("all"),
        tls: "no_identity",
        no_tls_reason: "no_tls_from_remote",
      }),
    ).toBe(2);
    expect(total(families, "inbound_tcp_authz_allow_total")).toBe(0);
    expect(total(families, "inbound_tcp_authz_deny_total")).toBe(0);
  });

  it("labels mesh TLS with the client identity and passed-through TLS with its SNI", async () => {
    const port = await serve({
      policy: compileServerPolicy(
        serverMessage({
          protocol: "detect",
          name: "foo-any",
          authorizations: [
            authz("bar-only", { identities: [BAR] }),
            authz("any", "unauthenticated", ["127.0.0.4/32"]),
          ],
        }),
        { port: 8080 },
      ),
    });
    // Mesh TLS from bar, not HTTP: authorized once for the connection.
    const meshed = meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, bar);
    await echoOnce(meshed as unknown as Socket);
    // TLS for another name is passed through untouched: an opaque connection labelled with its SNI.
    const passthru = meshTlsSocket({ port, localAddress: "127.0.0.4" }, "db.example.com", cp.trustAnchorsPem);
    sockets.push(passthru as unknown as Socket);
    passthru.on("error", () => undefined);
    await eventually(() => total(scrape(), "inbound_tcp_authz_allow_total") === 2, 5000, "two allows");
    const families = scrape();
    const target = { target_addr: "127.0.0.1:8080", target_ip: "127.0.0.1", target_port: "8080" };
    expect(
      value(families, "inbound_tcp_authz_allow_total", {
        ...target,
        ...srv("foo-any", "8080"),
        ...authzLabels("bar-only"),
        tls: "true",
        client_id: BAR,
      }),
    ).toBe(1);
    expect(
      value(families, "inbound_tcp_authz_allow_total", {
        ...target,
        ...srv("foo-any", "8080"),
        ...authzLabels("any"),
        tls: "opaque",
        sni: "db.example.com",
      }),
    ).toBe(1);
  });

  it("enforces HTTPLocalRateLimitPolicy: per-identity (shared by clients without one), overrides, total; 429 and its metric", async () => {
    let now = 1_000_000;
    const limited = (limit: Partial<inbound.HttpLocalRateLimit>) => {
      const message = serverMessage({ authorizations: [authz("all", "unauthenticated")], name: "foo-http" });
      if (message.protocol?.kind?.$case !== "detect") throw new Error("detect expected");
      message.protocol.kind.value.httpLocalRateLimit = inbound.HttpLocalRateLimit.fromPartial({
        metadata: {
          kind: {
            $case: "resource",
            value: { group: "policy.linkerd.io", kind: "HTTPLocalRateLimitPolicy", name: "foo-rl" },
          },
        },
        ...limit,
      });
      return compileServerPolicy(message, { port: 8080, nowMs: () => now });
    };
    const source = mutableSource(
      limited({
        total: { requestsPerSecond: 100 },
        identity: { requestsPerSecond: 2 },
        overrides: [{ limit: { requestsPerSecond: 1 }, clients: { identities: [{ name: BAR }] } }],
      }),
    );
    const port = await serve({ policy: source, handler: (_req, res) => res.end("ok") });
    const plain = async (localAddress = "127.0.0.2") =>
      (
        await rawHttp1(
          plainSocket({ port, localAddress }),
          "GET / HTTP/1.1\r\nHost: foo\r\nConnection: close\r\n\r\n",
        )
      ).status;
    const meshed = async () => {
      const response = await rawHttp1(
        meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, bar),
        "GET / HTTP/1.1\r\nHost: foo\r\nConnection: close\r\n\r\n",
      );
      return { status: response.status, error: response.headers["l5d-proxy-error"]?.[0] };
    };
    // Clients without an identity share one per-identity bucket (burst 2), whatever their address.
    expect([await plain(), await plain("127.0.0.3"), await plain()]).toEqual([200, 200, 429]);
    // bar has an override of 1 rps, which replaces the per-identity limit for it.
    expect(await meshed()).toEqual({ status: 200, error: undefined });
    expect(await meshed()).toEqual({ status: 429, error: "override rate limit exceeded: 1rps" });
    now += 1000; // one second refills both
    expect(await plain()).toBe(200);
    expect((await meshed()).status).toBe(200);

    source.update(limited({ total: { requestsPerSecond: 1 } }));
    expect([await plain(), await plain("127.0.0.3")]).toEqual([200, 429]);

    await eventually(() => total(scrape(), "inbound_http_local_ratelimit_total") === 3, 2000, "three 429s");
    const families = scrape();
    const labels = (scope: string, tls: Record<string, string>) => ({
      target_addr: "127.0.0.1:8080",
      target_ip: "127.0.0.1",
      target_port: "8080",
      ...srv("foo-http", "8080"),
      ratelimit_group: "policy.linkerd.io",
      ratelimit_kind: "HTTPLocalRateLimitPolicy",
      ratelimit_name: "foo-rl",
      ratelimit_scope: scope,
      ...tls,
    });
    const plaintext = { tls: "no_identity", no_tls_reason: "no_tls_from_remote" };
    expect(value(families, "inbound_http_local_ratelimit_total", labels("identity", plaintext))).toBe(1);
    expect(
      value(
        families,
        "inbound_http_local_ratelimit_total",
        labels("identity", { tls: "true", client_id: BAR }),
      ),
    ).toBe(1);
    expect(value(families, "inbound_http_local_ratelimit_total", labels("total", plaintext))).toBe(1);
    // Rate-limited requests were authorized first: they count as allows too, as in the proxy.
    expect(total(families, "inbound_http_authz_allow_total")).toBe(9);
  });
});
