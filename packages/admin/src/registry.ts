/**
 * A small Prometheus registry (text format 0.0.4) whose families have a hard series cap. Label sets beyond
 * the cap are merged into an overflow series instead of growing memory and scrape size without bound
 * (CVE-2025-43915: metric label sets built from attacker-controlled values exhausted the proxy).
 *
 * Recording runs inside the request path (diagnostics_channel subscribers are synchronous), so a label
 * set is never hashed as one long string: it is a list of interned parts (each a rendered fragment such
 * as `tls="true",client_id="…"` with a small numeric id), and a series is found by the ids.
 *
 * Series idle for longer than `retainIdleMs` are dropped, as linkerd2-proxy does
 * (`LINKERD2_PROXY_METRICS_RETAIN_IDLE`), so endpoints and peers that went away free their room.
 */

/** Ordered label pairs; a pair whose value is undefined is left out, as linkerd2-proxy omits absent labels. */
export type LabelPairs = readonly (readonly [name: string, value: string | undefined])[];

/** Label text as it appears between the braces (`a="1",b="2"`), escaped and truncated. */
export type LabelText = string;

/** An interned fragment of label text. */
export interface LabelPart {
  readonly id: number;
  readonly text: LabelText;
}

/** A label set as the list of its parts, in a fixed order per call site. */
export type Parts = readonly LabelPart[];

export type FamilyType = "counter" | "gauge" | "histogram";

export interface FamilyDefinition {
  readonly name: string;
  readonly help: string;
  readonly type: FamilyType;
  /** Upper bounds of histogram buckets, ascending; `+Inf` is added. */
  readonly buckets?: readonly number[];
  /**
   * Labels the overflow series keeps, each with the only values it may keep (anything else becomes
   * `"overflow"`). Every other label is dropped from the overflow series. The family reserves room for
   * every combination, so the total series count never exceeds the cap.
   */
  readonly overflowKeep?: Readonly<Record<string, readonly string[]>>;
  /** Families whose label values all come from small fixed sets are not capped. */
  readonly uncapped?: boolean;
}

export interface Series {
  value: number;
  /** Histogram only: per-bucket (non-cumulative) counts, the last one being `+Inf`. */
  readonly counts: number[] | undefined;
  sum: number;
  count: number;
  /** When the series was last recorded into, for idle eviction. */
  touchedMs: number;
  readonly overflow: boolean;
}

export interface Family {
  readonly definition: FamilyDefinition;
  /** The series for a label set, created if the cap allows, else the matching overflow series. */
  series(parts: Parts): Series;
  inc(parts: Parts, amount?: number): void;
  set(parts: Parts, value: number): void;
  observe(parts: Parts, value: number): void;
  readonly size: number;
  render(out: string[]): void;
  /** Drops series not recorded into for `retainIdleMs`; returns how many. */
  evictIdle(nowMs: number): number;
}

export interface RegistryLimits {
  readonly maxSeriesPerFamily: number;
  readonly maxLabelValueLength: number;
  readonly retainIdleMs: number;
  readonly nowMs: () => number;
}

export const OVERFLOW_LABEL_VALUE = "overflow";

