import { redistribute } from "../backends.js";
import type { MeshInterceptor } from "../compose.js";
import { attemptOf, callOf } from "../state.js";
import type { TargetRegistry } from "../targets.js";

/**
 * Retries go through the route's backend distribution again, as in linkerd2-proxy where the retry layer
 * sits above the distribution (a retry of a split may land on another backend). The route interceptor
 * sets `call.splitPolicy` only when the rule has more than one backend to choose from; the first attempt
 * keeps the route's own pick.
 */
export function redistributeInterceptor(registry: TargetRegistry): MeshInterceptor {
  return (dispatch) =>
    function meshRedistribute(opts, handler) {
      const call = callOf(opts);
      const split = call.splitPolicy;
      if (split !== undefined && attemptOf(opts).number > 1) redistribute(call, split, registry);
      return dispatch(opts, handler);
    };
}
