/**
 * S9's request body, shared by its client (retries-client.mjs) and target (retries-target.mjs): 16 KiB
 * whose first 16 bytes are the request id (decimal, space-padded) and the rest a fixed pseudo-random
 * pattern. The target checks every try against it, so a retry that replays a truncated body, another
 * request's body, or chunks out of order is caught, not only a wrong length.
 */

export const BODY_BYTES = 16 * 1024;
export const ID_BYTES = 16;
/** Sent as four writes, as an upload stream or fetch's body generator would: the retry layer tees them. */
export const CHUNK_BYTES = 4 * 1024;

/** Bytes ID_BYTES… of every body: an xorshift sequence (no period a shifted chunk could hide in). */
export const PATTERN = (() => {
  const bytes = Buffer.allocUnsafe(BODY_BYTES);
  let state = 0x9e3779b9;
  for (let i = 0; i < BODY_BYTES; i += 1) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    bytes[i] = state & 0xff;
  }
  return bytes;
})();

/** The body's chunks for request `id`: only the first is new per request, the rest are views of PATTERN. */
export function bodyChunks(id) {
  const head = Buffer.allocUnsafe(CHUNK_BYTES);
  PATTERN.copy(head, 0, 0, CHUNK_BYTES);
  head.write(String(id).padStart(ID_BYTES, " "), 0, ID_BYTES, "latin1");
  const chunks = [head];
  for (let at = CHUNK_BYTES; at < BODY_BYTES; at += CHUNK_BYTES)
    chunks.push(PATTERN.subarray(at, at + CHUNK_BYTES));
  return chunks;
}

/** Whether `body` is exactly the body of request `id`. */
export function isBodyOf(body, id) {
  return (
    body.byteLength === BODY_BYTES &&
    body.toString("latin1", 0, ID_BYTES) === String(id).padStart(ID_BYTES, " ") &&
    body.compare(PATTERN, ID_BYTES, BODY_BYTES, ID_BYTES, BODY_BYTES) === 0
  );
}
