import http2 from "node:http2";
import tls from "node:tls";
import { status } from "@grpc/grpc-js";
import { type ControlPlane, startControlPlane } from "@inmesh/control-plane";
import { identity, inbound } from "@inmesh/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectServerName, plaintext, tlsClient, unary } from "./helpers.js";

const EPHEMERAL = { identity: 0, destination: 0, policy: 0 };

/** Any answer from the service proves the transport worked; these requests are refused by the handler itself. */
const badPortSpec = { workload: '{"ns":"default","pod":"x"}', port: 0 };
const emptyCertify = { identity: "", token: Buffer.alloc(0), certificateSigningRequest: Buffer.alloc(0) };

describe("control-plane transports", () => {
  let cp: ControlPlane;
  const clients: { close(): void }[] = [];
  const track = <T extends { close(): void }>(client: T): T => {
    clients.push(client);
    return client;
  };

  beforeAll(async () => {
    cp = await startControlPlane({ manifests: [], ports: EPHEMERAL });
  });
  afterAll(async () => {
    for (const client of clients) client.close();
    await cp.close();
  });

  it("serves plaintext gRPC to loopback clients on every port", async () => {
    const policy = track(new inbound.InboundServerPoliciesClient(cp.addresses.policy, plaintext()));
    const policyAnswer = await unary<inbound.Server>((callback) => policy.getPort(badPortSpec, callback));
    expect(policyAnswer.error?.code).toBe(status.INVALID_ARGUMENT);

    const ident = track(new identity.IdentityClient(cp.addresses.identity, plaintext()));
    const identityAnswer = await unary<identity.CertifyResponse>((callback) =>
      ident.certify(emptyCertify, callback),
    );
    expect(identityAnswer.error?.code).toBe(status.INVALID_ARGUMENT);
  });

  it("serves identity over TLS to a client without a certificate, as the proxy's first Certify is", async () => {
    const client = await tlsClient(cp, cp.serverNames.identity);
    const ident = track(
      new identity.IdentityClient(cp.addresses.identity, client.credentials, client.options),
    );
    const answer = await unary<identity.CertifyResponse>((callback) => ident.certify(emptyCertify, callback));
    expect(answer.error?.code).toBe(status.INVALID_ARGUMENT);
    expect(answer.error?.details).toBe("missing identity");
  });

  it("serves policy over mTLS to a client with a certificate from the trust anchors", async () => {
    const client = await tlsClient(
      cp,
      cp.serverNames.policy,
      "web.default.serviceaccount.identity.linkerd.cluster.local",
    );
    const policy = track(
      new inbound.InboundServerPoliciesClient(cp.addresses.policy, client.credentials, client.options),
    );
    const answer = await unary<inbound.Server>((callback) => policy.getPort(badPortSpec, callback));
    expect(answer.error?.code).toBe(status.INVALID_ARGUMENT);
  });

  it("refuses TLS clients without a certificate on policy and destination", async () => {
    for (const address of [cp.addresses.policy, cp.addresses.destination]) {
      const client = await tlsClient(cp, cp.serverNames.policy);
      const policy = track(
        new inbound.InboundServerPoliciesClient(address, client.credentials, client.options),
      );
      const answer = await unary<inbound.Server>((callback) => policy.getPort(badPortSpec, callback));
      expect(answer.error?.code).toBe(status.UNAVAILABLE);
      expect(answer.error?.details).toMatch(/certificate required/);
    }
  });

  it("refuses a client certificate that does not chain to the trust anchors", async () => {
    const { createCertificateAuthority } = await import("@inmesh/control-plane");
    const stranger = await createCertificateAuthority();
    const issued = await stranger.issueCredentials(
      "web.default.serviceaccount.identity.linkerd.cluster.local",
    );
    const { credentials } = await import("@grpc/grpc-js");
    const creds = credentials.createSsl(
      Buffer.from(cp.trustAnchorsPem),
      Buffer.from(issued.privateKeyPem),
      Buffer.from(issued.certificateChainPem),
      { checkServerIdentity: expectServerName(cp.serverNames.policy) },
    );
    const policy = track(
      new inbound.InboundServerPoliciesClient(cp.addresses.policy, creds, {
        "grpc.ssl_target_name_override": cp.serverNames.policy,
      }),
    );
    const answer = await unary<inbound.Server>((callback) => policy.getPort(badPortSpec, callback));
    expect(answer.error?.code).toBe(status.UNAVAILABLE);
  });

  it("presents the contract's server names, TLS 1.3 only, and accepts a proxy-style client that offers no ALPN", async () => {
    const [host, port] = [
      cp.addresses.identity.split(":")[0] as string,
      Number(cp.addresses.identity.split(":")[1]),
    ];
    const socket = tls.connect({
      host,
      port,
      servername: cp.serverNames.identity,
      ca: cp.trustAnchorsPem,
      checkServerIdentity: expectServerName(cp.serverNames.identity),
      minVersion: "TLSv1.3",
    });
    await new Promise<void>((resolve, reject) => {
      socket.once("secureConnect", resolve);
      socket.once("error", reject);
    });
    expect(socket.getProtocol()).toBe("TLSv1.3");
    expect(socket.alpnProtocol).toBe(false);
    // Prior-knowledge HTTP/2 over that socket, as linkerd2-proxy speaks to its control plane.
    const session = http2.connect(`https://${cp.addresses.identity}`, { createConnection: () => socket });
    const request = session.request({
      ":method": "POST",
      ":path": "/io.linkerd.proxy.identity.Identity/Certify",
      "content-type": "application/grpc",
      te: "trailers",
    });
    request.end(Buffer.from([0, 0, 0, 0, 0]));
    const grpcStatus = await new Promise<string | undefined>((resolve, reject) => {
      request.on("trailers", (trailers) => resolve(trailers["grpc-status"] as string | undefined));
      request.on("response", (headers) => {
        if (headers["grpc-status"] !== undefined) resolve(headers["grpc-status"] as string);
      });
      request.on("error", reject);
      request.resume();
    });
    session.close();
    expect(grpcStatus).toBe(String(status.INVALID_ARGUMENT));
  });

  it("refuses TLS 1.2", async () => {
    const [host, port] = [
      cp.addresses.identity.split(":")[0] as string,
      Number(cp.addresses.identity.split(":")[1]),
    ];
    const socket = tls.connect({
      host,
      port,
      servername: cp.serverNames.identity,
      ca: cp.trustAnchorsPem,
      checkServerIdentity: () => undefined,
      maxVersion: "TLSv1.2",
    });
    const outcome = await new Promise<string>((resolve) => {
      socket.once("secureConnect", () => resolve("connected"));
      socket.once("error", (error) => resolve(error.message));
    });
    socket.destroy();
    expect(outcome).not.toBe("connected");
  });
});

describe("control-plane with loopback plaintext disabled", () => {
  it("refuses plaintext from loopback and still serves TLS", async () => {
    await using cp = await startControlPlane({
      manifests: [],
      ports: EPHEMERAL,
      allowLoopbackPlaintext: false,
    });
    const plain = new inbound.InboundServerPoliciesClient(cp.addresses.policy, plaintext());
    const refused = await unary<inbound.Server>((callback) => plain.getPort(badPortSpec, callback));
    plain.close();
    expect(refused.error?.code).toBe(status.UNAVAILABLE);

    const client = await tlsClient(
      cp,
      cp.serverNames.policy,
      "web.default.serviceaccount.identity.linkerd.cluster.local",
    );
    const secure = new inbound.InboundServerPoliciesClient(
      cp.addresses.policy,
      client.credentials,
      client.options,
    );
    const answer = await unary<inbound.Server>((callback) => secure.getPort(badPortSpec, callback));
    secure.close();
    expect(answer.error?.code).toBe(status.INVALID_ARGUMENT);
  });
});
