// R11: header spoofing, request smuggling and floods.
// (a) l5d-client-id and look-alikes (case, duplicates, whitespace) from an mTLS peer with another
//     identity and from unauthenticated peers: the application sees only the verified identity, or none.
// (b) ␠Content-Length, CL+TE, obs-fold (CVE-2024-27982 class): 400 and the connection closed.
// (c) 10,000 headers (HTTP/1 and HTTP/2): 431 or a close; 100,000 distinct paths and authorities
//     (10,000 in CI): metric series stay under the cap (CVE-2025-43915 class).
import type { TLSSocket } from "node:tls";
import type { Mesh } from "@inmesh/mesh";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { INTRUDER_POD } from "./harness/cluster.js";
import { type FigureRow, mib, printFigures, scaled, testTimeoutMs } from "./harness/figures.js";
import {
  continuation,
  FrameType,
  headers,
  hpackLiteral,
  PREFACE,
  requestBlock,
  settings,
} from "./harness/h2-frames.js";
import { startClientMesh } from "./harness/legit.js";
import {
  connectPlain,
  connectTls,
  goawayCode,
  http1ResponseCount,
  http1Status,
  parseFrames,
  sleep,
  watch,
  writeAll,
} from "./harness/raw.js";
import { type AttackBed, type AttackTarget, expectHealthy, startAttackBed } from "./harness/targets.js";

const CLOSE_LIMIT_MS = 5_000;
const DISTINCT_REQUESTS = scaled(10_000, 100_000);
/** The admin endpoint's default cap on series per metric family (@inmesh/admin maxSeriesPerFamily). */
const SERIES_CAP_PER_FAMILY = 2_000;

let bed: AttackBed;
let intruder: Mesh;
const targets = new Map<string, AttackTarget>();

beforeAll(async () => {
  bed = await startAttackBed();
  intruder = await startClientMesh(await bed.cluster.envFor(INTRUDER_POD));
  targets.set("sdk", await bed.startSdk({}, "sdk"));
  for (const target of await bed.startExamples()) targets.set(target.name, target);
}, 120_000);

afterAll(async () => {
  await intruder?.close();
  await bed?.close();
}, 60_000);

function targetNamed(name: string): AttackTarget {
  const target = targets.get(name);
  if (!target) throw new Error(`${name} was not started`);
  return target;
}

type Peer = "mTLS intruder" | "TLS without certificate" | "plaintext";
const PEERS: readonly Peer[] = ["mTLS intruder", "TLS without certificate", "plaintext"];

async function connectAs(peer: Peer, target: AttackTarget) {
  const endpoint = { host: target.child.host, port: target.child.port, identity: target.identity };
  if (peer === "plaintext") return connectPlain(endpoint);
  if (peer === "TLS without certificate") return connectTls(endpoint);
  return connectTls(endpoint, intruder.identity.tlsClientOptions(target.identity)) as Promise<TLSSocket>;
}

const SPOOFED = "client.bookshop.serviceaccount.identity.linkerd.cluster.local";

/** Header lines (HTTP/1) spoofing l5d-client-id in the ways R11a lists. */
const HTTP1_SPOOFS: Record<string, string[]> = {
  plain: [`l5d-client-id: ${SPOOFED}`],
  "mixed case": [`L5D-Client-ID: ${SPOOFED}`],
  duplicates: [
    `l5d-client-id: ${SPOOFED}`,
    `l5d-client-id: admin.linkerd.serviceaccount.identity.linkerd.cluster.local`,
  ],
  "value whitespace": [`l5d-client-id:    ${SPOOFED}   `],
  "comma list": [`l5d-client-id: ${SPOOFED}, other`],
  "space before colon": [`l5d-client-id : ${SPOOFED}`],
  "tab before colon": [`l5d-client-id\t: ${SPOOFED}`],
  "folded value": ["l5d-client-id: x", ` ${SPOOFED}`],
};

/** Header fields (HTTP/2) spoofing it: HPACK carries names as sent, so uppercase and spaces get through the wire. */
const HTTP2_SPOOFS: Record<string, [string, string][]> = {
  plain: [["l5d-client-id", SPOOFED]],
  "upper-case name": [["L5D-Client-Id", SPOOFED]],
  duplicates: [
    ["l5d-client-id", SPOOFED],
    ["l5d-client-id", "admin.linkerd.serviceaccount.identity.linkerd.cluster.local"],
  ],
  "value whitespace": [["l5d-client-id", ` ${SPOOFED} `]],
  "name with space": [["l5d-client-id ", SPOOFED]],
};

interface AppView {
  /** What the application answered, if the request reached it. */
  readonly clientId: [string, string][] | undefined;
  readonly status: number | undefined;
}

