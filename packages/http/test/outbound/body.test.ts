import { Readable } from "node:stream";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { createOneShotBody, createReplayableBody } from "../../src/outbound/body.js";

async function drain(body: unknown): Promise<Buffer> {
  if (typeof body === "string") return Buffer.from(body);
  if (body instanceof Uint8Array) return Buffer.from(body);
  const chunks: Buffer[] = [];
  for await (const chunk of body as AsyncIterable<string | Uint8Array>) chunks.push(Buffer.from(chunk));
  return Buffer.concat(chunks);
}

describe("the retry body rule (contract §7.1)", () => {
  it("replays known-size bodies up to the limit and refuses larger ones", () => {
    const exact = createReplayableBody(Buffer.alloc(64), undefined, 64);
    expect(exact.next()).toHaveLength(64);
    expect(exact.canReplay()).toBe(true);
    const over = createReplayableBody(Buffer.alloc(65), undefined, 64);
    over.next();
    expect(over.canReplay()).toBe(false);
    expect(over.reason()).toBe("too-large");
    const text = createReplayableBody("é".repeat(32), undefined, 64);
    expect(text.canReplay()).toBe(true);
    expect(createReplayableBody("é".repeat(33), undefined, 64).canReplay()).toBe(false);
    expect(createReplayableBody(null, undefined, 0).canReplay()).toBe(true);
  });

  it("sends the body of a call that cannot be retried once, as given, without teeing or keeping it", async () => {
    const stream = Readable.from([Buffer.from("abc")]);
    const once = createOneShotBody(stream);
    expect(once.canReplay()).toBe(true);
    expect(once.next()).toBe(stream);
    expect(once.canReplay()).toBe(false);
    expect(once.reason()).toBe("too-large");
    expect((await drain(stream)).toString()).toBe("abc");
    const none = createOneShotBody(undefined);
    expect(none.next()).toBeUndefined();
    expect(none.canReplay()).toBe(true);
  });

  it("replays a stream that ended within the limit with exactly its bytes", async () => {
    const body = createReplayableBody(
      Readable.from([Buffer.from("ab"), "cd", new Uint8Array([101])]),
      undefined,
      5,
    );
    expect(body.canReplay()).toBe(true);
    const first = await drain(body.next());
    expect(first.toString()).toBe("abcde");
    expect(body.canReplay()).toBe(true);
    expect((await drain(body.next())).toString()).toBe("abcde");
    expect((await drain(body.next())).toString()).toBe("abcde");
  });

  it("never replays a stream that outgrew the limit, and forwards every byte of it", async () => {
    const body = createReplayableBody(Readable.from([Buffer.alloc(4, 1), Buffer.alloc(4, 2)]), undefined, 5);
    const sent = await drain(body.next());
    expect(sent).toEqual(Buffer.concat([Buffer.alloc(4, 1), Buffer.alloc(4, 2)]));
    expect(body.canReplay()).toBe(false);
    expect(body.reason()).toBe("too-large");
  });

  it("does not replay a stream still being read", async () => {
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    async function* slow() {
      yield Buffer.from("x");
      await gate;
      yield Buffer.from("y");
    }
    const body = createReplayableBody(slow(), undefined, 1024);
    const iterator = (body.next() as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
    await iterator.next();
    expect(body.canReplay()).toBe(false);
    expect(body.reason()).toBe("streaming");
    release();
    await iterator.next();
    await iterator.next();
    expect(body.canReplay()).toBe(true);
  });

  it("sends a stream declared larger than the limit untouched and only once", () => {
    const stream = Readable.from([Buffer.alloc(10)]);
    const body = createReplayableBody(stream, 100, 64);
    expect(body.next()).toBe(stream);
    expect(body.canReplay()).toBe(false);
  });

  it("lets an attempt that never read its stream hand it to the next attempt", async () => {
    const body = createReplayableBody(Readable.from([Buffer.from("abc")]), undefined, 64);
    body.next(); // the first attempt failed to connect: nothing read
    expect(body.canReplay()).toBe(true);
    expect((await drain(body.next())).toString()).toBe("abc");
  });

  it("holds for any chunking: replayable exactly when the total fits, and the bytes are preserved", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.uint8Array({ maxLength: 40 }), { maxLength: 8 }),
        fc.integer({ min: 0, max: 120 }),
        async (chunks, limit) => {
          const total = chunks.reduce((sum, chunk) => sum + chunk.byteLength, 0);
          const expected = Buffer.concat(chunks.map((chunk) => Buffer.from(chunk)));
          const body = createReplayableBody(
            Readable.from(chunks.map((c) => Buffer.from(c))),
            undefined,
            limit,
          );
          const sent = await drain(body.next());
          expect(sent).toEqual(expected);
          expect(body.canReplay()).toBe(total <= limit);
          if (total <= limit) expect(await drain(body.next())).toEqual(expected);
        },
      ),
      { numRuns: 200, interruptAfterTimeLimit: 10_000 },
    );
  });
});
