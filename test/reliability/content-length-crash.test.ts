// Issue 11's critical crash: prior-knowledge HTTP/2 whose HEADERS declare a content-length and whose
// DATA is longer, with the preface, HEADERS and DATA in the first segment, killed the whole process.
// Sent here plaintext and over mesh TLS (our SNI, no client certificate) to every attacked server.
import { afterAll, beforeAll, describe, it } from "vitest";
import { CHILD_SLOWDOWN } from "./harness/child.js";
import { type FigureRow, mib, printFigures } from "./harness/figures.js";
import { contentLengthCrash, data, headers, PREFACE, requestBlock, settings } from "./harness/h2-frames.js";
import { connectWith, goawayCode, parseFrames, type Transport, watch, writeAll } from "./harness/raw.js";
import {
  type AttackBed,
  type AttackTarget,
  expectHealthy,
  startAttackBed,
  startEveryTarget,
} from "./harness/targets.js";

const TRANSPORTS: readonly Transport[] = ["plaintext", "tls"];
const SERVERS = ["sdk", "sdk (http2Compat)", "web (Express)", "books (Fastify)", "authors (grpc-js)"];
/** How long the attacker waits for the server's answer before it hangs up. */
const ANSWER_WAIT_MS = 2_000;

/** The variants of the class: the one from the issue, and the same lie split or repeated. */
function variants(authority: string, scheme: string): Record<string, Buffer> {
  const post = (streamId: number, length: string) =>
    headers(
      streamId,
      requestBlock({ method: "POST", path: "/", authority, scheme }, [["content-length", length]]),
    );
  return {
    "one segment": contentLengthCrash(authority, scheme),
    // Shorter DATA than declared, then END_STREAM.
    "short body": Buffer.concat([PREFACE, settings(), post(1, "100"), data(1, Buffer.alloc(10), true)]),
    // Several streams lying at once, and a DATA frame after END_STREAM.
    "many streams": Buffer.concat([
      PREFACE,
      settings(),
      ...[1, 3, 5, 7].flatMap((id) => [
        post(id, "1"),
        data(id, Buffer.alloc(32), true),
        data(id, Buffer.alloc(8), false),
      ]),
    ]),
    // A content-length that is not a number.
    "bad length": Buffer.concat([PREFACE, settings(), post(1, "-1"), data(1, Buffer.alloc(4), true)]),
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

describe("the HTTP/2 content-length crash (issue 11), against every attacked server", () => {
  for (const name of SERVERS) {
    for (const transport of TRANSPORTS) {
      it(`${name}, ${transport}: every variant leaves it alive and serving`, async () => {
        const target = targets.find((candidate) => candidate.name === name);
        if (!target) throw new Error(`${name} was not started`);
        await target.revive();
        const figures: FigureRow[] = [];
        try {
          await attack(target, transport, figures);
        } finally {
          printFigures(`content-length crash, ${name}, ${transport}`, figures);
        }
      }, 90_000);
    }
  }
});

async function attack(target: AttackTarget, transport: Transport, figures: FigureRow[]): Promise<void> {
  const before = target.child.sample();
  const authority = transport === "tls" ? target.identity : target.child.ready.address;
  const scheme = transport === "tls" ? "https" : "http";
  for (const [variant, bytes] of Object.entries(variants(authority, scheme))) {
    const socket = await connectWith(transport, {
      host: target.child.host,
      port: target.child.port,
      identity: target.identity,
    });
    const watched = watch(socket);
    await writeAll(socket, bytes);
    await watched.answered(ANSWER_WAIT_MS);
    const closedMs = await watched.closed(200);
    socket.destroy();
    const check = await expectHealthy(target, `${variant} (${transport})`);
    const answer = watched.received();
    figures.push({
      server: target.name,
      transport,
      variant,
      "answer frames": parseFrames(answer).length,
      goaway: goawayCode(answer),
      "closed ms": closedMs,
      alive: check.alive,
      "legit p50 ms": check.legit.p50Ms,
      "baseline p50 ms": target.baseline.p50Ms,
      "bound ms": check.boundMs,
      "rss MiB": check.sample ? mib(check.sample.rssBytes) : undefined,
      "rss Δ MiB": check.sample ? mib(check.sample.rssBytes - before.rssBytes) : undefined,
    });
  }
}
