/**
 * S6's positive control: node:https with the same mesh mTLS (TLS 1.3 only, client certificate required
 * and verified against the trust anchors, the server identity's certificate) but with OpenSSL's default
 * stateless session tickets, i.e. a server that lets a client resume. Two uses: it proves that the
 * resumption probe can see a resumed session (so "the SDK server resumed none" is a finding, not a probe
 * that cannot fail), and it measures what resumption would save per handshake, which the SDK server
 * gives up by design (packages/identity/src/context.ts).
 *   node handshakes-resumable.mjs <setup.json>   setup: { key, cert, ca }
 * Prints `LISTENING <port>` once it serves; SIGTERM stops it.
 */
import { readFileSync } from "node:fs";
import https from "node:https";

const setup = JSON.parse(readFileSync(process.argv[2], "utf8"));
const body = Buffer.from("ok");
const server = https.createServer(
  {
    key: setup.key,
    cert: setup.cert,
    ca: setup.ca,
    minVersion: "TLSv1.3",
    requestCert: true,
    rejectUnauthorized: true,
    keepAliveTimeout: 60_000,
  },
  (_req, res) => {
    res.setHeader("content-length", body.byteLength);
    res.end(body);
  },
);
server.listen(0, "127.0.0.1", () => process.stdout.write(`LISTENING ${server.address().port}\n`));
process.once("SIGTERM", () => {
  server.closeAllConnections();
  server.close(() => process.exit(0));
});
