// R10, HTTP/2 abuse: rapid reset (HEADERS + RST_STREAM flood), CONTINUATION flood, SETTINGS flood and
// stream-0 WINDOW_UPDATE with an invalid increment, each with legitimate traffic alongside. Expected
// (reliability.md): server CPU ≤ 1 core, RSS steady (≤ +32 MiB), the offending connection answered with
// GOAWAY and closed, 0 legitimate failures and p50 within the bound (2× baseline as written, with
// INMESH_LONG=1 on a quiet machine; 10× + 200 ms in CI, where the machine is shared).
import { monitorEventLoopDelay } from "node:perf_hooks";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cpuCores, type MemoryAfterGc, type ProcessSample, runQueueWaitShare } from "./harness/child.js";
import { SECOND_TARGET_POD } from "./harness/cluster.js";
import { LONG, mib, printFigures, scaled, testTimeoutMs } from "./harness/figures.js";
import {
  continuation,
  headers,
  hpackLiteral,
  PREFACE,
  ping,
  requestBlock,
  rstStream,
  Setting,
  settings,
  windowUpdate,
} from "./harness/h2-frames.js";
import { type LatencySummary, latencyBoundMs } from "./harness/legit.js";
import { startLoadChild } from "./harness/load-child.js";
import {
  connectWith,
  goawayCode,
  sleep,
  type Transport,
  type Watched,
  watch,
  writeAll,
} from "./harness/raw.js";
import { type AttackBed, type AttackTarget, expectHealthy, startAttackBed } from "./harness/targets.js";

const ATTACK_MS = scaled(3_000, 60_000);
const LEGIT_RPS = scaled(50, 500);
/** Attacker connections at once. */
const ATTACKERS = 4;
/**
 * reliability.md R10 "RSS steady": growth from a third into the attack to its end, both sampled right
 * after a collection (as R14 judges RSS; see harness/memory-probe.mjs), so garbage and V8's headroom do
 * not count.
 */
const RSS_GROWTH_LIMIT_MIB = 32;
/**
 * What a server keeps from all six attacks together (one process, from before the first to after the
 * last, both after a collection): each closed offender's leftovers add up here, where one attack's
 * window (from a third in) would not see them. Judged apart: JS heap in use (sockets, sessions and
 * their listeners held from JS: 8 MiB over the CI run's ~22,000 attack connections is 380 bytes a
 * connection), and native memory (RSS outside V8's committed heap: TLS, nghttp2, buffers). One pass of
 * churn takes glibc's arenas to a high-water mark they keep (Node 24: +11 to +29 MiB over the CI run with
 * the heap flat), so the CI run's native bound only catches what is hundreds of bytes a connection or
 * more (a retained TLS or nghttp2 session is tens of KiB); INMESH_LONG=1 judges native memory closely
 * (below). Whole RSS is printed, not judged: Node 20's V8 has no last-resort collection, and keeps a
 * young generation that churn grew committed (+35 to +60 MiB over the CI run, with nothing retained).
 */
const SUITE_HEAP_GROWTH_LIMIT_MIB = 8;
const SUITE_NATIVE_GROWTH_LIMIT_MIB = 48;
/**
 * With INMESH_LONG=1 the six attacks run twice and native memory is judged over the second pass: the
 * first pass of 60 s attacks (~100,000 connections each for the churn ones) takes glibc's arenas and
 * OpenSSL's pools to a high-water mark they keep (Node 24, sdk: native 62 → 122 MiB over the first pass,
 * +28 MiB of it in the first WINDOW_UPDATE attack, of which glibc's malloc_trim(0) gives 28 MiB back),
 * which whole-run growth cannot tell from a leak; the same attacks again show what each one keeps
 * (Node 24: 122 → 123.4 MiB). 8 MiB over a pass of ~300,000 connections (the sdk's) is 28 bytes a
 * connection: any retained socket, session or stream is hundreds of times that.
 */
const PASSES = scaled(1, 2);
const SECOND_PASS_NATIVE_GROWTH_LIMIT_MIB = 8;
/**
 * How long the all-attacks check waits for memory the server frees itself: the attacked servers' HTTP/2
 * keep-alive (interval 10 s, timeout 3 s, swept every second) after the last attack's last connection,
 * with a margin (Node 20, the sdk: freed 8-15 s into the check on this machine; one CI run on 2 shared
 * cores still held it at 15 s).
 */
