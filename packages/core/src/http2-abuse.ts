/**
 * Bounds on what one HTTP/2 client can make the server do for streams it cancels (rapid reset,
 * CVE-2023-44487) and on how an offending session is closed. Shared by `@inmesh/http`'s own
 * HTTP/2 stage and `@inmesh/grpc`'s guard on grpc-js's HTTP/2 server, so both apply the same bounds.
 */
import { constants as h2constants, type ServerHttp2Session, type ServerHttp2Stream } from "node:http2";
import type { Duplex } from "node:stream";

/**
 * Runs a new stream's handler once the bytes that opened it have all been processed, and only if the
 * stream is still open by then. nghttp2 reads a whole socket chunk in one pass and Node announces each
 * stream before the next frame is read, so without this a HEADERS + RST_STREAM pair in one chunk costs
 * a full request (authorization, handler, telemetry) for a stream that was already cancelled: measured
 * at about 200 µs of CPU per reset, 4,000 resets a second under R10, legitimate p50 ×30–90. Deferred to
 * the check phase of the same loop turn, which adds no I/O wait for a legitimate request.
 */
export interface StreamAdmission {
  admit(stream: ServerHttp2Stream, dispatch: () => void): void;
}

export function createStreamAdmission(): StreamAdmission {
  let queue: { stream: ServerHttp2Stream; dispatch: () => void }[] = [];
  let scheduled = false;
  const flush = () => {
    const admitted = queue;
    queue = [];
    scheduled = false;
    for (let index = 0; index < admitted.length; index += 1) {
      const { stream, dispatch } = admitted[index] as (typeof admitted)[number];
      if (stream.destroyed || stream.closed) continue;
      try {
        dispatch();
      } catch (error) {
        // A handler that throws must not strand the streams admitted with it.
        for (const rest of admitted.slice(index + 1)) queue.push(rest);
        if (queue.length > 0 && !scheduled) {
          scheduled = true;
          setImmediate(flush);
        }
        throw error;
      }
    }
  };
  return {
    admit(stream, dispatch) {
      queue.push({ stream, dispatch });
      if (!scheduled) {
        scheduled = true;
        setImmediate(flush);
      }
    },
  };
}

/** A token bucket: `burst` tokens, refilled at `refillPerSecond`. */
interface Bucket {
  tokens: number;
  checkedAt: number;
}

function take(bucket: Bucket, burst: number, refillPerSecond: number, now: number): boolean {
  bucket.tokens = Math.min(burst, bucket.tokens + ((now - bucket.checkedAt) / 1000) * refillPerSecond);
  bucket.checkedAt = now;
  bucket.tokens -= 1;
  return bucket.tokens >= 0;
}

export interface ResetBudgetOptions {
  /** Resets one session may make at once, refilled at `sessionRefillPerSecond`. */
  readonly sessionBurst: number;
  readonly sessionRefillPerSecond: number;
  /**
   * Resets all sessions from one client address may make at once, refilled at `addressRefillPerSecond`:
   * a client that reconnects after each GOAWAY does not get a fresh burst every time.
   */
  readonly addressBurst: number;
  readonly addressRefillPerSecond: number;
  /** Addresses remembered at once; the oldest is forgotten first. */
  readonly maxAddresses: number;
}

/**
 * Streams that ended in RST_STREAM (reset by the client, or by nghttp2 for its protocol errors), as
 * hyper (Linkerd's HTTP stack) bounds pending-accept resets: beyond either budget, the session is
 * refused. Addresses are forgotten once their budget is full again, so the map holds only recent
 * offenders, and never more than `maxAddresses`.
 */
export interface ResetBudgets {
  forSession(address: string | undefined): SessionResetBudget;
  /** Addresses currently remembered (for tests and figures). */
  readonly addresses: number;
}

export interface SessionResetBudget {
  /** Counts one reset stream; false once the session or its address is over budget. */
  reset(): boolean;
}

