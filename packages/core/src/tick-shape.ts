import { executionAsyncResource } from "node:async_hooks";

/**
 * How often the held tick is replaced by a fresh one. A field whose representation changes gives
 * node's tick objects a new chain of hidden classes; the fresh tick holds that one too.
 */
const REFRESH_MS = 60_000;

let held: object | undefined;
let refresh: NodeJS.Timeout | undefined;

/**
 * Keeps `process.nextTick` on V8's fast path for the life of the process. Idempotent; called by every
 * inmesh server and client before it serves or sends anything.
 *
 * node builds each queued tick as an object literal whose first keys are computed (its async-id
 * symbols). For every key after the first, V8 records the one hidden class it saw and holds it weakly.
 * When a process idles through a few full collections with no tick queued (a server between bursts
 * of traffic), those hidden classes die. The next tick finds the records empty, V8 marks them
 * megamorphic for good, and the optimized `nextTick` from then on defines every property but the first
 * through the runtime. Measured in our servers on Node 20 and 24: nextTick went from ~2% to ~20% of
 * the CPU, +8 µs (+25%) per HTTP/2 request and +3-4 µs per HTTP/1 request, for the rest of the
 * process's life. One tick object kept alive keeps its hidden class and, through it, every one before
 * it in the chain, so the records never empty.
 */
export function holdTickShape(): void {
  if (refresh !== undefined) return;
  holdFreshTick();
  refresh = setInterval(holdFreshTick, REFRESH_MS);
  refresh.unref();
}

function holdFreshTick(): void {
  process.nextTick(function captureTick() {
    // While a tick runs, node reports the tick object itself as the current async resource. Should a
    // future node report something else, nothing is held and nothing else changes.
    const resource: unknown = executionAsyncResource();
    if (isTickOf(resource, captureTick)) held = resource;
  });
}

function isTickOf(resource: unknown, callback: () => void): resource is object {
  return typeof resource === "object" && resource !== null && Reflect.get(resource, "callback") === callback;
}

/** Whether a tick object is held (for tests). */
export function tickShapeHeld(): boolean {
  return held !== undefined;
}