const KEEP_ALIVE_SETTLE_MS = 25_000;
/** Writes per second of each attacker loop: each write carries a batch of frames. */
const TICK_MS = 10;

interface ConnectionOutcome {
  readonly goaway: number | undefined;
  /**
   * The server's close came as a TCP reset: seen on a read (ECONNRESET) or, when the attacker was
   * writing, on its write (EPIPE); either way the reset discards what the attacker had not read yet.
   */
  readonly reset: boolean;
  readonly errorCode: string | undefined;
  readonly transport: Transport;
  readonly receivedBytes: number;
  /** ms until the server closed it; undefined when the attack's end closed it. */
  readonly closedByServerMs: number | undefined;
  readonly framesSent: number;
}

/** One attacker connection: returns once the server closed it or the deadline passed. */
type ConnectionAttack = (watched: Watched, deadline: number) => Promise<number>;

async function runConnection(
  target: AttackTarget,
  transport: Transport,
  attack: ConnectionAttack,
  deadline: number,
): Promise<ConnectionOutcome | undefined> {
  let socket: Awaited<ReturnType<typeof connectWith>>;
  try {
    socket = await connectWith(transport, {
      host: target.child.host,
      port: target.child.port,
      identity: target.identity,
    });
  } catch {
    await sleep(TICK_MS);
    return undefined;
  }
  const watched = watch(socket);
  const framesSent = await attack(watched, deadline);
  // A server that closes answers within a moment; one still open at the deadline did not.
  const closedByServerMs = watched.closedAfterMs() ?? (await watched.closed(500));
  socket.destroy();
  return {
    goaway: goawayCode(watched.received()),
    reset: watched.errorCode() === "ECONNRESET" || watched.errorCode() === "EPIPE",
    errorCode: watched.errorCode(),
    transport,
    receivedBytes: watched.received().length,
    closedByServerMs,
    framesSent,
  };
}

/** Writes `batch()` every tick until the server closes the connection or the deadline passes. */
async function pump(
  watched: Watched,
  deadline: number,
  opening: Buffer,
  batch: () => Buffer,
  framesPerBatch: number,
  afterAnswer?: () => void,
) {
  await writeAll(watched.socket, opening);
  // The flood starts once the server's SETTINGS arrived: the connection is HTTP/2 by then, so any close
  // that follows is the HTTP/2 layer's and must come with a GOAWAY.
  await watched.answered(2_000);
  afterAnswer?.();
  let frames = 0;
  while (performance.now() < deadline && watched.closedAfterMs() === undefined) {
    const tickStarted = performance.now();
    // Respect backpressure: a server that stops reading must not make the attacker buffer without end.
    if (watched.socket.writableLength < 1024 * 1024) {
      watched.socket.write(batch());
      frames += framesPerBatch;
    }
    await sleep(Math.max(0, TICK_MS - (performance.now() - tickStarted)));
  }
  return frames;
}

const GET = requestBlock({ method: "GET", path: "/" });

/** (a) 10,000 HEADERS + RST_STREAM pairs per second, over the attacker connections together. */
const rapidReset: ConnectionAttack = (watched, deadline) => {
  const pairsPerTick = Math.ceil((10_000 * TICK_MS) / 1000 / ATTACKERS);
  let nextStream = 1;
  return pump(
    watched,
    deadline,
    Buffer.concat([PREFACE, settings()]),
    () => {
      const frames: Buffer[] = [];
      for (let index = 0; index < pairsPerTick && nextStream < 0x7fffffff; index += 1) {
        frames.push(headers(nextStream, GET, { endStream: true }), rstStream(nextStream, 0x8));
        nextStream += 2;
      }
      return Buffer.concat(frames);
    },
    pairsPerTick * 2,
  );
};