export function createResetBudgets(options: ResetBudgetOptions): ResetBudgets {
  const byAddress = new Map<string, Bucket>();
  // An address's bucket is full again (and can be forgotten) this long after its last reset, at most.
  const forgetAfterMs = (options.addressBurst / options.addressRefillPerSecond) * 1000;
  let sweptAt = 0;

  function sweep(now: number): void {
    if (now - sweptAt < forgetAfterMs) return;
    sweptAt = now;
    for (const [address, bucket] of byAddress) {
      if (now - bucket.checkedAt >= forgetAfterMs) byAddress.delete(address);
    }
  }

  function addressBucket(address: string, now: number): Bucket {
    let bucket = byAddress.get(address);
    if (bucket === undefined) {
      sweep(now);
      if (byAddress.size >= options.maxAddresses) {
        const oldest = byAddress.keys().next().value;
        if (oldest !== undefined) byAddress.delete(oldest);
      }
      bucket = { tokens: options.addressBurst, checkedAt: now };
    } else {
      // Most recently used last: eviction takes the address idle the longest.
      byAddress.delete(address);
    }
    byAddress.set(address, bucket);
    return bucket;
  }

  return {
    forSession(address) {
      const session: Bucket = { tokens: options.sessionBurst, checkedAt: Date.now() };
      return {
        reset() {
          const now = Date.now();
          const sessionOk = take(session, options.sessionBurst, options.sessionRefillPerSecond, now);
          if (address === undefined) return sessionOk;
          const addressOk = take(
            addressBucket(address, now),
            options.addressBurst,
            options.addressRefillPerSecond,
            now,
          );
          return sessionOk && addressOk;
        },
      };
    },
    get addresses() {
      return byAddress.size;
    },
  };
}

/**
 * Answers an offending session with GOAWAY `code` and closes it. Node ends the socket once what is
 * queued (the GOAWAY) is written; a client that stops reading would hold it open forever, so `socket`
 * (the one the session was given, or the accepted socket under it) is destroyed after `graceMs`
 * whatever the client does. `session.socket` cannot be used for that: node guards it.
 */
export function refuseSession(
  session: ServerHttp2Session,
  code: number,
  graceMs: number,
  socket: Duplex,
): void {
  if (session.destroyed) return;
  // destroy(undefined, code) would send NO_ERROR (undefined takes the default first argument).
  session.goaway(code);
  session.destroy();
  destroySocketAfter(socket, graceMs);
}

/**
 * Closes a session nghttp2 is done with (see `sessionFinished`). Its GOAWAY may still be on its way
 * through the socket's buffers: node ends the socket once they are written, and `socket` is destroyed
 * after `graceMs` whatever the client does.
 */
export function closeEndedSession(session: ServerHttp2Session, graceMs: number, socket: Duplex): void {
  if (!session.destroyed) session.destroy();
  destroySocketAfter(socket, graceMs);
}

/** Destroys `socket` after `graceMs` unless it closes first: the bound on a close that waits for the peer. */
export function destroySocketAfter(socket: Duplex, graceMs: number): void {
  if (socket.destroyed) return;
  const timer = setTimeout(() => socket.destroy(), graceMs);
  timer.unref();
  socket.once("close", () => clearTimeout(timer));
}

export const ENHANCE_YOUR_CALM = h2constants.NGHTTP2_ENHANCE_YOUR_CALM;

export interface KeepAliveOptions {
  /**
   * A session from which nothing was read for this long is sent a PING; 0 turns keep-alive off (the
   * sweep still lets go of sessions nghttp2 has finished with).
   */
  readonly intervalMs: number;
  /** A PING not answered within this makes the session unresponsive. */
  readonly timeoutMs: number;
}

/** Why the sweep let a session go. */
export type KeepAliveRelease = "unanswered PING" | "ended by nghttp2";

