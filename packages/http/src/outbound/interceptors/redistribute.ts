import type { MeshInterceptor } from "../compose.js";
import { attemptOf, callOf } from "../state.js";

/**
 * Retries go through the route's backend distribution again, as in linkerd2-proxy where the retry layer
 * sits above the distribution (a retry of a split may land on another backend). The route interceptor
 * leaves `call.redistribute` set only when the rule has more than one backend to choose from; the first
 * attempt keeps the route's own pick.
 */
export function redistributeInterceptor(): MeshInterceptor {
  return (dispatch) =>
    function meshRedistribute(opts, handler) {
      const call = callOf(opts);
      if (call.redistribute !== undefined && attemptOf(opts).number > 1) call.redistribute();
      return dispatch(opts, handler);
    };
}
