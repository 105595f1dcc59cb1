/**
 * S9's target service: node:https with the mesh mTLS context of its pod's identity (as server.mjs
 * `https`), serving `POST /upload`:
 *   node retries-target.mjs <setup.json>
 * Every try is read to its end and checked against retries-payload.mjs (`x-s9-id` names the request);
 * a wrong body is a mismatch and answered 422, which no retry policy retries, so the client sees it too.
 * In failing mode, the first try of every tenth request id is answered 503 after its body was read (a
 * response before the body's end would make the request unretryable, contract §7.1); its next try is
 * counted as a retry and succeeds. The decision is by id, so both phases send the same requests and
 * only the failures differ.
 * Prints `LISTENING <port>`; then on stdin `fail 1|0` switches failing mode (prints `OK`), and `stats`
 * prints one JSON line of counts since the last `stats` and resets them. SIGTERM stops it.
 */
import { readFileSync } from "node:fs";
import https from "node:https";
import { createInterface } from "node:readline";
import { identityFromSetup } from "./env.mjs";
import { isBodyOf } from "./retries-payload.mjs";

const [setupFile] = process.argv.slice(2);
const setup = JSON.parse(readFileSync(setupFile, "utf8"));
const FAIL_EVERY = 10;

let failing = false;
/** Ids whose first try got a 503 and whose retry has not arrived yet. */
const awaitingRetry = new Set();
let counts = fresh();
function fresh() {
  return { tries: 0, firstTryFailures: 0, retries: 0, mismatches: 0, malformed: 0, connections: 0 };
}

const ok = Buffer.from("ok");
function app(req, res) {
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    counts.tries += 1;
    const idText = req.headers["x-s9-id"];
    const id = Number(idText);
    if (req.method !== "POST" || typeof idText !== "string" || !Number.isSafeInteger(id)) {
      counts.malformed += 1;
      res.writeHead(400, { "content-length": 0 }).end();
      return;
    }
    if (!isBodyOf(Buffer.concat(chunks), id)) {
      counts.mismatches += 1;
      res.writeHead(422, { "content-length": 0 }).end();
      return;
    }
    if (awaitingRetry.delete(id)) {
      counts.retries += 1;
    } else if (failing && id % FAIL_EVERY === 0) {
      awaitingRetry.add(id);
      counts.firstTryFailures += 1;
      res.writeHead(503, { "content-length": 0 }).end();
      return;
    }
    res.writeHead(200, { "content-length": ok.byteLength }).end(ok);
  });
}

const identity = await identityFromSetup(setup, setup.serverIdentity);
await identity.ready();
const server = https.createServer({ ...identity.tlsServerOptions(), keepAliveTimeout: 60_000 }, app);
server.on("secureConnection", () => {
  counts.connections += 1;
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
process.stdout.write(`LISTENING ${server.address().port}\n`);

const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  const command = line.trim();
  if (command === "stats") {
    process.stdout.write(`${JSON.stringify({ ...counts, awaitingRetry: awaitingRetry.size })}\n`);
    counts = fresh();
    awaitingRetry.clear();
  } else if (command === "fail 1" || command === "fail 0") {
    failing = command === "fail 1";
    process.stdout.write("OK\n");
  }
});
process.once("SIGTERM", () => {
  server.closeAllConnections();
  server.close();
  identity.close().finally(() => process.exit(0));
});