export interface KeepAliveSweep {
  /**
   * Watches `session` until it closes. `socket` is what the session reads (its byte count is the
   * activity measure); `letGo` runs once, when a PING goes unanswered or nghttp2 is done with the
   * session: it must destroy both.
   */
  watch(
    session: ServerHttp2Session,
    socket: { readonly bytesRead: number },
    letGo: (why: KeepAliveRelease) => void,
  ): void;
}

interface Watched {
  readonly socket: { readonly bytesRead: number };
  readonly letGo: (why: KeepAliveRelease) => void;
  lastBytesRead: number;
  lastReadAt: number;
  /** When the unanswered PING went out. */
  pingSentAt: number | undefined;
}

/** The answer is seen by the sweep as bytes read. */
function ignorePingAnswer(): void {}

/** node's native session object, behind a symbol that is the same for every session. */
let nativeHandleKey: symbol | undefined;

/**
 * Whether nghttp2 is done with a session node has not destroyed: it wants neither to read nor to write,
 * as once it has sent GOAWAY for a peer's protocol error, or a GOAWAY was exchanged and no stream is
 * left. Node 24 then destroys the session itself; Node 20 only stops reading the socket and tells
 * JavaScript nothing, so the session, its socket and its memory stayed until a timeout: the fuzzer's
 * 4,000 sequences left 2,100 connections in CLOSE-WAIT for up to 10 s (+85 MiB RSS). Asked of node's
 * native session (`hasPendingData`, what node's own graceful close consults); false where it cannot be.
 */
export function sessionFinished(session: ServerHttp2Session): boolean {
  if (session.destroyed) return false;
  nativeHandleKey ??= Object.getOwnPropertySymbols(session).find((key) => key.description === "kHandle");
  if (nativeHandleKey === undefined) return false;
  const handle = (session as unknown as Record<symbol, { hasPendingData?: unknown } | undefined>)[
    nativeHandleKey
  ];
  if (typeof handle?.hasPendingData !== "function") return false;
  return (handle.hasPendingData as () => boolean).call(handle) === false;
}

/**
 * HTTP/2 keep-alive, as linkerd2-proxy's servers (hyper) do it: a session from which nothing has been
 * read for the interval gets a PING, and one that does not answer within the timeout is let go (a peer
 * that vanished without a FIN). Each tick also lets go of sessions nghttp2 is finished with (see
 * `sessionFinished`), with keep-alive off too: on Node 20 those otherwise stayed, with any stream left
 * open, until a timeout (before keep-alive, until the process exited). One sweep reads each socket's
 * byte count: nothing is done per frame or per request.
 */
export function createKeepAliveSweep(options: KeepAliveOptions): KeepAliveSweep {
  const { intervalMs, timeoutMs } = options;
  const watched = new Map<ServerHttp2Session, Watched>();
  const tickMs =
    intervalMs > 0 ? Math.max(50, Math.min(1000, Math.floor(Math.min(intervalMs, timeoutMs) / 2))) : 1000;
  let sweep: NodeJS.Timeout | undefined;

  function tick(): void {
    if (watched.size === 0) {
      clearInterval(sweep);
      sweep = undefined;
      return;
    }
    const now = performance.now();
    for (const [session, entry] of watched) {
      if (sessionFinished(session)) {
        watched.delete(session);
        entry.letGo("ended by nghttp2");
        continue;
      }
      if (intervalMs <= 0) continue;
      const bytesRead = entry.socket.bytesRead;
      if (bytesRead !== entry.lastBytesRead) {
        entry.lastBytesRead = bytesRead;
        entry.lastReadAt = now;
        entry.pingSentAt = undefined;
      } else if (entry.pingSentAt !== undefined) {
        if (now - entry.pingSentAt >= timeoutMs) {
          watched.delete(session);
          entry.letGo("unanswered PING");
        }
      } else if (now - entry.lastReadAt >= intervalMs) {
        entry.pingSentAt = now;
        try {
          session.ping(ignorePingAnswer);
        } catch {
          // Destroyed meanwhile, or too many PINGs outstanding: the timeout decides either way.
        }
      }
    }
  }

  return {
    watch(session, socket, letGo) {
      if (session.destroyed) return;
      watched.set(session, {
        socket,
        letGo,
        lastBytesRead: socket.bytesRead,
        lastReadAt: performance.now(),
        pingSentAt: undefined,
      });
      session.once("close", () => watched.delete(session));
      if (sweep === undefined) {
        sweep = setInterval(tick, tickMs);
        sweep.unref();
      }
    },
  };
}