/** The app (servers/sdk-server.mjs) answers JSON listing the l5d-client-id headers it saw. */
function appViewFromHttp1(bytes: Buffer): AppView {
  const status = http1Status(bytes);
  const body = bytes.toString("latin1").split("\r\n\r\n")[1] ?? "";
  try {
    return { status, clientId: (JSON.parse(body) as { clientId: [string, string][] }).clientId };
  } catch {
    return { status, clientId: undefined };
  }
}

function appViewFromHttp2(bytes: Buffer): AppView {
  const body = Buffer.concat(
    parseFrames(bytes)
      .filter((frame) => frame.type === FrameType.DATA && frame.streamId === 1)
      .map((frame) => frame.payload),
  ).toString("utf8");
  try {
    return { status: undefined, clientId: (JSON.parse(body) as { clientId: [string, string][] }).clientId };
  } catch {
    return { status: undefined, clientId: undefined };
  }
}

/** The only thing the app may see: the verified identity for an mTLS peer, nothing otherwise. */
function expectedClientId(peer: Peer): [string, string][] {
  return peer === "mTLS intruder" ? [["l5d-client-id", intruder.identity.localName]] : [];
}

describe("R11a: l5d-client-id spoofing (sdk service)", () => {
  for (const peer of PEERS) {
    it(`${peer}: HTTP/1 and HTTP/2 variants; the app sees only the verified identity or none`, async () => {
      const target = targetNamed("sdk");
      await target.revive();
      const rows: FigureRow[] = [];
      try {
        for (const [variant, lines] of Object.entries(HTTP1_SPOOFS)) {
          const socket = await connectAs(peer, target);
          const watched = watch(socket);
          await writeAll(
            socket,
            Buffer.from(
              `GET /spoof HTTP/1.1\r\nHost: target\r\n${lines.join("\r\n")}\r\nConnection: close\r\n\r\n`,
              "latin1",
            ),
          );
          await watched.closed(CLOSE_LIMIT_MS);
          socket.destroy();
          const view = appViewFromHttp1(watched.received());
          rows.push({
            protocol: "HTTP/1",
            variant,
            status: view.status,
            "app saw": JSON.stringify(view.clientId ?? "—"),
          });
          if (view.clientId !== undefined) {
            expect(normalize(view.clientId), `HTTP/1 ${variant} from ${peer}`).toEqual(
              expectedClientId(peer),
            );
          } else {
            expect(view.status, `HTTP/1 ${variant} from ${peer}: refused, not served`).toBeGreaterThanOrEqual(
              400,
            );
          }
        }
        for (const [variant, fields] of Object.entries(HTTP2_SPOOFS)) {
          const socket = await connectAs(peer, target);
          const watched = watch(socket);
          const scheme = peer === "plaintext" ? "http" : "https";
          await writeAll(
            socket,
            Buffer.concat([
              PREFACE,
              settings(),
              headers(
                1,
                requestBlock({ method: "GET", path: "/spoof", scheme, authority: "target" }, fields),
                {
                  endStream: true,
                },
              ),
            ]),
          );
          await watched.answered(CLOSE_LIMIT_MS);
          // The answer's DATA may follow its HEADERS in another segment.
          await sleep(200);
          socket.destroy();
          const view = appViewFromHttp2(watched.received());
          rows.push({
            protocol: "HTTP/2",
            variant,
            status: view.clientId ? "served" : "refused",
            "app saw": JSON.stringify(view.clientId ?? "—"),
          });
          if (view.clientId !== undefined) {
            expect(normalize(view.clientId), `HTTP/2 ${variant} from ${peer}`).toEqual(
              expectedClientId(peer),
            );
          }
        }
      } finally {
        printFigures(`R11a l5d-client-id spoofing from ${peer}`, rows);
      }
      await expectHealthy(target, `spoofing from ${peer}`);
    }, 60_000);
  }
});

function normalize(seen: [string, string][]): [string, string][] {
  return seen.map(([name, value]) => [name.toLowerCase(), value]);
}

/** Request-smuggling shapes, each followed by a second request a desynchronized parser would serve. */
const SMUGGLING: Record<string, string> = {
  "space before Content-Length": "POST / HTTP/1.1\r\n Content-Length: 34\r\nHost: x\r\n\r\n",
  "Content-Length + Transfer-Encoding":
    "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
  "obs-fold": "GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
  "two Content-Lengths": "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 34\r\n\r\n",
  "Content-Length with space": "POST / HTTP/1.1\r\nHost: x\r\nContent-Length : 34\r\n\r\n",
  "chunked, identity": "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
};
const SECOND_REQUEST = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

