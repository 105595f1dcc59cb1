/**
 * The service of S8 and S11, as a user writes it: `node app.mjs mesh` is a meshed app (createMesh from
 * the LINKERD2_PROXY_* environment, ready once identity is issued and policy loaded, then listening);
 * `node app.mjs http` is the same app on plain node:http. Prints `READY <port> <cpu ms>` once it serves.
 */
import http from "node:http";
import v8 from "node:v8";
import { distOf } from "./env.mjs";

const body = Buffer.from("ok");
function app(req, res) {
  // Heap probe for leak hunting (only with --expose-gc): heap used after full collections, in bytes.
  if (req.url === "/__heap" && typeof globalThis.gc === "function") {
    globalThis.gc();
    globalThis.gc();
    res.end(String(process.memoryUsage().heapUsed));
    return;
  }
  // What S8's RSS is made of: V8's young generation, which V8 sizes by how much survives its
  // scavenges and keeps at that size while the app allocates quickly, is most of the difference.
  if (req.url === "/__v8") {
    const committed = Object.fromEntries(
      v8.getHeapSpaceStatistics().map((s) => [s.space_name, s.space_size]),
    );
    res.end(
      JSON.stringify({
        young: committed.new_space + committed.new_large_object_space,
        heapTotal: process.memoryUsage().heapTotal,
      }),
    );
    return;
  }
  res.setHeader("content-length", body.byteLength);
  res.end(body);
}

/** CPU this process used since it started (boot included): the start-up cost a loaded machine cannot inflate. */
function cpuMs() {
  const { user, system } = process.cpuUsage();
  return Math.round((user + system) / 1000);
}

const kind = process.argv[2];
const port = Number(process.env.APP_PORT ?? 0);
let close;
if (kind === "mesh") {
  const { createMesh } = await import(distOf("mesh"));
  const mesh = createMesh();
  await mesh.ready();
  const server = mesh.createServer(app, { port, keepAliveTimeoutMs: 60_000 });
  const address = await server.listen(port, "127.0.0.1");
  process.stdout.write(`READY ${address.port} ${cpuMs()}\n`);
  close = () => mesh.close();
} else {
  const server = http.createServer({ keepAliveTimeout: 60_000 }, app);
  await new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));
  process.stdout.write(`READY ${server.address().port} ${cpuMs()}\n`);
  close = async () => {
    server.closeAllConnections();
    server.close();
  };
}
process.once("SIGTERM", () => {
  close().then(
    () => process.exit(0),
    () => process.exit(1),
  );
});
