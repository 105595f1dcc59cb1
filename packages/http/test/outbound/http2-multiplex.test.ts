/**
 * Concurrent requests to a meshed endpoint share one prior-knowledge HTTP/2 connection, as between two
 * linkerd2-proxies: undici's default (one request per connection, HTTP/2 included) opened an mTLS
 * connection per concurrent request.
 */

import { freeLoopbackPort } from "@inmesh/testing/ports";
import { request } from "undici";
import { afterAll, describe, expect, it } from "vitest";
import { createMeshDispatcher } from "../../src/index.js";
import {
  CLIENT_POD,
  controlPlaneDiscovery,
  manifests,
  podIdentity,
  podYaml,
  serviceYaml,
  startMeshedBackend,
  startTestControlPlane,
} from "./support.js";

const CONCURRENT = 40;

const closers: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const close of closers.reverse()) await close().catch(() => undefined);
});

/**
 * A meshed pod `name` behind service `name` (reached through its inbound port with a transport header,
 * as a sidecar or an inmesh client calls it) and a mesh dispatcher of the client pod.
 */
async function meshedService(name: string, http2IdleTimeoutMs?: number) {
  const inboundPort = await freeLoopbackPort();
  const pod = {
    name: `${name}-0`,
    sa: name,
    app: name,
    port: await freeLoopbackPort(),
    annotations: { "inmesh.dev/inbound-port": String(inboundPort) },
  };
  const cp = await startTestControlPlane(
    manifests(podYaml(CLIENT_POD), podYaml(pod), serviceYaml(name, name)),
  );
  closers.push(() => cp.close());
  const client = await podIdentity(cp, CLIENT_POD.name, CLIENT_POD.sa);
  closers.push(() => client.close());
  const serverIdentity = await podIdentity(cp, pod.name, pod.sa);
  closers.push(() => serverIdentity.close());
  const backend = await startMeshedBackend(pod.name, serverIdentity, {
    port: pod.port,
    transportHeaderPort: inboundPort,
    ...(http2IdleTimeoutMs === undefined ? {} : { http2IdleTimeoutMs }),
  });
  closers.push(() => backend.close());
  const discovery = controlPlaneDiscovery(cp);
  closers.push(() => discovery.close());
  const dispatcher = createMeshDispatcher({ identity: client, discovery });
  closers.push(() => dispatcher.close());
  return { backend, dispatcher };
}

describe("outbound HTTP/2 multiplexing", () => {
  it(`sends ${CONCURRENT} concurrent requests on one connection, and keeps using it`, async () => {
    const { backend, dispatcher } = await meshedService("mux");
    // Nothing is answered until every request has arrived, so all forty are in flight at once: over
    // HTTP/1, or HTTP/2 one request at a time, that takes forty connections.
    const connections = new Set<string>();
    const held: (() => void)[] = [];
    backend.handler = (recorded, response, _index, raw) => {
      connections.add(`${raw.socket.remoteAddress}:${raw.socket.remotePort}`);
      held.push(() => response.end(`answer ${recorded.url}`));
      if (held.length === CONCURRENT) for (const answer of held.splice(0)) answer();
    };

    const call = async (index: number) => {
      const response = await request(`http://mux.default.svc.cluster.local/${index}`, { dispatcher });
      return { status: response.statusCode, body: await response.body.text() };
    };
    const answers = await Promise.all(Array.from({ length: CONCURRENT }, (_, index) => call(index)));
    expect(answers.map((answer) => answer.status)).toEqual(Array(CONCURRENT).fill(200));
    expect(answers.map((answer) => answer.body)).toEqual(
      Array.from({ length: CONCURRENT }, (_, index) => `answer /${index}`),
    );
    expect(connections.size).toBe(1);

    // A second burst reuses the connection rather than opening more.
    const second = await Promise.all(Array.from({ length: CONCURRENT }, (_, index) => call(index)));
    expect(second.every((answer) => answer.status === 200)).toBe(true);
    expect(connections.size).toBe(1);
  });

  it("after the server closes the idle connection (GOAWAY), opens a new one and no request fails", async () => {
    const { backend, dispatcher } = await meshedService("idle", 300);
    const connections = new Set<string>();
    backend.handler = (recorded, response, _index, raw) => {
      connections.add(`${raw.socket.remoteAddress}:${raw.socket.remotePort}`);
      response.end(`answer ${recorded.url}`);
    };
    const call = async () => {
      const response = await request("http://idle.default.svc.cluster.local/x", { dispatcher });
      return `${response.statusCode} ${response.headers["l5d-proxy-error"] ?? ""} ${await response.body.text()}`;
    };
    expect(await call()).toMatch(/^200/);
    for (let round = 0; round < 3; round += 1) {
      await new Promise((resolve) => setTimeout(resolve, 800));
      const answers: string[] = [];
      for (let i = 0; i < 5; i += 1) answers.push(await call());
      expect(answers.filter((answer) => !answer.startsWith("200"))).toEqual([]);
    }
    // Each pause outlasted the idle bound: every round came on a new connection.
    expect(connections.size).toBe(4);
  });
});
