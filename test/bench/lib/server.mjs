/**
 * One benchmark server per process, so each is pinned and measured on its own:
 *   node server.mjs <kind> <setup.json>
 * kind: `mesh` (createMeshServer: mTLS + policy + l5d-client-id; HTTP/2 requests reach the node:http
 * app through its HTTP/1 downgrade, as a Linkerd sidecar's do), `mesh-h2compat` (the same with
 * `http2Compat`: HTTP/2 requests reach the app on node:http2 compatibility objects, no downgrade),
 * `https` (node:https with the same mTLS context as the mesh server, no policy), `h2` (node:http2 with
 * the same mTLS context, the app on its compatibility objects: S1d's baseline), `http` (plain
 * node:http: S1a/S1b's baseline, and the app behind nginx). Every kind serves the same app. Prints
 * `LISTENING <port>` once it serves; SIGTERM stops it.
 */
import { readFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import { monitorEventLoopDelay, performance } from "node:perf_hooks";
import { distOf, identityFromSetup } from "./env.mjs";

const [kind, setupFile] = process.argv.slice(2);
const setup = JSON.parse(readFileSync(setupFile, "utf8"));

// S7: how long the event loop was blocked, and how many certificates the identity installed, since the
// last `/__loop` (which resets all of it).
const loopDelay = setup.monitorLoop ? monitorEventLoopDelay({ resolution: 1 }) : undefined;
loopDelay?.enable();
let rotations = 0;
// Which stalls were a rotation's: a 1 ms timer notes each turn it ran late by more than STALL_MS, with
// when; a stall noted within ROTATION_WINDOW_MS before a 'refreshed' event (the Certify round trip, the
// chain check and the install all come just before it) or just after it (the turn that emitted it) is
// the rotation's, the others are the load's, the collector's or the machine's.
const STALL_MS = 2;
const ROTATION_WINDOW_MS = { before: 150, after: 10 };
let stalls = [];
let refreshedAt = [];
if (loopDelay !== undefined) {
  let expected = performance.now() + 1;
  setInterval(() => {
    const now = performance.now();
    if (now - expected > STALL_MS) stalls.push({ at: now, ms: now - expected });
    expected = now + 1;
  }, 1).unref();
}

/** The longest stalls in and out of a rotation's window since the last reset, in ms. */
function attributeStalls() {
  let rotationMaxMs = 0;
  let otherMaxMs = 0;
  for (const stall of stalls) {
    const inRotation = refreshedAt.some(
      (at) => stall.at >= at - ROTATION_WINDOW_MS.before && stall.at <= at + ROTATION_WINDOW_MS.after,
    );
    if (inRotation) rotationMaxMs = Math.max(rotationMaxMs, stall.ms);
    else otherMaxMs = Math.max(otherMaxMs, stall.ms);
  }
  return { rotationMaxMs, otherMaxMs };
}

const body = Buffer.from("ok");
function app(req, res) {
  // The heap gate's probe (only with --expose-gc): heap used after full collections, in bytes.
  if (req.url === "/__heap" && typeof globalThis.gc === "function") {
    globalThis.gc();
    globalThis.gc();
    res.end(String(process.memoryUsage().heapUsed));
    return;
  }
  if (req.url === "/__loop" && loopDelay !== undefined) {
    res.end(
      JSON.stringify({
        maxMs: loopDelay.max / 1e6,
        p99Ms: loopDelay.percentile(99) / 1e6,
        rotations,
        ...attributeStalls(),
      }),
    );
    loopDelay.reset();
    rotations = 0;
    stalls = [];
    refreshedAt = [];
    return;
  }
  res.setHeader("content-length", body.byteLength);
  res.end(body);
}

let close = async () => {};
let port;
if (kind === "http") {
  const server = http.createServer({ keepAliveTimeout: 60_000 }, app);
  port = await listen(server, setup.port ?? 0);
  close = async () => {
    server.closeAllConnections();
    server.close();
  };
} else {
  const identity = await identityFromSetup(setup, setup.serverIdentity, {
    // S7 re-certifies every few seconds (undefined: the defaults).
    minRefreshMs: setup.minRefreshMs,
    maxRefreshMs: setup.maxRefreshMs,
  });
  identity.on("refreshed", () => {
    rotations += 1;
    refreshedAt.push(performance.now());
  });
  await identity.ready();
  if (kind === "h2") {
    const http2 = await import("node:http2");
    const server = http2.createSecureServer(identity.tlsServerOptions(), app);
    port = await listen(server, setup.port ?? 0);
    close = async () => {
      server.close();
      await identity.close();
    };
  } else if (kind === "https") {
    const server = https.createServer({ ...identity.tlsServerOptions(), keepAliveTimeout: 60_000 }, app);
    port = await listen(server, setup.port ?? 0);
    close = async () => {
      server.closeAllConnections();
      server.close();
      await identity.close();
    };
  } else if (kind === "mesh" || kind === "mesh-h2compat") {
    const { createMeshServer } = await import(distOf("http"));
    const policy = await admitOne(setup.clientIdentity);
    const mesh = createMeshServer({
      identity,
      policy,
      port: 8080,
      handler: app,
      keepAliveTimeoutMs: 60_000,
      http2Compat: kind === "mesh-h2compat",
    });
    port = (await mesh.listen(setup.port ?? 0, "127.0.0.1")).port;
    close = async () => {
      await mesh.close();
      await identity.close();
    };
  } else {
    throw new Error(`unknown server kind ${kind}`);
  }
}
process.stdout.write(`LISTENING ${port}\n`);
process.once("SIGTERM", () => {
  close().then(
    () => process.exit(0),
    () => process.exit(1),
  );
});

function listen(server, wanted) {
  return new Promise((resolve) => server.listen(wanted, "127.0.0.1", () => resolve(server.address().port)));
}

/** A Server that admits one mesh identity on the default route: the common case. */
async function admitOne(clientIdentity) {
  const { compileServerPolicy } = await import(distOf("policy"));
  const { inbound, ipNetworkFromString } = await import(distOf("proto"));
  return compileServerPolicy(
    inbound.Server.fromPartial({
      protocol: { kind: { $case: "detect", value: { timeout: { seconds: 10n, nanos: 0 }, httpRoutes: [] } } },
      authorizations: [
        {
          networks: [{ net: ipNetworkFromString("0.0.0.0/0"), except: [] }],
          authentication: {
            permit: {
              $case: "meshTLS",
              value: {
                clients: {
                  $case: "identities",
                  value: { identities: [{ name: clientIdentity }], suffixes: [] },
                },
              },
            },
          },
          metadata: {
            kind: {
              $case: "resource",
              value: { group: "policy.linkerd.io", kind: "authorizationpolicy", name: "bench-client" },
            },
          },
        },
      ],
      labels: { group: "policy.linkerd.io", kind: "server", name: "bench" },
    }),
    { port: 8080 },
  );
}
