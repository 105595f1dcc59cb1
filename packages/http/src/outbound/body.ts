/**
 * The request-body rule for retries (contract §7.1, design rule 11): a body of at most `maxBytes` may be
 * replayed; a larger body, or one still streaming when the response arrives, is sent once, never
 * replayed and never truncated.
 *
 * Known-size bodies (string, Buffer, Uint8Array) are replayed from the caller's own value, copying
 * nothing. Streamed bodies (Readable, async or sync iterables, fetch's body generator) are teed: every
 * chunk is forwarded as it is read, and a copy is kept until the total passes `maxBytes`, at which point
 * the copy is dropped and the body is marked capped. A stream is replayable only once it has ended
 * within the limit.
 */
export interface ReplayableBody {
  /** The body to put in the dispatch options of the next attempt. */
  next(): unknown;
  /** Whether another attempt can carry the whole body again, judged now. */
  canReplay(): boolean;
  /** Why not, for diagnostics: `too-large`, `streaming`, or undefined when replayable. */
  reason(): "too-large" | "streaming" | undefined;
}

type Chunk = string | Uint8Array;

/** A request without a body replays trivially; one shared object serves them all. */
const NO_BODY: ReplayableBody = Object.freeze({
  next: () => undefined,
  canReplay: () => true,
  reason: () => undefined,
});

/**
 * A body sent exactly once, untouched (never teed nor copied): for calls that cannot be retried.
 * Asked again, it says no, so a caller that retries anyway cannot send an empty body by mistake.
 */
export function createOneShotBody(body: unknown): ReplayableBody {
  if (body === undefined || body === null) return NO_BODY;
  return new OneShotBody(body);
}

class OneShotBody implements ReplayableBody {
  readonly #body: unknown;
  #sent = false;
  constructor(body: unknown) {
    this.#body = body;
  }
  next(): unknown {
    this.#sent = true;
    return this.#body;
  }
  canReplay(): boolean {
    return !this.#sent;
  }
  reason(): "too-large" | undefined {
    return this.#sent ? "too-large" : undefined;
  }
}

function chunkLength(chunk: Chunk): number {
  return typeof chunk === "string" ? Buffer.byteLength(chunk) : chunk.byteLength;
}

function isIterable(value: unknown): value is Iterable<Chunk> | AsyncIterable<Chunk> {
  return (
    typeof value === "object" &&
    value !== null &&
    (typeof (value as AsyncIterable<Chunk>)[Symbol.asyncIterator] === "function" ||
      typeof (value as Iterable<Chunk>)[Symbol.iterator] === "function")
  );
}

/**
 * @param body the `body` of undici dispatch options
 * @param contentLength the request's declared content-length, if any: a larger declared size is sent
 *   untouched, since buffering could never succeed
 */
export function createReplayableBody(
  body: unknown,
  contentLength: number | undefined,
  maxBytes: number,
): ReplayableBody {
  if (body === undefined || body === null) return NO_BODY;
  if (typeof body === "string" || body instanceof Uint8Array) {
    const fits = chunkLength(body) <= maxBytes;
    return {
      next: () => body,
      canReplay: () => fits,
      reason: () => (fits ? undefined : "too-large"),
    };
  }
  if (!isIterable(body) || (contentLength !== undefined && contentLength > maxBytes)) {
    // Unknown shapes (FormData, Blob…) and bodies declared too large go out once, exactly as given.
    let sent = false;
    return {
      next: () => {
        sent = true;
        return body;
      },
      canReplay: () => !sent,
      reason: () => (sent ? "too-large" : undefined),
    };
  }

  const source = body;
  let chunks: Buffer[] | undefined = [];
  let total = 0;
  let started = false;
  let complete = false;
  let capped = false;
  let replay: Buffer | undefined;

  async function* tee(): AsyncGenerator<Chunk> {
    started = true;
    for await (const chunk of source as AsyncIterable<Chunk>) {
      if (!capped) {
        const length = chunkLength(chunk);
        total += length;
        if (total > maxBytes) {
          capped = true;
          chunks = undefined;
        } else if (length > 0) {
          // Copy: the caller may reuse its buffer once the chunk has been written.
          chunks?.push(typeof chunk === "string" ? Buffer.from(chunk) : Buffer.from(chunk));
        }
      }
      yield chunk;
    }
    complete = true;
  }

  return {
    next() {
      if (replay) return replay;
      if (!started) return tee();
      if (complete && !capped && chunks) {
        replay = Buffer.concat(chunks, total);
        chunks = undefined;
        return replay;
      }
      // Callers check canReplay() first; reaching here means a programming error upstream.
      throw new Error("request body cannot be replayed");
    },
    canReplay: () => replay !== undefined || !started || (complete && !capped),
    reason: () =>
      replay !== undefined || !started || (complete && !capped)
        ? undefined
        : capped
          ? "too-large"
          : "streaming",
  };
}