describe("R11b: HTTP/1 request smuggling is answered 400 and the connection closed", () => {
  for (const server of ["sdk", "web (Express)", "books (Fastify)"]) {
    for (const transport of ["plaintext", "TLS without certificate"] as const) {
      it(`${server}, ${transport}`, async () => {
        const target = targetNamed(server);
        await target.revive();
        const rows: FigureRow[] = [];
        try {
          for (const [shape, request] of Object.entries(SMUGGLING)) {
            const socket = await connectAs(transport, target);
            const watched = watch(socket);
            await writeAll(socket, Buffer.from(request + SECOND_REQUEST, "latin1"));
            const closedMs = await watched.closed(CLOSE_LIMIT_MS);
            socket.destroy();
            const answer = watched.received();
            rows.push({
              shape,
              status: http1Status(answer),
              responses: http1ResponseCount(answer),
              "closed ms": closedMs,
            });
            expect(http1Status(answer), `${shape}: status`).toBe(400);
            expect(http1ResponseCount(answer), `${shape}: the smuggled request must not be served`).toBe(1);
            expect(closedMs, `${shape}: the connection is closed`).toBeDefined();
          }
        } finally {
          printFigures(`R11b smuggling, ${server}, ${transport}`, rows);
        }
        await expectHealthy(target, "smuggling");
      }, 60_000);
    }
  }
});

describe("R11c: header floods and distinct paths", () => {
  for (const server of ["sdk", "web (Express)", "books (Fastify)"]) {
    it(`${server}: 10,000 headers on HTTP/1 → 431 or a close`, async () => {
      const target = targetNamed(server);
      await target.revive();
      const before = target.child.sample();
      const socket = await connectPlain({ host: target.child.host, port: target.child.port });
      const watched = watch(socket);
      const lines = Array.from(
        { length: 10_000 },
        (_, index) => `x-flood-${index}: ${"v".repeat(16)}\r\n`,
      ).join("");
      // Written in pieces, as a client would stream them; the server may close before the end.
      const request = Buffer.from(`GET / HTTP/1.1\r\nHost: x\r\n${lines}\r\n`, "latin1");
      for (
        let offset = 0;
        offset < request.length && watched.closedAfterMs() === undefined;
        offset += 16_384
      ) {
        await writeAll(socket, request.subarray(offset, offset + 16_384));
      }
      const closedMs = await watched.closed(CLOSE_LIMIT_MS);
      socket.destroy();
      const status = http1Status(watched.received());
      const check = await expectHealthy(target, "10,000 headers");
      printFigures(`R11c 10,000 headers on HTTP/1, ${server}`, [
        {
          status,
          "closed ms": closedMs,
          "rss Δ MiB": check.sample ? mib(check.sample.rssBytes - before.rssBytes) : undefined,
        },
      ]);
      expect(
        status === 431 || (status === undefined && closedMs !== undefined),
        `status ${status}, closed ${closedMs}`,
      ).toBe(true);
      expect(closedMs, "the connection is closed").toBeDefined();
    }, 60_000);
  }

  for (const server of ["sdk", "authors (grpc-js)"]) {
    it(`${server}: 10,000 headers on HTTP/2 (HEADERS + CONTINUATION) → 431, a reset or a close`, async () => {
      const target = targetNamed(server);
      await target.revive();
      const socket = await connectPlain({ host: target.child.host, port: target.child.port });
      const watched = watch(socket);
      await writeAll(
        socket,
        Buffer.concat([
          PREFACE,
          settings(),
          headers(1, requestBlock({}), { endStream: true, endHeaders: false }),
        ]),
      );
      const fields = Array.from({ length: 10_000 }, (_, index) =>
        hpackLiteral(`x-flood-${index}`, "v".repeat(16)),
      );
      for (let index = 0; index < fields.length && watched.closedAfterMs() === undefined; index += 100) {
        const last = index + 100 >= fields.length;
        await writeAll(socket, continuation(1, Buffer.concat(fields.slice(index, index + 100)), last));
      }
      const closedMs = await watched.closed(CLOSE_LIMIT_MS);
      const answer = watched.received();
      socket.destroy();
      const frames = parseFrames(answer);
      const reset = frames.some((frame) => frame.type === FrameType.RST_STREAM && frame.streamId === 1);
      printFigures(`R11c 10,000 headers on HTTP/2, ${server}`, [
        {
          "GOAWAY code": goawayCode(answer),
          "stream reset": reset,
          "closed ms": closedMs,
          "answer frames": frames.length,
        },
      ]);
      // A 431 would come as a HEADERS answer on stream 1 (HPACK-encoded): a reset or a close is what nghttp2 does.
      expect(
        reset || closedMs !== undefined || frames.some((frame) => frame.type === FrameType.HEADERS),
      ).toBe(true);
      await expectHealthy(target, "10,000 headers on HTTP/2");
    }, 60_000);
  }

  it(
    `sdk: ${DISTINCT_REQUESTS} distinct paths and authorities; metric series stay under the cap`,
    async () => {
      const target = targetNamed("sdk");
      await target.revive();
      const admin = target.child.ready.admin;
      if (!admin) throw new Error("the sdk service has no admin address");
      const seriesBefore = await seriesPerFamily(admin);
      const before = target.child.sample();
      const startedAt = performance.now();
      const CONNECTIONS = 8;
      const PIPELINE = 100;
      let answered = 0;
      const shortBatches: string[] = [];
      await Promise.all(
        Array.from({ length: CONNECTIONS }, async (_, connection) => {
          let socket = await connectPlain({ host: target.child.host, port: target.child.port });
          for (let sent = connection; sent < DISTINCT_REQUESTS; ) {
            const batch: string[] = [];
            for (
              let index = 0;
              index < PIPELINE && sent < DISTINCT_REQUESTS;
              index += 1, sent += CONNECTIONS
            ) {
              batch.push(
                `GET /distinct/${sent}/${"p".repeat(sent % 64)} HTTP/1.1\r\nHost: host-${sent}.example\r\n\r\n`,
              );
            }
            if (socket.destroyed)
              socket = await connectPlain({ host: target.child.host, port: target.child.port });
            const got = await pipeline(socket, batch.join(""), batch.length);
            if (got !== batch.length)
              shortBatches.push(`${got}/${batch.length}${socket.destroyed ? " (closed)" : ""}`);
            answered += got;
          }
          socket.destroy();
        }),
      );
      const seconds = (performance.now() - startedAt) / 1000;
      const after = target.child.sample();
      const seriesAfter = await seriesPerFamily(admin);
      const largest = [...seriesAfter].sort((a, b) => b[1] - a[1])[0];
      const total = (series: Map<string, number>) =>
        [...series.values()].reduce((sum, count) => sum + count, 0);
      printFigures(`R11c ${DISTINCT_REQUESTS} distinct paths and authorities, sdk`, [
        {
          requests: DISTINCT_REQUESTS,
          answered,
          seconds,
          "series before": total(seriesBefore),
          "series after": total(seriesAfter),
          "largest family": largest ? `${largest[0]} (${largest[1]})` : undefined,
          "cap per family": SERIES_CAP_PER_FAMILY,
          "rss before MiB": mib(before.rssBytes),
          "rss after MiB": mib(after.rssBytes),
          "short batches": shortBatches.slice(0, 4).join(" ") || "none",
        },
      ]);
      expect(answered).toBe(DISTINCT_REQUESTS);
      for (const [family, count] of seriesAfter) {
        expect(count, `${family}: series`).toBeLessThanOrEqual(SERIES_CAP_PER_FAMILY);
      }
      // Paths and authorities are not labels: the series count barely moves.
      expect(total(seriesAfter) - total(seriesBefore)).toBeLessThan(200);
      await expectHealthy(target, "distinct paths");
    },
    testTimeoutMs(scaled(20_000, 200_000)),
  );
});

