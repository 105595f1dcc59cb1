/** The pod a `PortSpec.workload` / `TrafficSpec.source_workload` string names. */
export interface Workload {
  readonly namespace: string;
  /** undefined for `{"ns","external_workload"}`, which the dev control plane does not model. */
  readonly pod: string | undefined;
  readonly externalWorkload: string | undefined;
}

const MAX_WORKLOAD_LENGTH = 1024;

/**
 * Mirrors policy-controller `workload.rs`: a string starting with `{` is JSON
 * (`{"ns":"…","pod":"…"}` or `{"ns":"…","external_workload":"…"}`, the chart adds a trailing newline),
 * anything else must be the legacy `ns:pod`. Returns an error message for InvalidArgument.
 */
export function parseWorkload(
  text: string,
): { ok: true; workload: Workload } | { ok: false; message: string } {
  if (text.length > MAX_WORKLOAD_LENGTH) return { ok: false, message: "workload is too long" };
  const trimmed = text.trim();
  if (trimmed.startsWith("{")) {
    let value: unknown;
    try {
      value = JSON.parse(trimmed);
    } catch {
      return { ok: false, message: `invalid workload JSON: ${JSON.stringify(trimmed)}` };
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      return { ok: false, message: "workload JSON must be an object" };
    }
    const record = value as Record<string, unknown>;
    const ns = record.ns;
    const pod = record.pod;
    const external = record.external_workload;
    if (typeof ns !== "string" || ns === "")
      return { ok: false, message: 'workload JSON needs a string "ns"' };
    if (typeof pod === "string" && pod !== "" && external === undefined) {
      return { ok: true, workload: { namespace: ns, pod, externalWorkload: undefined } };
    }
    if (typeof external === "string" && external !== "" && pod === undefined) {
      return { ok: true, workload: { namespace: ns, pod: undefined, externalWorkload: external } };
    }
    return { ok: false, message: 'workload JSON needs exactly one of "pod" or "external_workload"' };
  }
  const parts = trimmed.split(":");
  if (parts.length === 2 && parts[0] !== "" && parts[1] !== "") {
    return {
      ok: true,
      workload: { namespace: parts[0] as string, pod: parts[1] as string, externalWorkload: undefined },
    };
  }
  return {
    ok: false,
    message: `invalid workload ${JSON.stringify(trimmed)}: expected {"ns","pod"} JSON or ns:pod`,
  };
}