/** (b) A header block that never ends: CONTINUATION after CONTINUATION, each adding a new header. */
const continuationFlood: ConnectionAttack = (watched, deadline) => {
  let header = 0;
  const perTick = 100;
  return pump(
    watched,
    deadline,
    Buffer.concat([PREFACE, settings(), headers(1, GET, { endStream: true, endHeaders: false })]),
    () => {
      const frames: Buffer[] = [];
      for (let index = 0; index < perTick; index += 1) {
        header += 1;
        frames.push(continuation(1, hpackLiteral(`x-flood-${header}`, "v".repeat(32)), false));
      }
      return Buffer.concat(frames);
    },
    perTick,
  );
};

/** (b') The same with empty CONTINUATION frames: nothing grows but the frame count. */
const emptyContinuationFlood: ConnectionAttack = (watched, deadline) => {
  const batch = Buffer.concat(Array.from({ length: 200 }, () => continuation(1, Buffer.alloc(0), false)));
  return pump(
    watched,
    deadline,
    Buffer.concat([PREFACE, settings(), headers(1, GET, { endStream: true, endHeaders: false })]),
    () => batch,
    200,
  );
};

/** SETTINGS (and PING) frames the server must acknowledge, from a client that never reads the ACKs. */
const settingsFlood: ConnectionAttack = (watched, deadline) => {
  const batch = Buffer.concat(
    Array.from({ length: 200 }, (_, index) =>
      index % 2 === 0
        ? settings([[Setting.INITIAL_WINDOW_SIZE, 65_535 + index]])
        : ping(Buffer.alloc(8, index)),
    ),
  );
  // The attacker stops reading once the connection is up: every ACK the server owes piles up on its side.
  return pump(
    watched,
    deadline,
    Buffer.concat([PREFACE, settings()]),
    () => batch,
    200,
    () => watched.socket.pause(),
  ).finally(() => watched.socket.resume());
};

/** (c) Stream-0 WINDOW_UPDATE with increment 0, or overflowing the window, on connection after connection. */
function windowUpdateAttack(increment: number, times: number): ConnectionAttack {
  return async (watched) => {
    await writeAll(
      watched.socket,
      Buffer.concat([
        PREFACE,
        settings(),
        ...Array.from({ length: times }, () => windowUpdate(0, increment)),
      ]),
    );
    await watched.closed(2_000);
    return times;
  };
}

interface AbuseFigures {
  readonly connections: number;
  readonly framesSent: number;
  readonly closedByServer: number;
  readonly withGoaway: number;
  readonly withGoawayOrReset: number;
  readonly resets: number;
  /** A few connections closed with neither GOAWAY nor reset, for the reader. */
  readonly silentCloses: string;
  readonly goawayCodes: string;
  readonly maxCloseMs: number | undefined;
  readonly before: ProcessSample;
  readonly after: ProcessSample;
  /**
   * Each right after a collection (see harness/memory-probe.mjs), so what is compared is what the
   * process keeps, not garbage or headroom: before the attack, a third into it, after it.
   */
  readonly memoryBefore: MemoryAfterGc | undefined;
  readonly memoryWarm: MemoryAfterGc | undefined;
  readonly memoryAfter: MemoryAfterGc | undefined;
}

