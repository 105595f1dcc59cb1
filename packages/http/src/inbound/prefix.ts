import type { Duplex } from "node:stream";

export type PrefixResult<T> =
  | { readonly kind: "decided"; readonly value: T; readonly bytes: Buffer }
  /** The cap was reached, or the peer stopped sending until the timeout: whatever was read so far. */
  | { readonly kind: "timeout"; readonly bytes: Buffer }
  | { readonly kind: "closed" };

/**
 * Reads the first bytes of a stream until `decide` returns a value, `maxBytes` are buffered (then
 * `decide` gets the capped buffer with `final = true` and must answer), `timeoutMs` passes, or the
 * stream ends. The bytes read are pushed back (`unshift`) and the stream is left paused, so the next
 * owner sees the connection from its first byte. Every read is bounded in size and time.
 */
export function readPrefix<T>(
  stream: Duplex,
  options: {
    readonly maxBytes: number;
    readonly timeoutMs: number;
    readonly decide: (buffer: Buffer, final: boolean) => T | undefined;
  },
  callback: (result: PrefixResult<T>) => void,
): void {
  let buffer: Buffer = Buffer.alloc(0);
  let done = false;
  const finish = (result: PrefixResult<T>) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    stream.removeListener("data", onData);
    stream.removeListener("end", onClosed);
    stream.removeListener("close", onClosed);
    stream.removeListener("error", onClosed);
    if (result.kind !== "closed") {
      stream.pause();
      if (result.bytes.byteLength > 0) stream.unshift(result.bytes);
    }
    callback(result);
  };
  const onData = (chunk: Buffer) => {
    const room = options.maxBytes - buffer.byteLength;
    if (chunk.byteLength > room) {
      // Keep what exceeds the cap for the next owner: it is pushed back with the rest.
      buffer = Buffer.concat([buffer, chunk]);
      const value = options.decide(buffer.subarray(0, options.maxBytes), true);
      finish(
        value === undefined ? { kind: "timeout", bytes: buffer } : { kind: "decided", value, bytes: buffer },
      );
      return;
    }
    buffer = buffer.byteLength === 0 ? chunk : Buffer.concat([buffer, chunk]);
    const final = buffer.byteLength >= options.maxBytes;
    const value = options.decide(buffer, final);
    if (value !== undefined) finish({ kind: "decided", value, bytes: buffer });
    else if (final) finish({ kind: "timeout", bytes: buffer });
  };
  const onClosed = () => finish({ kind: "closed" });
  const timer = setTimeout(() => finish({ kind: "timeout", bytes: buffer }), options.timeoutMs);
  stream.on("data", onData);
  stream.once("end", onClosed);
  stream.once("close", onClosed);
  stream.once("error", onClosed);
  stream.resume();
}
