import type { TLSSocket } from "node:tls";
import type { ControlPlane } from "@inmesh/control-plane";
import type { IdentityProvider } from "@inmesh/identity";
import { defaultServerPolicy } from "@inmesh/policy";
import { encodeTransportHeader, TRANSPORT_HEADER_PREFACE } from "@inmesh/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { h2GetThroughTransportHeader } from "../../../../test/support/sidecar-client.js";
import {
  createMeshServer,
  createTransportHeaderListener,
  type MeshServer,
  type TransportHeaderListener,
} from "../../src/index.js";
import {
  type ClientCredentials,
  clientCredentials,
  closedWithoutBytes,
  eventually,
  identityOf,
  meshTlsSocket,
  plainSocket,
  podIdentity,
  podYaml,
  startTestControlPlane,
} from "./support.js";

// Hostile input on the shared transport-header port: every stage is bounded (ClientHello, handshake,
// header), nothing malformed gets an answer, and a legitimate client is served after each attack.
const FOO = identityOf("foo");
const ALPN = ["transport.l5d.io/v1"];

describe("the shared transport-header listener under hostile input", () => {
  let cp: ControlPlane;
  let fooIdentity: IdentityProvider;
  let barIdentity: IdentityProvider;
  let bar: ClientCredentials;
  let server: MeshServer;
  let listener: TransportHeaderListener;
  let port: number;

  const secure = (alpn: string[] | undefined = ALPN) =>
    new Promise<TLSSocket>((resolve, reject) => {
      const socket = meshTlsSocket({ port }, FOO, cp.trustAnchorsPem, bar, alpn);
      socket.once("secureConnect", () => resolve(socket));
      socket.once("error", reject);
    });

  const legitimate = async () => {
    const answer = await h2GetThroughTransportHeader(
      barIdentity,
      { host: "127.0.0.1", inboundPort: port, serverName: FOO, port: 8080 },
      "/ok",
    );
    expect(answer).toMatchObject({ status: 200, body: "served" });
  };

  beforeAll(async () => {
    cp = await startTestControlPlane([
      {
        path: "pods.yaml",
        text: [
          podYaml({ name: "foo", sa: "foo", ip: "127.0.0.1" }),
          podYaml({ name: "bar", sa: "bar", ip: "127.0.0.2" }),
        ].join("\n---\n"),
      },
    ]);
    fooIdentity = await podIdentity(cp, "foo", "foo");
    barIdentity = await podIdentity(cp, "bar", "bar");
    bar = await clientCredentials(cp, "bar");
    server = createMeshServer({
      identity: fooIdentity,
      policy: defaultServerPolicy("all-unauthenticated"),
      port: 8080,
      handler: (_req, res) => res.end("served"),
      drainTimeoutMs: 1000,
    });
    listener = createTransportHeaderListener({ identity: fooIdentity, detectTimeoutMs: 300 });
    listener.route(8080, server);
    port = (await listener.listen(0, "127.0.0.1")).port;
  });

  afterAll(async () => {
    await listener?.close();
    await server?.close();
    await Promise.allSettled([fooIdentity?.close(), barIdentity?.close()]);
    await cp?.close();
  });

  it("serves a legitimate client", legitimate);

  it("closes a connection that never sends a byte, one that stalls in the header, and one that stalls in TLS", async () => {
    expect(await closedWithoutBytes(plainSocket({ port }))).toBe(true);
    const stalled = await secure();
    expect(await closedWithoutBytes(stalled, TRANSPORT_HEADER_PREFACE.subarray(0, 10))).toBe(true);
    // The start of a TLS record, then nothing: the ClientHello bound ends it.
    const raw = plainSocket({ port });
    expect(await closedWithoutBytes(raw, Buffer.from([0x16, 0x03, 0x01, 0x00, 0x40]))).toBe(true);
    await legitimate();
  });

  it("closes a header that claims 4 GiB, a wrong preface, plaintext HTTP, and TLS without the ALPN", async () => {
    const huge = await secure();
    const length = Buffer.alloc(4);
    length.writeUInt32BE(0xffffffff);
    expect(await closedWithoutBytes(huge, Buffer.concat([TRANSPORT_HEADER_PREFACE, length]))).toBe(true);
    const wrong = await secure();
    expect(await closedWithoutBytes(wrong, "transport.l5d.io/v2\r\n\r\n\0\0\0\0")).toBe(true);
    expect(await closedWithoutBytes(plainSocket({ port }), "GET / HTTP/1.1\r\nhost: x\r\n\r\n")).toBe(true);
    const noAlpn = await secure([]);
    expect(
      await closedWithoutBytes(
        noAlpn,
        Buffer.concat([
          encodeTransportHeader({ port: 8080, name: "", sessionProtocol: "http1" }),
          Buffer.from("GET / HTTP/1.1\r\nhost: x\r\n\r\n"),
        ]),
      ),
    ).toBe(true);
    await legitimate();
  });

  it("200 stalled connections at once: all closed by the bounds, and the port still serves meanwhile", async () => {
    // Each is watched from its handshake on, so one the bound already closed is not missed.
    const closed = Promise.all(
      Array.from({ length: 200 }, () =>
        secure().then((socket) => closedWithoutBytes(socket, undefined, 20_000)),
      ),
    );
    await legitimate();
    expect((await closed).every(Boolean)).toBe(true);
    await eventually(() => listener.connectionCount === 0);
  });

  it("routes refuse a second server for a port, and close() stops accepting", async () => {
    const other = createTransportHeaderListener({ identity: fooIdentity });
    const unroute = other.route(9090, server);
    expect(() => other.route(9090, { acceptTransportHeaderConnection: () => undefined })).toThrow(
      /already served/,
    );
    unroute();
    expect(other.ports()).toEqual([]);
    const otherPort = (await other.listen(0, "127.0.0.1")).port;
    await other.close();
    await expect(
      new Promise((resolve, reject) => {
        const socket = plainSocket({ port: otherPort });
        socket.once("connect", () => resolve("connected"));
        socket.once("error", reject);
      }),
    ).rejects.toMatchObject({ code: "ECONNREFUSED" });
  });
});