/** The highest stream id: a first GOAWAY that promises to serve every stream already on its way. */
const ANY_STREAM_ID = 2 ** 31 - 1;
/** Checks for the GOAWAY having left nghttp2: the first on the next turn, then backing off to this. */
const GOAWAY_CHECK_MAX_MS = 100;
/**
 * How long the first GOAWAY may wait to leave nghttp2 (it waits only while a socket write is under
 * way): long enough for a slow reader with a full flow-control window, then the session is destroyed.
 */
export const GOAWAY_SEND_GRACE_MS = 10_000;

const closeGuarded = new WeakSet<ServerHttp2Session>();

/**
 * Makes `session.close()` safe against what a client sends while the session closes.
 *
 * Node 20 frees a stream nghttp2 is still reading when HEADERS open a stream on a session that `close()`
 * has marked closed but whose GOAWAY has not left nghttp2 yet: node refuses the stream with RST_STREAM
 * from inside nghttp2's receive, which sends the pending GOAWAY first, which closes every stream above
 * its last id: the one being read (heap use-after-free; glibc aborts at some later allocation, or
 * worse). Two frames in one read do it, GOAWAY(NO_ERROR) then HEADERS, because node answers a client's
 * GOAWAY with `close()`; so does a request that arrives in the loop turn between a timer's `close()` and
 * the write that carries its GOAWAY. Node 22.23 and 24.21 defer that RST_STREAM: under valgrind the
 * same two frames corrupt nothing there.
 *
 * So `close()` is done as RFC 9113 §6.8 describes a graceful shutdown: a first GOAWAY with the highest
 * stream id (the session stays open, and a stream whose HEADERS arrive meanwhile is served, not reset
 * after its handler started), then, once nghttp2 has sent it and so ignores any new stream, node's own
 * `close()` (a second GOAWAY naming the last stream served). A session that cannot send even that
 * first GOAWAY within `graceMs` (its peer stopped reading) is destroyed, along with `socket` (the one
 * the session was given, when known). Installed before anything can close the session.
 */
export function closeOnlyAfterGoaway(
  session: ServerHttp2Session,
  graceMs: number,
  socket: Duplex | undefined,
): void {
  if (closeGuarded.has(session)) return;
  closeGuarded.add(session);
  const closeNow = session.close;
  let closing = false;
  session.close = function closeAfterGoaway(this: ServerHttp2Session, callback?: () => void): void {
    // Like node's close(), the callback waits for 'close'; a second call only adds its callback.
    if (typeof callback === "function" && !session.destroyed) session.once("close", callback);
    if (closing || session.closed || session.destroyed) return;
    closing = true;
    session.goaway(h2constants.NGHTTP2_NO_ERROR, ANY_STREAM_ID);
    const deadline = Date.now() + graceMs;
    let waitMs = 0;
    const check = (): void => {
      if (session.destroyed) return;
      if ((session.state.outboundQueueSize ?? 0) === 0) {
        Reflect.apply(closeNow, session, []);
        return;
      }
      if (Date.now() >= deadline) {
        session.destroy();
        socket?.destroy();
        return;
      }
      waitMs = Math.min(Math.max(1, waitMs * 2), GOAWAY_CHECK_MAX_MS);
      setTimeout(check, waitMs).unref();
    };
    setImmediate(check);
  };
}
