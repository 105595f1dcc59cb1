#!/usr/bin/env node
// The attacked SDK service: `mesh.createServer(handler, options)` (createMeshServer underneath) with a
// plain node:http handler, mesh TLS and plaintext on one port, its identity from the dev control plane.
// Runs from the built dist, configured by the pod's LINKERD2_PROXY_* variables and:
//   ATTACK_SERVER_OPTIONS  JSON merged into the createServer options (small bounds for short tests)
// It prints one JSON ready line on stdout, as the example services do.
import { createMesh } from "../../../packages/mesh/dist/index.js";

const SHUTDOWN_LIMIT_MS = 5_000;
const MAX_ECHOED_HEADERS = 32;
const MAX_ECHOED_LENGTH = 512;
const OUTBOUND_TIMEOUT_MS = 10_000;

const pod = process.env.POD_NAME ?? "target";
const host = process.env.LINKERD2_PROXY_INBOUND_IPS?.split(",")[0] ?? "127.0.0.1";
const port = Number(process.env.LINKERD2_PROXY_INBOUND_PORTS?.split(",")[0]);
const serverOptions = JSON.parse(process.env.ATTACK_SERVER_OPTIONS ?? "{}");
const outboundBase = process.env.ATTACK_OUTBOUND_BASE ?? "http://target.bookshop.svc.cluster.local";

const mesh = createMesh();

/** Every header whose name is l5d-client-id once case and whitespace are ignored. */
function clientIdHeaders(rawHeaders) {
  const seen = [];
  for (let index = 0; index + 1 < rawHeaders.length && seen.length < MAX_ECHOED_HEADERS; index += 2) {
    const name = String(rawHeaders[index]);
    if (name.toLowerCase().replace(/\s/g, "") === "l5d-client-id") {
      seen.push([name, String(rawHeaders[index + 1]).slice(0, MAX_ECHOED_LENGTH)]);
    }
  }
  return seen;
}

function reply(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

/** `/call/<rest>`: calls `<outboundBase>/<rest>` through the mesh (outbound routes match `/<rest>`). */
async function callOutbound(req, res) {
  const rest = req.url.slice("/call".length) || "/";
  try {
    const response = await mesh.fetch(`${outboundBase}${rest}`, {
      signal: AbortSignal.timeout(OUTBOUND_TIMEOUT_MS),
    });
    await response.arrayBuffer();
    reply(res, 200, { pod, outboundStatus: response.status });
  } catch (error) {
    reply(res, 502, { pod, error: String(error?.message ?? error).slice(0, MAX_ECHOED_LENGTH) });
  }
}

function handler(req, res) {
  req.on("error", () => {});
  res.on("error", () => {});
  // Read (and drop) the body before answering, as an application would.
  req.resume();
  req.on("end", () => {
    if (req.url.startsWith("/call/")) {
      void callOutbound(req, res);
      return;
    }
    reply(res, 200, {
      pod,
      method: req.method,
      path: req.url.slice(0, MAX_ECHOED_LENGTH),
      httpVersion: req.httpVersion,
      clientId: clientIdHeaders(req.rawHeaders),
    });
  });
}

const server = mesh.createServer(handler, { ...serverOptions, port });

let stopping = false;
function stop() {
  if (stopping) return;
  stopping = true;
  setTimeout(() => process.exit(1), SHUTDOWN_LIMIT_MS).unref();
  mesh.close().then(
    () => process.exit(0),
    () => process.exit(1),
  );
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
if (process.env.STOP_WHEN_STDIN_CLOSES === "true") {
  process.stdin.on("end", stop);
  process.stdin.on("error", stop);
  process.stdin.resume();
}
await mesh.ready({ signal: AbortSignal.timeout(30_000) });
await server.listen(port, host);
const identity = mesh.identity.state();
process.stdout.write(
  `${JSON.stringify({
    event: "ready",
    service: "sdk",
    pod,
    pid: process.pid,
    address: `${host}:${port}`,
    identity: identity.localName,
    admin: mesh.admin() ? process.env.LINKERD2_PROXY_ADMIN_LISTEN_ADDR : undefined,
  })}\n`,
);
