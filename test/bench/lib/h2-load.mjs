/**
 * The HTTP/2 load of the S1d rows and gates: what a Linkerd sidecar sends a meshed workload.
 * linkerd2-proxy upgrades an application's HTTP/1 requests to HTTP/2 toward meshed endpoints and marks
 * them `l5d-orig-proto: HTTP/1.1`, multiplexed on one connection per peer; the SDK's own client does the
 * same. The closed loop keeps `streams` requests in flight on one mTLS session, the next sent when a
 * response ends; a status other than 200 fails the run rather than being counted.
 */
import http2 from "node:http2";
import { connect, runClosedLoop } from "./lean-load.mjs";

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

const FRAME = {
  DATA: 0x0,
  HEADERS: 0x1,
  RST_STREAM: 0x3,
  SETTINGS: 0x4,
  PING: 0x6,
  GOAWAY: 0x7,
  WINDOW_UPDATE: 0x8,
};
const FLAG = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4, PADDED: 0x8, PRIORITY: 0x20 };
const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
/** HPACK's static-table index 8, `:status: 200`, as nghttp2 (node:http2) sends it first in a response. */
const STATUS_200 = 0x88;

function frame(type, flags, streamId, payload) {
  const header = Buffer.alloc(9);
  header.writeUIntBE(payload.length, 0, 3);
  header[3] = type;
  header[4] = flags;
  header.writeUInt32BE(streamId, 5);
  return Buffer.concat([header, payload]);
}

/** An HPACK string literal, not Huffman-coded (every length here is below 127). */
const literal = (text) => Buffer.concat([Buffer.from([text.length]), Buffer.from(text, "latin1")]);

/**
 * The closed loop of S1d with a load generator cheap enough to saturate one server core: node:http2's
 * client costs more per request than the servers measured, so with it the server cores sat ~45% busy
 * and CPU per request carried each wake-up. This one writes prebuilt frames on an mTLS socket (HPACK
 * from the static table, the same `GET /` with `l5d-orig-proto: HTTP/1.1`) and reads frames only far
 * enough to count finished streams; anything but a 200 (or a reset, or GOAWAY) fails the run.
 */
export async function createLeanH2Client(port, tlsOptions, streams) {
  const socket = await connect(port, { ...tlsOptions, ALPNProtocols: ["h2"] });
  // node:http2 servers choose h2; a meshed server takes HTTP/2 by prior knowledge, as sidecars send it.
  if (socket.alpnProtocol !== "h2" && socket.alpnProtocol !== false)
    throw new Error(`server chose ALPN ${socket.alpnProtocol}, not h2`);
  const settings = Buffer.alloc(12);
  settings.writeUInt16BE(0x2, 0); // ENABLE_PUSH
  settings.writeUInt32BE(0, 2);
  settings.writeUInt16BE(0x4, 6); // INITIAL_WINDOW_SIZE
  settings.writeUInt32BE(2 ** 30, 8);
  const windowUpdate = Buffer.alloc(4);
  windowUpdate.writeUInt32BE(2 ** 30, 0);
  socket.write(
    Buffer.concat([
      PREFACE,
      frame(FRAME.SETTINGS, 0, 0, settings),
      frame(FRAME.WINDOW_UPDATE, 0, 0, windowUpdate),
    ]),
  );
  const block = Buffer.concat([
    Buffer.from([0x82, 0x87, 0x84]), // :method GET, :scheme https, :path /
    Buffer.from([0x01]), // :authority, literal value without indexing
    literal(`127.0.0.1:${port}`),
    Buffer.from([0x00]), // new name, without indexing
    literal("l5d-orig-proto"),
    literal("HTTP/1.1"),
  ]);
  const request = frame(FRAME.HEADERS, FLAG.END_HEADERS | FLAG.END_STREAM, 0, block);
  let nextStreamId = 1;
  let loop;
  let pending = Buffer.alloc(0);
  const responded = new Set();
  const fail = (error) => {
    const current = loop;
    loop = undefined;
    current?.fail(error);
  };
  const send = () => {
    const copy = Buffer.from(request);
    copy.writeUInt32BE(nextStreamId, 5);
    nextStreamId += 2;
    socket.write(copy);
  };
  const finished = (streamId) => {
    responded.delete(streamId);
    if (loop?.completed()) send();
  };
  socket.on("data", (chunk) => {
    pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
    let offset = 0;
    // The responses of one read go out as one write.
    socket.cork();
    while (pending.length - offset >= 9) {
      const length = pending.readUIntBE(offset, 3);
      if (pending.length - offset < 9 + length) break;
      const type = pending[offset + 3];
      const flags = pending[offset + 4];
      const streamId = pending.readUInt32BE(offset + 5) & 0x7fffffff;
      const payload = pending.subarray(offset + 9, offset + 9 + length);
      offset += 9 + length;
      if (type === FRAME.HEADERS) {
        if (!responded.has(streamId)) {
          let start = flags & FLAG.PADDED ? 1 : 0;
          if (flags & FLAG.PRIORITY) start += 5;
          if (payload[start] !== STATUS_200) {
            fail(new Error(`stream ${streamId}: response is not a 200 (first HPACK byte ${payload[start]})`));
            continue;
          }
          responded.add(streamId);
        }
        if (flags & FLAG.END_STREAM) finished(streamId);
      } else if (type === FRAME.DATA) {
        if (flags & FLAG.END_STREAM) finished(streamId);
      } else if (type === FRAME.SETTINGS) {
        if (!(flags & FLAG.ACK)) socket.write(frame(FRAME.SETTINGS, FLAG.ACK, 0, Buffer.alloc(0)));
      } else if (type === FRAME.PING) {
        if (!(flags & FLAG.ACK)) socket.write(frame(FRAME.PING, FLAG.ACK, 0, Buffer.from(payload)));
      } else if (type === FRAME.RST_STREAM || type === FRAME.GOAWAY) {
        fail(new Error(`server sent frame type ${type} (stream ${streamId})`));
      }
    }
    socket.uncork();
    pending = offset === pending.length ? Buffer.alloc(0) : pending.subarray(offset);
  });
  socket.on("error", (error) => fail(error));
  socket.on("close", () => fail(new Error("connection closed")));
  return {
    closedLoop({ seconds }) {
      return runClosedLoop(streams, seconds, (tally) => {
        loop = tally;
        for (let i = 0; i < streams; i += 1) send();
      });
    },
    close() {
      loop = undefined;
      socket.destroy();
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
