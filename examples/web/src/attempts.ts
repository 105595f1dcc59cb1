// What the mesh's outbound side did for one call, try by try, read from its diagnostics channels
// (`mesh:outbound:call:start`, `mesh:outbound:attempt:end`): which endpoint each try went to, and what
// it answered. The same channels feed @inmesh/admin's metrics and @inmesh/otel's spans.
import { AsyncLocalStorage } from "node:async_hooks";
import { subscribe } from "node:diagnostics_channel";
import {
  MeshChannel,
  type MeshChannelMessages,
  type OutboundAttemptMessage,
  type OutboundCallMessage,
} from "@inmesh/core";

export interface Attempt {
  readonly attempt: number;
  /** The pod that served the try (from discovery's labels), else its address. */
  readonly endpoint: string | undefined;
  readonly status: number | undefined;
  readonly error: string | undefined;
}

const scope = new AsyncLocalStorage<Attempt[]>();
const callRecords = new WeakMap<OutboundCallMessage, Attempt[]>();

subscribe(MeshChannel.outboundCallStart, (message) => {
  const record = scope.getStore();
  if (record) callRecords.set(message as MeshChannelMessages[typeof MeshChannel.outboundCallStart], record);
});

subscribe(MeshChannel.outboundAttemptEnd, (message) => {
  const attempt = message as OutboundAttemptMessage;
  const record = callRecords.get(attempt.call);
  if (!record || record.length >= 10) return;
  record.push({
    attempt: attempt.attempt,
    endpoint: attempt.endpointLabels?.pod ?? attempt.endpointAddress,
    status: attempt.statusCode,
    error:
      attempt.error === undefined ? undefined : String((attempt.error as Error)?.message ?? attempt.error),
  });
});

/** Runs `call`, recording the tries of every mesh call it makes into `attempts`. */
export function recordAttempts<T>(attempts: Attempt[], call: () => Promise<T>): Promise<T> {
  return scope.run(attempts, call);
}
