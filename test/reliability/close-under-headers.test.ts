// A session closed under a client's HEADERS. On Node 20, node refuses a stream that opens on a session
// close() has marked closed with RST_STREAM from inside nghttp2's receive; that sends the pending GOAWAY,
// which frees the stream nghttp2 is still reading (heap use-after-free: the h2 fuzzer's grpc-js child
// died with "malloc(): mismatching next->prev_size" dozens of batches later). Node answers a client's
// GOAWAY(NO_ERROR) with close(), so two frames in one read did it. Fixed by closeOnlyAfterGoaway
// (@inmesh/core/http2-abuse): the stream is now served, and the session closes after it.
//
// Heap corruption need not kill the process at once, so besides liveness each one-read variant asserts
// the sign that node's refusing path was not taken: the stream was answered with HEADERS, not reset.
// INMESH_MEMCHECK=1 runs the children under valgrind, where the corruption itself fails the test.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CHILD_SLOWDOWN } from "./harness/child.js";
import { type FigureRow, printFigures } from "./harness/figures.js";
import { FrameType, goaway, headers, PREFACE, requestBlock, settings } from "./harness/h2-frames.js";
import { connectWith, parseFrames, sleep, type Transport, watch, writeAll } from "./harness/raw.js";
import {
  type AttackBed,
  type AttackTarget,
  expectHealthy,
  startAttackBed,
  startEveryTarget,
} from "./harness/targets.js";

const TRANSPORTS: readonly Transport[] = ["plaintext", "tls"];
const SERVERS = ["sdk", "sdk (http2Compat)", "web (Express)", "books (Fastify)", "authors (grpc-js)"];
const NO_ERROR = 0;
const REFUSED_STREAM = 7;
/** How long the attacker waits for the answer and for the close. */
const ANSWER_WAIT_MS = 2_000;

interface Variant {
  /** Written in order, a millisecond apart. */
  readonly writes: readonly Buffer[];
  /** Streams that arrive in the read that carries the client's GOAWAY: each must be answered. */
  readonly answered: readonly number[];
}

/** A client's GOAWAY names the last stream the server opened: 0, as the server opens none. */
function variants(authority: string, scheme: string): Record<string, Variant> {
  const get = (streamId: number) =>
    headers(streamId, requestBlock({ method: "GET", path: "/", authority, scheme }), { endStream: true });
  return {
    "GOAWAY then HEADERS, one read": {
      writes: [Buffer.concat([PREFACE, settings(), goaway(0, NO_ERROR), get(1)])],
      answered: [1],
    },
    "GOAWAY then three streams, one read": {
      writes: [Buffer.concat([PREFACE, settings(), goaway(0, NO_ERROR), get(1), get(3), get(5)])],
      answered: [1, 3, 5],
    },
    "a request, GOAWAY, another request, one read": {
      writes: [Buffer.concat([PREFACE, settings(), get(1), goaway(0, NO_ERROR), get(3)])],
      answered: [1, 3],
    },
    // The session is closing when HEADERS arrive in a later read: nghttp2 must drop them itself.
    "GOAWAY, then HEADERS in the next read": {
      writes: [Buffer.concat([PREFACE, settings(), goaway(0, NO_ERROR)]), get(1)],
      answered: [],
    },
  };
}

let bed: AttackBed;
const targets: AttackTarget[] = [];

beforeAll(async () => {
  bed = await startAttackBed();
  targets.push(...(await startEveryTarget(bed)));
}, 120_000 * CHILD_SLOWDOWN);

afterAll(async () => {
  await bed?.close();
}, 60_000);

describe("a session closed under a client's HEADERS (Node 20 heap use-after-free), every attacked server", () => {
  for (const name of SERVERS) {
    for (const transport of TRANSPORTS) {
      it(
        `${name}, ${transport}: streams in the GOAWAY's read are served, and the process stays whole`,
        async () => {
          const target = targets.find((candidate) => candidate.name === name);
          if (!target) throw new Error(`${name} was not started`);
          await target.revive();
          const figures: FigureRow[] = [];
          try {
            await attack(target, transport, figures);
          } finally {
            printFigures(`close under HEADERS, ${name}, ${transport}`, figures);
          }
        },
        120_000 * CHILD_SLOWDOWN,
      );
    }
  }
});

async function attack(target: AttackTarget, transport: Transport, figures: FigureRow[]): Promise<void> {
  const authority = transport === "tls" ? target.identity : target.child.ready.address;
  const scheme = transport === "tls" ? "https" : "http";
  for (const [variant, { writes, answered }] of Object.entries(variants(authority, scheme))) {
    const socket = await connectWith(transport, {
      host: target.child.host,
      port: target.child.port,
      identity: target.identity,
    });
    const watched = watch(socket);
    for (const [index, bytes] of writes.entries()) {
      if (index > 0) await sleep(1);
      await writeAll(socket, bytes);
    }
    const closedMs = await watched.closed(ANSWER_WAIT_MS);
    socket.destroy();
    const check = await expectHealthy(target, `${variant} (${transport})`);
    const frames = parseFrames(watched.received());
    const responded = new Set(
      frames.filter((frame) => frame.type === FrameType.HEADERS).map((frame) => frame.streamId),
    );
    const refused = frames
      .filter(
        (frame) => frame.type === FrameType.RST_STREAM && frame.payload.readUInt32BE(0) === REFUSED_STREAM,
      )
      .map((frame) => frame.streamId);
    const goawayLastIds = frames
      .filter((frame) => frame.type === FrameType.GOAWAY)
      .map((frame) => frame.payload.readUInt32BE(0) & 0x7fffffff);
    figures.push({
      server: target.name,
      transport,
      variant,
      "answered streams": [...responded].join(" ") || "–",
      "refused streams": refused.join(" ") || "–",
      "GOAWAY last ids": goawayLastIds.join(" ") || "–",
      "closed ms": closedMs,
      alive: check.alive,
      "legit p50 ms": check.legit.p50Ms,
      "bound ms": check.boundMs,
    });
    for (const streamId of answered) {
      expect(responded.has(streamId), `${variant}: stream ${streamId} answered with HEADERS`).toBe(true);
      expect(refused, `${variant}: stream ${streamId} refused from inside the receive`).not.toContain(
        streamId,
      );
    }
    expect(closedMs, `${variant}: the session closed once its streams were answered`).toBeDefined();
  }
}
