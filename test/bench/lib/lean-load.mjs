/**
 * The closed-loop load generator of the throughput scenarios (S1b, S1c CPU, S2, S2b): the same traffic
 * as the undici Pool in load.mjs (keep-alive HTTP/1.1 `GET /` over a fixed number of connections, TLS 1.3
 * with the client certificate where the server asks for it, one request in flight per connection, the
 * next sent when the previous response ends), written straight to the sockets. Undici's per-request
 * work (a Request, a handler, a body stream, promises) cost about as much CPU as the server under test,
 * so one load-generator core could not keep a server core busy (~70% at best): the throughput ratios
 * then measured the client. Here a request is a prebuilt buffer and a response is found by its
 * Content-Length, so the server's core is the bottleneck. Debian's wrk and h2load cannot present a
 * client certificate, which every mTLS server here requires.
 *
 * Only what the benchmark apps send is understood: a status line, headers, and a body framed by
 * Content-Length or chunked encoding; anything else fails the run rather than being miscounted.
 */
import net from "node:net";
import tls from "node:tls";

const HEADER_END = Buffer.from("\r\n\r\n");
const CHUNKED_END = Buffer.from("0\r\n\r\n");

/** Length of the first complete response in `buffer`, 0 when it is not complete yet. */
function responseLength(buffer) {
  const headerEnd = buffer.indexOf(HEADER_END);
  if (headerEnd < 0) return 0;
  const bodyStart = headerEnd + 4;
  const head = buffer.latin1Slice(0, headerEnd).toLowerCase();
  if (!head.startsWith("http/1.1 200 ")) throw new Error(`unexpected response: ${head.split("\r\n")[0]}`);
  const lengthAt = head.indexOf("\r\ncontent-length:");
  if (lengthAt >= 0) {
    const lineEnd = head.indexOf("\r\n", lengthAt + 2);
    const length = Number(head.slice(lengthAt + 17, lineEnd < 0 ? undefined : lineEnd).trim());
    if (!Number.isInteger(length)) throw new Error("bad content-length");
    return buffer.length >= bodyStart + length ? bodyStart + length : 0;
  }
  if (head.includes("\r\ntransfer-encoding: chunked")) {
    const end = buffer.indexOf(CHUNKED_END, bodyStart - 2);
    return end < 0 ? 0 : end + CHUNKED_END.length;
  }
  throw new Error("response without content-length or chunked body");
}

class Connection {
  /** @param socket a connected socket; `request` is written for every request. */
  constructor(socket, request) {
    this.socket = socket;
    this.request = request;
    this.pending = undefined;
    this.loop = undefined;
    /** Length and header end of the last response that came as one chunk. */
    this.knownLength = undefined;
    socket.setNoDelay(true);
    socket.on("data", (chunk) => this.#onData(chunk));
    socket.on("error", (error) => this.loop?.fail(error));
    socket.on("close", () => this.loop?.fail(new Error("connection closed by the server")));
  }

  send() {
    this.socket.write(this.request);
  }

  #onData(chunk) {
    let buffer = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
    this.pending = undefined;
    // A server answers `GET /` alike every time (a Date header keeps its width): a chunk as long as the
    // last response, with a 200 status and the header block ending where it did, is that response again,
    // framed as it was, without parsing the headers into strings once more.
    const known = this.knownLength;
    if (
      known !== undefined &&
      buffer.length === known.total &&
      buffer[9] === 0x32 &&
      buffer[10] === 0x30 &&
      buffer[11] === 0x30 &&
      buffer.readUInt32BE(known.headerEnd) === 0x0d0a0d0a
    ) {
      this.loop?.completed(this);
      return;
    }
    try {
      for (;;) {
        const length = responseLength(buffer);
        if (length === buffer.length && buffer.length > 0)
          this.knownLength = { total: length, headerEnd: buffer.indexOf(HEADER_END) };
        if (length === 0) break;
        buffer = buffer.subarray(length);
        this.loop?.completed(this);
      }
    } catch (error) {
      this.loop?.fail(error);
      return;
    }
    if (buffer.length > 0) this.pending = buffer;
  }
}

