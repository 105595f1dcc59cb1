import type { Dispatcher } from "undici";

export type MeshInterceptor = Dispatcher.DispatcherComposeInterceptor;

/**
 * Composes interceptors in request order: index 0 is the outermost layer (it sees the request first and
 * the response last), as in grpc-js and Connect. undici's own `compose` runs the LAST interceptor first
 * (undici docs, Dispatcher.compose), so this is the one place that reverses the array (style §9.2).
 *
 * @example
 * const dispatcher = composeInterceptors(new Agent(), [logging, retry]); // logging sees each request first
 */
export function composeInterceptors(
  dispatcher: Dispatcher,
  interceptors: readonly MeshInterceptor[],
): Dispatcher.ComposedDispatcher {
  return dispatcher.compose([...interceptors].reverse());
}
