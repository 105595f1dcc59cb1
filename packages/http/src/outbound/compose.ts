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

/**
 * The pipeline's own chain: the same request order as composeInterceptors, as a plain function. undici's
 * `compose` answers every `dispatch` through a Proxy and re-checks the handler's API at each layer; the
 * mesh dispatcher hands its interceptors controller-API handlers only, so neither is needed per request.
 */
export function chainInterceptors(
  dispatch: Dispatcher.Dispatch,
  interceptors: readonly MeshInterceptor[],
): Dispatcher.Dispatch {
  let chained = dispatch;
  for (let i = interceptors.length - 1; i >= 0; i -= 1)
    chained = (interceptors[i] as MeshInterceptor)(chained);
  return chained;
}
