/**
 * The closed-loop load generator of the HTTP/2 rows (S1d): what a Linkerd sidecar sends a meshed
 * workload. linkerd2-proxy upgrades an application's HTTP/1 requests to HTTP/2 toward meshed endpoints
 * and marks them `l5d-orig-proto: HTTP/1.1`, multiplexed on one connection per peer; the SDK's own
 * client does the same. `streams` requests are kept in flight on one mTLS session, the next sent when a
 * response ends. A status other than 200 fails the run rather than being counted.
 */
import http2 from "node:http2";

export async function createH2Client(port, tlsOptions, streams) {
  const session = http2.connect(`https://127.0.0.1:${port}`, {
    ...tlsOptions,
    checkServerIdentity: () => undefined,
  });
  await new Promise((resolve, reject) => {
    session.once("connect", resolve);
    session.once("error", reject);
  });
  const headers = { ":method": "GET", ":path": "/", "l5d-orig-proto": "HTTP/1.1" };
  return {
    closedLoop({ seconds }) {
      return new Promise((resolve, reject) => {
        const started = performance.now();
        const deadline = started + seconds * 1000;
        let count = 0;
        let active = streams;
        let failed = false;
        const fail = (error) => {
          if (failed) return;
          failed = true;
          reject(error);
        };
        const send = () => {
          const request = session.request(headers);
          request.on("response", (response) => {
            if (response[":status"] !== 200) fail(new Error(`HTTP/2 status ${response[":status"]}`));
          });
          request.on("data", () => {});
          request.on("error", fail);
          request.on("end", () => {
            count += 1;
            // The clock is read once per response; a stream slot stops after its first response past it.
            if (performance.now() < deadline) {
              send();
              return;
            }
            active -= 1;
            if (active === 0) resolve({ count, seconds: (performance.now() - started) / 1000 });
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