/** Writes pipelined requests and resolves with the number of responses once all came (bounded). */
function pipeline(socket: import("node:net").Socket, requests: string, count: number): Promise<number> {
  return new Promise((resolve) => {
    let seen = 0;
    let tail = "";
    const onData = (chunk: Buffer) => {
      const text = tail + chunk.toString("latin1");
      let lastEnd = 0;
      for (const match of text.matchAll(/HTTP\/1\.1 \d{3} /g)) {
        seen += 1;
        lastEnd = match.index + match[0].length;
      }
      // Keep what a status line split across chunks needs, never a counted one.
      tail = text.slice(Math.max(lastEnd, text.length - 16));
      if (seen >= count) finish();
    };
    const finish = () => {
      clearTimeout(timer);
      socket.off("data", onData);
      socket.off("close", finish);
      resolve(seen);
    };
    const timer = setTimeout(finish, 30_000);
    socket.on("data", onData);
    socket.once("close", finish);
    socket.on("error", () => {});
    socket.write(requests);
  });
}

/** Series per metric family from the admin endpoint's Prometheus text. */
async function seriesPerFamily(admin: string): Promise<Map<string, number>> {
  const response = await fetch(`http://${admin}/metrics`, { signal: AbortSignal.timeout(10_000) });
  const text = await response.text();
  const counts = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const name = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)?.[0];
    // A histogram's series is counted once, by its _count line.
    if (!name || name.endsWith("_bucket") || name.endsWith("_sum")) continue;
    const family = name.replace(/_count$/, "");
    counts.set(family, (counts.get(family) ?? 0) + 1);
  }
  return counts;
}