async function abuse(target: AttackTarget, attack: ConnectionAttack): Promise<AbuseFigures> {
  const deadline = performance.now() + ATTACK_MS;
  const outcomes: ConnectionOutcome[] = [];
  const memoryBefore = await target.child.memoryAfterGc();
  const before = target.child.sample();
  // "RSS steady": growth is judged from a third into the attack (heap, JIT and the attack's own
  // high-water marks reached) to its end.
  let memoryWarm: Promise<MemoryAfterGc | undefined> | undefined;
  const warmTimer = setTimeout(() => {
    if (target.child.alive()) memoryWarm = target.child.memoryAfterGc();
  }, ATTACK_MS / 3);
  let connections = 0;
  await Promise.all(
    Array.from({ length: ATTACKERS }, async (_, attacker) => {
      while (performance.now() < deadline) {
        connections += 1;
        // One attacker of four goes through mesh TLS (our SNI, no client certificate).
        const outcome = await runConnection(target, attacker === 0 ? "tls" : "plaintext", attack, deadline);
        if (outcome) outcomes.push(outcome);
        if (!target.child.alive()) return;
      }
    }),
  );
  clearTimeout(warmTimer);
  const after = target.child.sample();
  // One request at a time: the child answers each "gc" with one line.
  const warmed = await memoryWarm;
  const memoryAfter = await target.child.memoryAfterGc();
  const codes = new Map<number, number>();
  for (const outcome of outcomes) {
    if (outcome.goaway !== undefined) codes.set(outcome.goaway, (codes.get(outcome.goaway) ?? 0) + 1);
  }
  const closeTimes = outcomes.flatMap((outcome) =>
    outcome.closedByServerMs === undefined ? [] : [outcome.closedByServerMs],
  );
  return {
    connections,
    framesSent: outcomes.reduce((sum, outcome) => sum + outcome.framesSent, 0),
    closedByServer: closeTimes.length,
    withGoaway: outcomes.filter((outcome) => outcome.goaway !== undefined).length,
    withGoawayOrReset: outcomes.filter(
      (outcome) => outcome.closedByServerMs !== undefined && (outcome.goaway !== undefined || outcome.reset),
    ).length,
    resets: outcomes.filter((outcome) => outcome.reset).length,
    silentCloses: outcomes
      .filter(
        (outcome) => outcome.closedByServerMs !== undefined && outcome.goaway === undefined && !outcome.reset,
      )
      .slice(0, 3)
      .map(
        (outcome) =>
          `${outcome.transport} ${outcome.receivedBytes} B after ${Math.round(outcome.closedByServerMs ?? 0)} ms${outcome.errorCode ? ` (${outcome.errorCode})` : ""}`,
      )
      .join("; "),
    goawayCodes: [...codes].map(([code, count]) => `0x${code.toString(16)}×${count}`).join(" ") || "none",
    // A loop, not Math.max(...): a long run on an idle machine closes >100,000 connections (stack).
    maxCloseMs: closeTimes.reduce<number | undefined>(
      (max, ms) => (max === undefined || ms > max ? ms : max),
      undefined,
    ),
    before,
    after,
    memoryBefore,
    memoryWarm: warmed ?? memoryBefore,
    memoryAfter,
  };
}

const ATTACKS: readonly { name: string; attack: ConnectionAttack; closes: boolean }[] = [
  { name: "rapid reset (HEADERS + RST_STREAM)", attack: rapidReset, closes: true },
  { name: "CONTINUATION flood (new headers)", attack: continuationFlood, closes: true },
  { name: "CONTINUATION flood (empty frames)", attack: emptyContinuationFlood, closes: true },
  // The server may stop reading (backpressure) rather than close: it must stay cheap and responsive.
  { name: "SETTINGS + PING flood, ACKs never read", attack: settingsFlood, closes: false },
  { name: "stream-0 WINDOW_UPDATE increment 0", attack: windowUpdateAttack(0, 1), closes: true },
  { name: "stream-0 WINDOW_UPDATE overflow", attack: windowUpdateAttack(0x7fffffff, 2), closes: true },
];

let bed: AttackBed;
const targets = new Map<string, AttackTarget>();
const SERVERS = (process.env.INMESH_ATTACK_SERVERS?.split(",") ?? ["sdk", "authors (grpc-js)"]).map((name) =>
  name.trim(),
);

beforeAll(async () => {
  bed = await startAttackBed();
  targets.set("sdk", await bed.startSdk({}, "sdk"));
  if (SERVERS.includes("sdk (http2Compat)")) {
    targets.set(
      "sdk (http2Compat)",
      await bed.startSdk({ http2Compat: true }, "sdk (http2Compat)", SECOND_TARGET_POD),
    );
  }
  for (const target of await bed.startExamples()) targets.set(target.name, target);
}, 120_000);

afterAll(async () => {
  await bed?.close();
}, 60_000);

/** Per server: the child's first and latest samples over the attacks, while it is the same process. */
const across = new Map<
  string,
  {
    pid: number;
    first: ProcessSample;
    firstMemory: MemoryAfterGc | undefined;
    /** After the first pass, before the second (long runs). */
    secondPassMemory: MemoryAfterGc | undefined;
    attacks: number;
  }
>();