const NEEDS_ESCAPE = /[\\"\n]/;

export function escapeLabelValue(value: string): string {
  if (!NEEDS_ESCAPE.test(value)) return value;
  return value.replace(/[\\"\n]/g, (c) => (c === "\\" ? "\\\\" : c === '"' ? '\\"' : "\\n"));
}

export function escapeHelp(text: string): string {
  return text.replace(/[\\\n]/g, (c) => (c === "\\" ? "\\\\" : "\\n"));
}

export function formatSampleValue(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Number.POSITIVE_INFINITY) return "+Inf";
  if (value === Number.NEGATIVE_INFINITY) return "-Inf";
  return String(value);
}

const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** Turns an arbitrary key into a valid label name (used for discovery labels). */
export function sanitizeLabelName(name: string): string {
  const cleaned = name.replace(/[^a-zA-Z0-9_]/g, "_");
  return LABEL_NAME.test(cleaned) ? cleaned : `_${cleaned}`;
}

/** Renders label pairs to label text; values longer than `maxValueLength` are truncated. */
export function renderLabels(labels: LabelPairs, maxValueLength: number): LabelText {
  let text = "";
  for (const [name, raw] of labels) {
    if (raw === undefined) continue;
    const value = raw.length > maxValueLength ? raw.slice(0, maxValueLength) : raw;
    text += `${text === "" ? "" : ","}${name}="${escapeLabelValue(value)}"`;
  }
  return text;
}

function joinParts(parts: Parts): LabelText {
  let text = "";
  for (const part of parts) {
    if (part.text === "") continue;
    text = text === "" ? part.text : `${text},${part.text}`;
  }
  return text;
}

/**
 * Interns label fragments. It is a bounded cache (fragments can carry attacker-chosen values), cleared
 * when full. Ids are never reused, so a part held by a caller stays valid after a clear: equal ids always
 * mean equal text, and families find series by text when an id is new.
 */
export interface PartTable {
  part(text: LabelText): LabelPart;
  readonly size: number;
}

export function createPartTable(maxParts: number): PartTable {
  const parts = new Map<LabelText, LabelPart>();
  let nextId = 0;
  return {
    part(text) {
      const existing = parts.get(text);
      if (existing) return existing;
      if (parts.size >= maxParts) parts.clear();
      const created = { id: nextId, text };
      nextId += 1;
      parts.set(text, created);
      return created;
    },
    get size() {
      return parts.size;
    },
  };
}

interface KeyNode {
  readonly next: Map<number, KeyNode>;
  series: Series | undefined;
}

function newKeyNode(): KeyNode {
  return { next: new Map(), series: undefined };
}

function newSeries(type: FamilyType, bucketCount: number, nowMs: number, overflow: boolean): Series {
  return {
    value: 0,
    counts: type === "histogram" ? new Array<number>(bucketCount + 1).fill(0) : undefined,
    sum: 0,
    count: 0,
    touchedMs: nowMs,
    overflow,
  };
}

/** Families try to free room by eviction at most this often when they are full. */
const EVICT_INTERVAL_MS = 1000;

export function createFamily(
  definition: FamilyDefinition,
  limits: RegistryLimits,
  onOverflow: (family: string) => void,
): Family {
  const buckets = definition.buckets ?? [];
  const keep = Object.entries(definition.overflowKeep ?? {});
  const reserve = keep.reduce((product, [, values]) => product * (values.length + 1), 1);
  const regularCap = definition.uncapped ? Number.POSITIVE_INFINITY : limits.maxSeriesPerFamily - reserve;
  // Label text -> series is the truth; part-id keys -> series is a bounded cache in front of it, so two
  // part lists that render the same text can never make a duplicate series (Prometheus rejects a whole
  // scrape for that).
  const byText = new Map<LabelText, Series>();
  // Keyed by the ids of the non-empty parts, as a tree of maps: finding a known label set allocates
  // nothing (a key string built per call was most of what metrics allocated per request, and every
  // allocation per request counts towards the young generation the process keeps: S8).
  let byKey: KeyNode = newKeyNode();
  let keyCount = 0;
  const maxKeys = limits.maxSeriesPerFamily * 2;
  let regularCount = 0;
  let lastEvictionMs = Number.NEGATIVE_INFINITY;

  // Kept values never need escaping, so they can be found in the label text directly.
  const hasLabel = (text: LabelText, label: string) => text.startsWith(label) || text.includes(`,${label}`);
  const overflowText = (text: LabelText): LabelText => {
    const pairs: [string, string][] = [];
    for (const [name, allowed] of keep) {
      const value = allowed.find((candidate) => hasLabel(text, `${name}="${candidate}"`));
      pairs.push([name, value ?? OVERFLOW_LABEL_VALUE]);
    }
    pairs.push([OVERFLOW_LABEL_VALUE, "true"]);
    return renderLabels(pairs, limits.maxLabelValueLength);
  };

  const evictIdle = (nowMs: number): number => {
    lastEvictionMs = nowMs;
    if (definition.uncapped) return 0;
    let evicted = 0;
    for (const [text, series] of byText) {
      if (nowMs - series.touchedMs <= limits.retainIdleMs) continue;
      // A gauge still counting something (open connections) is live however long ago it changed.
      if (definition.type === "gauge" && series.value !== 0) continue;
      byText.delete(text);
      if (!series.overflow) regularCount -= 1;
      evicted += 1;
    }
    if (evicted > 0) {
      byKey = newKeyNode();
      keyCount = 0;
    }
    return evicted;
  };

  const overflowSeries = (text: LabelText, nowMs: number): Series => {
    const overflowKey = overflowText(text);
    let series = byText.get(overflowKey);
    if (series === undefined) {
      series = newSeries(definition.type, buckets.length, nowMs, true);
      byText.set(overflowKey, series);
    }
    return series;
  };

  const resolve = (parts: Parts): Series => {
    const nowMs = limits.nowMs();
    let node = byKey;
    for (const part of parts) {
      if (part.text === "") continue;
      let next = node.next.get(part.id);
      if (next === undefined) {
        next = newKeyNode();
        node.next.set(part.id, next);
      }
      node = next;
    }
    let series = node.series;
    if (series === undefined) {
      const text = joinParts(parts);
      series = byText.get(text);
      if (series === undefined) {
        if (regularCount >= regularCap && nowMs - lastEvictionMs >= EVICT_INTERVAL_MS) evictIdle(nowMs);
        if (regularCount < regularCap) {
          series = newSeries(definition.type, buckets.length, nowMs, false);
          byText.set(text, series);
          regularCount += 1;
        } else {
          // Cached by key too: an eviction clears the key cache, so the label set gets another chance.
          series = overflowSeries(text, nowMs);
        }
      }
      if (keyCount >= maxKeys) {
        // The cache is full: start a new one (its first entry is this label set).
        byKey = newKeyNode();
        keyCount = 0;
        node = byKey;
        for (const part of parts) {
          if (part.text === "") continue;
          const next = newKeyNode();
          node.next.set(part.id, next);
          node = next;
        }
      }
      node.series = series;
      keyCount += 1;
    }
    if (series.overflow) onOverflow(definition.name);
    series.touchedMs = nowMs;
    return series;
  };

  const sampleLine = (out: string[], name: string, labels: string, value: number) => {
    out.push(
      labels === ""
        ? `${name} ${formatSampleValue(value)}`
        : `${name}{${labels}} ${formatSampleValue(value)}`,
    );
  };

  return {
    definition,
    series: resolve,
    inc(parts, amount = 1) {
      resolve(parts).value += amount;
    },
    set(parts, value) {
      resolve(parts).value = value;
    },
    observe(parts, value) {
      const target = resolve(parts);
      const counts = target.counts!;
      let index = 0;
      while (index < buckets.length && value > buckets[index]!) index += 1;
      counts[index] = (counts[index] ?? 0) + 1;
      target.sum += value;
      target.count += 1;
    },
    get size() {
      return byText.size;
    },
    evictIdle,
    render(out) {
      const { name, help, type } = definition;
      out.push(`# HELP ${name} ${escapeHelp(help)}`);
      out.push(`# TYPE ${name} ${type}`);
      for (const [labels, entry] of byText) {
        if (type !== "histogram") {
          sampleLine(out, name, labels, entry.value);
          continue;
        }
        const prefix = labels === "" ? "" : `${labels},`;
        let cumulative = 0;
        const counts = entry.counts!;
        for (let i = 0; i < buckets.length; i++) {
          cumulative += counts[i] ?? 0;
          out.push(`${name}_bucket{${prefix}le="${formatSampleValue(buckets[i]!)}"} ${cumulative}`);
        }
        out.push(`${name}_bucket{${prefix}le="+Inf"} ${entry.count}`);
        sampleLine(out, `${name}_sum`, labels, entry.sum);
        sampleLine(out, `${name}_count`, labels, entry.count);
      }
    },
  };
}
