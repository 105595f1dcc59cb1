import { type Dispatcher, getGlobalDispatcher, setGlobalDispatcher } from "undici";

/**
 * Makes `dispatcher` the process-wide one: Node's global `fetch` (whose bundled undici reads the same
 * `Symbol.for("undici.globalDispatcher.1")` slot that this undici writes, on Node 20, 22 and 24) and
 * undici's own `fetch`/`request` without a `dispatcher` option. Idempotent: installing the installed
 * dispatcher again changes nothing. Returns the undo, which restores what was there before, unless
 * someone else replaced ours since.
 */
export function installGlobalDispatcher(dispatcher: Dispatcher): () => void {
  const previous = getGlobalDispatcher();
  if (previous === dispatcher) return () => {};
  setGlobalDispatcher(dispatcher);
  let undone = false;
  return () => {
    if (undone) return;
    undone = true;
    if (getGlobalDispatcher() === dispatcher) setGlobalDispatcher(previous);
  };
}
