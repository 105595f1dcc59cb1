import { fetch as undiciFetch } from "undici";
import type { MeshDispatcher } from "./dispatcher.js";

/** undici's `fetch`, with every request sent through `dispatcher`. */
export type MeshFetch = (
  input: Parameters<typeof undiciFetch>[0],
  init?: Parameters<typeof undiciFetch>[1],
) => ReturnType<typeof undiciFetch>;

/**
 * A `fetch` bound to the mesh dispatcher (design rule 5: the dispatcher is the fast path; this is the
 * convenience). A `dispatcher` given in `init` still wins.
 *
 * @example
 * const meshFetch = createMeshFetch(dispatcher);
 * const books = await (await meshFetch("http://books.default.svc.cluster.local/books")).json();
 */
export function createMeshFetch(dispatcher: MeshDispatcher): MeshFetch {
  return function meshFetch(input, init) {
    return undiciFetch(input, { dispatcher, ...init });
  };
}
