/**
 * The closed-loop load generator of the HTTP/2 rows (S1d): what a Linkerd sidecar sends a meshed
 * workload. linkerd2-proxy upgrades an application's HTTP/1 requests to HTTP/2 toward meshed endpoints
 * and marks them `l5d-orig-proto: HTTP/1.1`, multiplexed on one connection per peer; the SDK's own
 * client does the same. `streams` requests are kept in flight on one mTLS session, the next sent when a
 * response ends. A status other than 200 fails the run rather than being counted.
 */
import http2 from "node:http2";
import { runClosedLoop } from "./lean-load.mjs";

/** What a sidecar sends: an HTTP/1 `GET /` upgraded to HTTP/2. */
const headers = { ":method": "GET", ":path": "/", "l5d-orig-proto": "HTTP/1.1" };

async function connectSession(port, tlsOptions) {
  const session = http2.connect(`https://127.0.0.1:${port}`, {
    ...tlsOptions,
    checkServerIdentity: () => undefined,
  });
  await new Promise((resolve, reject) => {
    session.once("connect", resolve);
    session.once("error", reject);
  });
  return session;
}

export async function createH2Client(port, tlsOptions, streams) {
  const session = await connectSession(port, tlsOptions);
  return {
    closedLoop({ seconds }) {
      return runClosedLoop(streams, seconds, (tally) => {
        const send = () => {
          const request = session.request(headers);
          request.on("response", (response) => {
            if (response[":status"] !== 200) tally.fail(new Error(`HTTP/2 status ${response[":status"]}`));
          });
          request.on("data", () => {});
          request.on("error", (error) => tally.fail(error));
          request.on("end", () => {
            if (tally.completed()) send();
          });
          request.end();
        };
        for (let i = 0; i < streams; i += 1) send();
      });
    },
    close() {
      session.close();
    },
  };
}

/**
 * One request at a time on one mTLS session, with the undici Pool's `request()` shape that
 * `sequential()` (load.mjs) drives: the HTTP/2 counterpart for callgrind's instructions per request.
 */
export async function createH2Sequential(port, tlsOptions) {
  const session = await connectSession(port, tlsOptions);
  return {
    request() {
      return new Promise((resolve, reject) => {
        const request = session.request(headers);
        let statusCode = 0;
        request.on("response", (response) => {
          statusCode = Number(response[":status"]);
        });
        request.on("data", () => {});
        request.on("error", reject);
        request.on("end", () => resolve({ statusCode, body: { dump: async () => {} } }));
        request.end();
      });
    },
    close() {
      session.close();
    },
  };
}
