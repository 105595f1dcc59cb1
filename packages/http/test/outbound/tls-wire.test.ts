/**
 * What the outbound side puts on the wire, checked by peers that are not ours: nginx with mTLS from our CA
 * standing in for a sidecar inbound (SNI, ALPN, client certificate, TLS version), and a raw TLS server that
 * records the ALPN list offered and the transport header bytes (contract §4.2, §4.4).
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { connect as netConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer as createTlsServer, type TLSSocket, type Server as TlsServer } from "node:tls";
import { fileURLToPath } from "node:url";
import type { ControlPlane } from "@inmesh/control-plane";
import { hasMeshErrorCode, MeshErrorCode } from "@inmesh/core";
import type { IdentityProvider } from "@inmesh/identity";
import { parseTransportHeader } from "@inmesh/proto";
import { freeLoopbackPort } from "@inmesh/testing/ports";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createMeshDispatcher, type MeshDispatcher } from "../../src/index.js";
import { type DestinationDouble, startDestinationDouble } from "./destination-double.js";
import {
  CLIENT_POD,
  identityOf,
  manifests,
  podIdentity,
  podYaml,
  sleep,
  startTestControlPlane,
} from "./support.js";

const NGINX = identityOf("nginx");
const RAW = identityOf("raw");

function findNginx(): string {
  const candidates = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"];
  const found = () => candidates.find((path) => existsSync(path));
  if (!found()) {
    // The Debian package, installed when missing (CI runs the same script).
    const script = fileURLToPath(new URL("../../../../scripts/install-system-tools.sh", import.meta.url));
    execFileSync("bash", [script], { stdio: "inherit", timeout: 300_000 });
  }
  const path = found();
  if (!path) throw new Error("nginx is required for this test and could not be installed");
  return path;
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const open = await new Promise<boolean>((resolve) => {
      const socket = netConnect({ host: "127.0.0.1", port });
      socket.once("connect", () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`port ${port} did not open within ${timeoutMs} ms`);
    await sleep(50);
  }
}

interface RawConnection {
  clientSerial: string | undefined;
  offeredAlpn: string[] | undefined;
  servername: string | undefined;
  bytes: Buffer;
}

describe("outbound TLS on the wire", () => {
  let cp: ControlPlane;
  let clientIdentity: IdentityProvider;
  let dir: string;
  let nginx: ChildProcess | undefined;
  let nginxPort: number;
  let nginxLog = "";
  let raw: TlsServer;
  let rawPort: number;
  const rawConnections: RawConnection[] = [];
  let double: DestinationDouble;
  let dispatcher: MeshDispatcher;

  beforeAll(async () => {
    const nginxPath = findNginx();
    cp = await startTestControlPlane(manifests(podYaml(CLIENT_POD)));
    clientIdentity = await podIdentity(cp, CLIENT_POD.name, CLIENT_POD.sa);

    dir = await mkdtemp(join(tmpdir(), "inmesh-nginx-"));
    const issued = await cp.certificateAuthority.issueCredentials(NGINX);
    await writeFile(join(dir, "cert.pem"), issued.certificateChainPem);
    await writeFile(join(dir, "key.pem"), issued.privateKeyPem, { mode: 0o600 });
    await writeFile(join(dir, "anchors.pem"), cp.trustAnchorsPem);
    nginxPort = await freeLoopbackPort();
    const fields = [
      'sni":"$ssl_server_name',
      'alpn":"$ssl_alpn_protocol',
      'protocol":"$ssl_protocol',
      'verify":"$ssl_client_verify',
      'cert":"$ssl_client_escaped_cert',
      'host":"$http_host',
      'uri":"$request_uri',
    ];
    await writeFile(
      join(dir, "nginx.conf"),
      `master_process off;
pid ${join(dir, "nginx.pid")};
error_log ${join(dir, "error.log")} info;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path ${join(dir, "body")};
  proxy_temp_path ${join(dir, "proxy")};
  fastcgi_temp_path ${join(dir, "fastcgi")};
  uwsgi_temp_path ${join(dir, "uwsgi")};
  scgi_temp_path ${join(dir, "scgi")};
  server {
    listen 127.0.0.1:${nginxPort} ssl;
    ssl_certificate ${join(dir, "cert.pem")};
    ssl_certificate_key ${join(dir, "key.pem")};
    ssl_protocols TLSv1.3;
    ssl_verify_client on;
    ssl_verify_depth 3;
    ssl_client_certificate ${join(dir, "anchors.pem")};
    location / {
      default_type application/json;
      return 200 '{"${fields.join('","')}"}';
    }
  }
}
`,
    );
    nginx = spawn(nginxPath, ["-p", dir, "-c", join(dir, "nginx.conf"), "-g", "daemon off;"], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    nginx.stderr?.on("data", (chunk: Buffer) => {
      nginxLog += chunk.toString();
    });
    await waitForPort(nginxPort, 10_000).catch((error: unknown) => {
      throw new Error(`${(error as Error).message}; nginx said: ${nginxLog}`);
    });

    // A raw TLS peer with a certificate for RAW: records SNI, the ALPN list offered and the first bytes.
    const rawCredentials = await cp.certificateAuthority.issueCredentials(RAW);
    raw = createTlsServer(
      {
        key: rawCredentials.privateKeyPem,
        cert: rawCredentials.certificateChainPem,
        minVersion: "TLSv1.3",
        requestCert: true,
        rejectUnauthorized: true,
        ca: cp.trustAnchorsPem,
        ALPNCallback: ({ protocols }) => {
          pendingAlpn = protocols;
          return protocols.includes("transport.l5d.io/v1") ? "transport.l5d.io/v1" : undefined;
        },
      },
      (socket: TLSSocket) => {
        const connection: RawConnection = {
          clientSerial: socket.getPeerX509Certificate()?.serialNumber,
          offeredAlpn: pendingAlpn,
          servername: (socket as TLSSocket & { servername?: string }).servername,
          bytes: Buffer.alloc(0),
        };
        pendingAlpn = undefined;
        rawConnections.push(connection);
        socket.on("data", (chunk: Buffer) => {
          connection.bytes = Buffer.concat([connection.bytes, chunk]);
          if (connection.bytes.includes("\r\n\r\n")) {
            socket.end("HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nraw");
          }
        });
        socket.on("error", () => undefined);
      },
    );
    let pendingAlpn: string[] | undefined;
    await new Promise<void>((resolve) => raw.listen(0, "127.0.0.1", resolve));
    rawPort = (raw.address() as { port: number }).port;

    double = await startDestinationDouble({
      "web.default.svc.cluster.local:80": [{ port: nginxPort, identity: NGINX }],
      "impostor.default.svc.cluster.local:80": [{ port: nginxPort, identity: identityOf("somebody-else") }],
      "raw.default.svc.cluster.local:80": [{ port: rawPort, identity: RAW }],
      "raw-th.default.svc.cluster.local:80": [{ port: 8080, identity: RAW, opaqueTransportPort: rawPort }],
    });
    dispatcher = createMeshDispatcher({
      identity: clientIdentity,
      discovery: double.discovery,
      failFastTimeoutMs: 500,
    });
  });

  afterAll(async () => {
    await dispatcher?.close();
    await double?.close();
    if (nginx && nginx.exitCode === null) {
      const exited = new Promise((resolve) => nginx?.once("exit", resolve));
      nginx.kill("SIGTERM");
      await Promise.race([exited, sleep(3000)]);
      if (nginx.exitCode === null) nginx.kill("SIGKILL");
    }
    await new Promise<void>((resolve) => (raw ? raw.close(() => resolve()) : resolve()));
    await clientIdentity?.close();
    await cp?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("talks to nginx with SNI = the endpoint identity, no ALPN, TLS 1.3 and our client certificate", async () => {
    const response = await request("http://web.default.svc.cluster.local/check?x=1", { dispatcher });
    expect(response.statusCode).toBe(200);
    const seen = (await response.body.json()) as Record<string, string>;
    expect(seen.sni).toBe(NGINX);
    expect(seen.alpn).toBe("");
    expect(seen.protocol).toBe("TLSv1.3");
    expect(seen.verify).toBe("SUCCESS");
    expect(seen.host).toBe("web.default.svc.cluster.local:80");
    expect(seen.uri).toBe("/check?x=1");
    const certificate = new X509Certificate(decodeURIComponent(seen.cert ?? ""));
    expect(certificate.subjectAltName).toBe(`DNS:${identityOf("client")}`);
  });

  it("refuses a server whose certificate is not the identity discovery named", async () => {
    // As linkerd2-proxy: no endpoint became ready within the fail-fast timeout, a 504 with its reason.
    const answer = await request("http://impostor.default.svc.cluster.local/", { dispatcher });
    expect(answer.statusCode).toBe(504);
    expect(String(answer.headers["l5d-proxy-error"])).toMatch(/endpoints of impostor/);
    await answer.body.text();
    // The typed error, with the certificate mismatch as its cause, for callers that ask for errors.
    const typed = createMeshDispatcher({
      identity: clientIdentity,
      discovery: double.discovery,
      failFastTimeoutMs: 500,
      proxyErrorResponses: false,
    });
    try {
      const error = await request("http://impostor.default.svc.cluster.local/", { dispatcher: typed }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(hasMeshErrorCode(error, MeshErrorCode.DESTINATION_NO_ENDPOINTS)).toBe(true);
      const connectError = (error as Error).cause as Error;
      expect(connectError?.name).toBe("EndpointConnectError");
      expect(hasMeshErrorCode(connectError.cause, MeshErrorCode.IDENTITY_PEER_MISMATCH)).toBe(true);
    } finally {
      await typed.close();
    }
  });

  it("offers no ALPN at all on mesh TLS", async () => {
    rawConnections.length = 0;
    const response = await request("http://raw.default.svc.cluster.local/plain", { dispatcher });
    expect(await response.body.text()).toBe("raw");
    expect(rawConnections).toHaveLength(1);
    expect(rawConnections[0]?.servername).toBe(RAW);
    expect(rawConnections[0]?.offeredAlpn).toBeUndefined();
    expect(rawConnections[0]?.bytes.toString("latin1")).toMatch(/^GET \/plain HTTP\/1\.1\r\n/);
  });

  it("offers only transport.l5d.io/v1 and sends the transport header for opaque-transport endpoints", async () => {
    rawConnections.length = 0;
    const response = await request("http://raw-th.default.svc.cluster.local/th", { dispatcher });
    expect(await response.body.text()).toBe("raw");
    expect(rawConnections).toHaveLength(1);
    const connection = rawConnections[0] as RawConnection;
    expect(connection.offeredAlpn).toEqual(["transport.l5d.io/v1"]);
    expect(connection.servername).toBe(RAW);
    const parsed = parseTransportHeader(connection.bytes);
    expect(parsed.complete).toBe(true);
    if (!parsed.complete) return;
    expect(parsed.header).toEqual({ port: 8080, name: "", sessionProtocol: "http1" });
    expect(connection.bytes.subarray(parsed.consumed).toString("latin1")).toMatch(/^GET \/th HTTP\/1\.1\r\n/);
  });

  it("uses the current certificate generation for new connections after a rotation", async () => {
    rawConnections.length = 0;
    const first = await request("http://raw.default.svc.cluster.local/one", { dispatcher });
    await first.body.text();
    const before = clientIdentity.state().serial;
    await clientIdentity.refresh();
    const after = clientIdentity.state().serial;
    expect(after).not.toBe(before);
    // The raw peer closes every connection, so the second request needs a new handshake.
    const second = await request("http://raw.default.svc.cluster.local/two", { dispatcher });
    await second.body.text();
    expect(rawConnections).toHaveLength(2);
    expect(rawConnections[0]?.clientSerial?.toLowerCase()).toBe(before?.toLowerCase());
    expect(rawConnections[1]?.clientSerial?.toLowerCase()).toBe(after?.toLowerCase());
  });
});
