import { debuglog } from "node:util";
import type { inbound } from "@inmesh/proto";
import { convertServer, isInvalidServerError } from "./compile.js";
import { buildPolicy, invalidServerPolicy } from "./evaluator.js";
import type { CompiledServerPolicy } from "./types.js";

const debug = debuglog("mesh");

export interface CompileServerPolicyOptions {
  /** The served port, recorded on the policy and in diagnostics. */
  port?: number;
  /** Monotonic clock of the local rate limiter, in milliseconds. @default performance.now */
  nowMs?: () => number;
  /** Most client identities the per-identity rate limit tracks at once. @default 10000 */
  rateLimitMaxTrackedIdentities?: number;
}

/**
 * Compiles an `inbound.Server` from the policy controller into an allocation-free evaluator, converting it
 * exactly as linkerd2-proxy does. Never throws: a message the proxy would refuse to decode (an
 * authorization without networks or authentication, a bad regex or CIDR, a route without metadata, no
 * protocol, …) yields the invalid policy, whose `invalidReason` says why.
 */
export function compileServerPolicy(
  server: inbound.Server,
  options: CompileServerPolicyOptions = {},
): CompiledServerPolicy {
  try {
    return buildPolicy(convertServer(server), options.port, {
      ...(options.nowMs === undefined ? {} : { nowMs: options.nowMs }),
      ...(options.rateLimitMaxTrackedIdentities === undefined
        ? {}
        : { maxTrackedIdentities: options.rateLimitMaxTrackedIdentities }),
    });
  } catch (error) {
    const reason = isInvalidServerError(error)
      ? error.message
      : `unexpected server message: ${error instanceof Error ? error.message : String(error)}`;
    debug(
      "policy: invalid server policy%s: %s",
      options.port === undefined ? "" : ` for port ${options.port}`,
      reason,
    );
    return invalidServerPolicy(reason, options.port);
  }
}
