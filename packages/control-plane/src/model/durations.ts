/**
 * Linkerd annotation durations (`policy-controller/k8s/index/src/outbound/index.rs` `parse_duration`):
 * `<n>(ms|s|m|h|d)`, or a bare `0`. Returns milliseconds, or undefined when invalid.
 */
export function parseLinkerdDurationMs(text: string): number | undefined {
  const trimmed = text.trim();
  if (trimmed === "0") return 0;
  const match = /^(\d+)(ms|s|m|h|d)$/.exec(trimmed);
  if (!match) return undefined;
  const unit = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[
    match[2] as "ms" | "s" | "m" | "h" | "d"
  ];
  const value = Number(match[1]) * unit;
  return Number.isSafeInteger(value) ? value : undefined;
}

const GO_UNITS_MS: Readonly<Record<string, number>> = {
  ns: 1e-6,
  us: 1e-3,
  µs: 1e-3,
  μs: 1e-3,
  ms: 1,
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
};

/**
 * Go `time.ParseDuration` (ServiceProfile `timeout` and `retryBudget.ttl`): a sequence of decimal numbers
 * with units, e.g. `300ms`, `1.5h`, `2h45m`; `0` alone is allowed. Negative durations are refused.
 */
export function parseGoDurationMs(text: string): number | undefined {
  if (text === "0") return 0;
  if (text === "" || text.startsWith("-") || text.startsWith("+")) return undefined;
  const part = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)/y;
  let total = 0;
  let index = 0;
  while (index < text.length) {
    part.lastIndex = index;
    const match = part.exec(text);
    if (!match) return undefined;
    total += Number(match[1]) * (GO_UNITS_MS[match[2] as string] as number);
    index = part.lastIndex;
  }
  return Number.isFinite(total) ? total : undefined;
}

/** Gateway API Duration (GEP-2257): `^([0-9]{1,5}(h|m|s|ms)){1,4}$`. */
export function parseGatewayDurationMs(text: string): number | undefined {
  if (!/^([0-9]{1,5}(h|m|s|ms)){1,4}$/.test(text)) return undefined;
  return parseGoDurationMs(text);
}
