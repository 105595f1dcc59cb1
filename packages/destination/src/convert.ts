import { DestinationError, MeshErrorCode } from "@inmesh/core";
import { durationToMs, httpTypes } from "@inmesh/proto";
import { LIMITS } from "./limits.js";

/** The error every rejected control-plane message turns into; the watch keeps its last value. */
export function invalidUpdate(
  message: string,
  details?: Readonly<Record<string, unknown>>,
): DestinationError {
  return new DestinationError(MeshErrorCode.DESTINATION_INVALID_UPDATE, message, details ? { details } : {});
}

/** Upper-case method name, or undefined for an absent or unknown one. */
export function methodFromProto(method: httpTypes.HttpMethod | undefined): string | undefined {
  const type = method?.type;
  if (!type) return undefined;
  if (type.$case === "unregistered")
    return /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$/.test(type.value) ? type.value : undefined;
  const name = httpTypes.HttpMethod_Registered[type.value];
  return typeof name === "string" && name !== "UNRECOGNIZED" ? name : undefined;
}

/** A Duration in milliseconds; zero, negative and absent durations all mean "not set". */
export function positiveDurationMs(
  duration: { seconds: bigint; nanos: number } | undefined,
): number | undefined {
  const ms = durationToMs(duration);
  return ms !== undefined && ms > 0 ? ms : undefined;
}

/** Copies at most `LIMITS.maxLabels` labels into a null-prototype object (names come from the wire). */
export function boundedLabels(
  sources: readonly { readonly [key: string]: string }[],
): Readonly<Record<string, string>> {
  const out: Record<string, string> = Object.create(null);
  let count = 0;
  for (const labels of sources) {
    for (const [name, value] of Object.entries(labels)) {
      if (name.length === 0 || name.length > LIMITS.maxLabelNameLength) continue;
      if (value.length > LIMITS.maxLabelValueLength) continue;
      if (!Object.hasOwn(out, name)) {
        if (count >= LIMITS.maxLabels) continue;
        count += 1;
      }
      out[name] = value;
    }
  }
  return Object.freeze(out);
}