/**
 * Sends one keep-alive `GET target` on `socket` and resolves with the response body (latin1), leaving the
 * connection open. Listeners, not `for await`: leaving an async iterator early destroys the socket.
 */
export function getOnce(socket, target) {
  return new Promise((resolve, reject) => {
    let buffer = Buffer.alloc(0);
    const onData = (chunk) => {
      buffer = Buffer.concat([buffer, chunk]);
      let length;
      try {
        length = responseLength(buffer);
      } catch (error) {
        finish();
        reject(error);
        return;
      }
      if (length === 0) return;
      finish();
      resolve(buffer.latin1Slice(buffer.indexOf(HEADER_END) + HEADER_END.length, length));
    };
    const onClose = () => {
      finish();
      reject(new Error("connection closed before the response"));
    };
    const finish = () => {
      socket.off("data", onData);
      socket.off("close", onClose);
    };
    socket.on("data", onData);
    socket.on("close", onClose);
    socket.write(`GET ${target} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: keep-alive\r\n\r\n`);
  });
}

/** A connection to 127.0.0.1:`port`: TLS with `tlsOptions` (server name not checked), plaintext without. */
export async function connect(port, tlsOptions) {
  return new Promise((resolve, reject) => {
    const socket = tlsOptions
      ? tls.connect({
          host: "127.0.0.1",
          port,
          ...tlsOptions,
          checkServerIdentity: () => undefined,
        })
      : net.connect({ host: "127.0.0.1", port });
    socket.once(tlsOptions ? "secureConnect" : "connect", () => {
      socket.off("error", reject);
      resolve(socket);
    });
    socket.once("error", reject);
  });
}

/**
 * One closed-loop phase over `slots` request slots (connections, or streams of one connection) for
 * `seconds`: `start(tally)` sends each slot's first request; `tally.completed()` counts a response and
 * says whether that slot sends again (the clock is read once per response, and a slot stops after its
 * first response past the deadline); `tally.fail(error)` ends the phase. Resolves with the responses
 * completed and the time taken once every slot has stopped.
 */
export function runClosedLoop(slots, seconds, start) {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const deadline = started + seconds * 1000;
    let count = 0;
    let active = slots;
    let failed = false;
    start({
      completed() {
        count += 1;
        if (performance.now() < deadline) return true;
        active -= 1;
        if (active === 0) resolve({ count, seconds: (performance.now() - started) / 1000 });
        return false;
      },
      fail(error) {
        if (failed) return;
        failed = true;
        reject(error);
      },
    });
  });
}

/**
 * `connections` keep-alive connections to 127.0.0.1:`port` (TLS with `tlsOptions`, plaintext without).
 * `closedLoop({ seconds })` returns the responses completed and the time taken.
 */
export async function createLeanClient(port, tlsOptions, connections) {
  const request = Buffer.from(`GET / HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\nconnection: keep-alive\r\n\r\n`);
  const sockets = await Promise.all(Array.from({ length: connections }, () => connect(port, tlsOptions)));
  const pool = sockets.map((socket) => new Connection(socket, request));
  return {
    closedLoop({ seconds }) {
      return runClosedLoop(pool.length, seconds, (tally) => {
        const loop = {
          completed(connection) {
            if (tally.completed()) connection.send();
            else connection.loop = undefined;
          },
          fail(error) {
            for (const connection of pool) connection.loop = undefined;
            tally.fail(error);
          },
        };
        for (const connection of pool) {
          connection.loop = loop;
          connection.send();
        }
      });
    },
    close() {
      for (const connection of pool) {
        connection.loop = undefined;
        connection.socket.destroy();
      }
    },
  };
}