function recordAcross(server: string, target: AttackTarget, figures: AbuseFigures) {
  const known = across.get(server);
  if (known === undefined || known.pid !== target.child.pid) {
    across.set(server, {
      pid: target.child.pid,
      first: figures.before,
      firstMemory: figures.memoryBefore,
      secondPassMemory: undefined,
      attacks: 1,
    });
  } else {
    if (known.attacks === ATTACKS.length) known.secondPassMemory = figures.memoryBefore;
    known.attacks += 1;
  }
}

describe("R10: HTTP/2 abuse, with legitimate traffic alongside", () => {
  for (const server of SERVERS) {
    for (let pass = 1; pass <= PASSES; pass += 1) {
      for (const { name, attack, closes } of ATTACKS) {
        it(
          `${server}: ${name}${pass > 1 ? ` (pass ${pass})` : ""}`,
          async () => {
            const target = targets.get(server);
            if (!target) throw new Error(`${server} was not started`);
            await target.revive();
            // Legitimate load comes from a process of its own, with its own baseline measured just before;
            // the attacker's (this process's) loop delay is printed too.
            const load = await startLoadChild(bed.clientEnv, target.loadSpec, LEGIT_RPS, ATTACK_MS);
            const baseline = load.baseline;
            const testerLoop = monitorEventLoopDelay({ resolution: 10 });
            testerLoop.enable();
            const loadRun = load.run();
            let figures: AbuseFigures | undefined;
            let legit: LatencySummary | undefined;
            try {
              figures = await abuse(target, attack);
            } finally {
              legit = await loadRun;
              load.stop();
              testerLoop.disable();
              const cores = figures ? cpuCores(figures.before, figures.after) : undefined;
              printFigures(`R10 ${name}, ${server}`, [
                {
                  seconds: ATTACK_MS / 1000,
                  connections: figures?.connections,
                  "frames sent": figures?.framesSent,
                  "closed by server": figures?.closedByServer,
                  "with GOAWAY": figures?.withGoaway,
                  resets: figures?.resets,
                  "closed silently": figures?.silentCloses || undefined,
                  "GOAWAY codes": figures?.goawayCodes,
                  "max close ms": figures?.maxCloseMs,
                  "child CPU cores": cores,
                  "child loop CPU wait": figures
                    ? runQueueWaitShare(figures.before, figures.after)
                    : undefined,
                  "rss after GC, before → 1/3 → after MiB": figures
                    ? [figures.memoryBefore, figures.memoryWarm, figures.memoryAfter]
                        .map((memory) => mib(memory?.rss ?? Number.NaN).toFixed(1))
                        .join(" → ")
                    : undefined,
                  "rss at the end MiB": figures ? mib(figures.after.rssBytes) : undefined,
                  "heap used after GC, before → after MiB": figures
                    ? `${mib(figures.memoryBefore?.heapUsed ?? Number.NaN).toFixed(1)} → ${mib(figures.memoryAfter?.heapUsed ?? Number.NaN).toFixed(1)}`
                    : undefined,
                  "legit requests": legit.count,
                  "legit failures": legit.failures.length,
                  "legit p50 ms": legit.p50Ms,
                  "baseline p50 ms": baseline.p50Ms,
                  "p50 / baseline": legit.p50Ms / baseline.p50Ms,
                  "tester loop p99 ms": testerLoop.percentile(99) / 1e6,
                },
              ]);
            }
            expect(target.child.alive(), target.child.describeExit()).toBe(true);
            if (!figures) throw new Error("no figures");
            // Soft: a failing run reports every figure that is off, not only the first.
            expect.soft(legit.failures, "legitimate requests failed during the attack").toEqual([]);
            expect
              .soft(legit.p50Ms, "legitimate p50, ms")
              .toBeLessThanOrEqual(latencyBoundMs(baseline.p50Ms));
            if (LONG) {
              // The share of the attack the child's event loop was ready but waited for a CPU (other
              // processes on the machine) tells a slow server from a busy machine.
              const waited = runQueueWaitShare(figures.before, figures.after);
              expect
                .soft(
                  legit.p50Ms,
                  `legitimate p50 ≤ 2× baseline (child loop waited for a CPU ${(waited * 100).toFixed(0)}% of the time)`,
                )
                .toBeLessThanOrEqual(2 * baseline.p50Ms);
            }
            expect
              .soft(cpuCores(figures.before, figures.after), "child CPU over the attack, in cores")
              .toBeLessThanOrEqual(1);
            expect
              .soft(
                mib((figures.memoryAfter?.rss ?? Number.NaN) - (figures.memoryWarm?.rss ?? Number.NaN)),
                "child RSS growth after warm-up (both after GC), MiB",
              )
              .toBeLessThanOrEqual(RSS_GROWTH_LIMIT_MIB);
            if (closes) {
              // Every offending connection is answered with GOAWAY and closed by the server. When the
              // server closes with the attacker's bytes still unread, its kernel sends a reset, which can
              // discard the GOAWAY before the attacker reads it: such connections count as answered.
              expect.soft(figures.closedByServer, "attack connections the server closed").toBeGreaterThan(0);
              expect
                .soft(figures.withGoawayOrReset, "attack connections answered with GOAWAY")
                .toBe(figures.closedByServer);
            }
            await expectHealthy(target, name);
            recordAcross(server, target, figures);
          },
          testTimeoutMs(ATTACK_MS),
        );
      }
    }
    it(`${server}: memory kept across all attacks`, async () => {
      const record = across.get(server);
      const target = targets.get(server);
      // Attacks left out (vitest -t) or a child restarted after a crash (that test failed): nothing to add.
      if (record === undefined || target === undefined || record.attacks < ATTACKS.length * PASSES) return;
      if (target.child.pid !== record.pid || !target.child.alive()) return;
      const first = record.firstMemory;
      const native = (m: MemoryAfterGc | undefined) =>
        m?.heapTotal === undefined ? Number.NaN : mib(m.rss - m.heapTotal);
      const baseline = PASSES === 1 ? first : record.secondPassMemory;
      const nativeLimit = PASSES === 1 ? SUITE_NATIVE_GROWTH_LIMIT_MIB : SECOND_PASS_NATIVE_GROWTH_LIMIT_MIB;
      const withinLimits = (m: MemoryAfterGc | undefined) =>
        m !== undefined &&
        first !== undefined &&
        mib(m.heapUsed - first.heapUsed) <= SUITE_HEAP_GROWTH_LIMIT_MIB &&
        native(m) - native(baseline) <= nativeLimit;
      // Both ends after a full collection (the first attack's `before` was sampled after one). What the
      // server's own bounds free is not kept: on Node 20 the last attack's connections that nghttp2 ended
      // for a protocol error hold their sessions until the HTTP/2 keep-alive closes them.
      const measuringFrom = performance.now();
      let memory = await target.child.memoryAfterGc();
      while (
        !withinLimits(memory) &&
        performance.now() - measuringFrom < KEEP_ALIVE_SETTLE_MS &&
        target.child.alive()
      ) {
        await sleep(1_000);
        memory = await target.child.memoryAfterGc();
      }
      const last = target.child.sample();
      const rss = (m: MemoryAfterGc | undefined) => mib(m?.rss ?? Number.NaN);
      // first → (after the first pass →) last
      const course = (of: (m: MemoryAfterGc | undefined) => number) =>
        [first, ...(PASSES > 1 ? [record.secondPassMemory] : []), memory]
          .map((m) => of(m).toFixed(1))
          .join(" → ");
      printFigures(`R10 all attacks, ${server}`, [
        {
          attacks: record.attacks,
          "rss after GC MiB": course(rss),
          "heap used after GC MiB": course((m) => mib(m?.heapUsed ?? Number.NaN)),
          "native (rss - V8 heap) MiB": course(native),
          "open fds": `${record.first.openFds} → ${last.openFds}`,
          "measured after s": (performance.now() - measuringFrom) / 1000,
        },
      ]);
      if (first === undefined || memory === undefined) throw new Error(`${server} reported no memory`);
      expect
        .soft(mib(memory.heapUsed - first.heapUsed), "heap in use after GC, growth over all attacks, MiB")
        .toBeLessThanOrEqual(SUITE_HEAP_GROWTH_LIMIT_MIB);
      expect
        .soft(
          native(memory) - native(baseline),
          `native memory growth over ${PASSES === 1 ? "all attacks" : "the second pass"}, MiB`,
        )
        .toBeLessThanOrEqual(nativeLimit);
    }, 60_000);
  }
});
