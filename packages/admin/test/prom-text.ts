/**
 * A strict parser for the Prometheus text exposition format 0.0.4, written for the tests so that they
 * fail on anything a real Prometheus would reject or silently misread: bad escapes, duplicate series,
 * TYPE after samples, interleaved families, histogram buckets that are not cumulative.
 */

export interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

export interface MetricFamily {
  readonly name: string;
  type: string;
  help: string | undefined;
  readonly samples: Sample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*/;
const TYPES = new Set(["counter", "gauge", "histogram", "summary", "untyped"]);

function parseValue(text: string, line: number): number {
  if (text === "+Inf") return Number.POSITIVE_INFINITY;
  if (text === "-Inf") return Number.NEGATIVE_INFINITY;
  if (text === "NaN") return Number.NaN;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text))
    throw new Error(`line ${line}: bad value ${text}`);
  return Number(text);
}

function parseLabels(text: string, line: number): { labels: Record<string, string>; rest: string } {
  const labels: Record<string, string> = {};
  let i = 1; // after "{"
  for (;;) {
    if (text[i] === "}") return { labels, rest: text.slice(i + 1) };
    const name = LABEL_NAME.exec(text.slice(i))?.[0];
    if (!name) throw new Error(`line ${line}: bad label name at ${text.slice(i, i + 20)}`);
    if (name in labels) throw new Error(`line ${line}: duplicate label ${name}`);
    i += name.length;
    if (text[i] !== "=" || text[i + 1] !== '"') throw new Error(`line ${line}: expected =" after ${name}`);
    i += 2;
    let value = "";
    for (;;) {
      const c = text[i];
      if (c === undefined) throw new Error(`line ${line}: unterminated label value`);
      if (c === '"') break;
      if (c === "\\") {
        const next = text[i + 1];
        if (next === "\\") value += "\\";
        else if (next === '"') value += '"';
        else if (next === "n") value += "\n";
        else throw new Error(`line ${line}: bad escape \\${next}`);
        i += 2;
        continue;
      }
      value += c;
      i += 1;
    }
    labels[name] = value;
    i += 1;
    if (text[i] === ",") i += 1;
    else if (text[i] !== "}") throw new Error(`line ${line}: expected , or } after label ${name}`);
  }
}

function familyOf(sampleName: string, families: Map<string, MetricFamily>): string {
  for (const suffix of ["_bucket", "_sum", "_count"]) {
    if (sampleName.endsWith(suffix)) {
      const base = sampleName.slice(0, -suffix.length);
      const family = families.get(base);
      if (family && (family.type === "histogram" || family.type === "summary")) return base;
    }
  }
  return sampleName;
}

export function parsePrometheusText(text: string): Map<string, MetricFamily> {
  if (text !== "" && !text.endsWith("\n")) throw new Error("exposition must end with a newline");
  const families = new Map<string, MetricFamily>();
  const seenSeries = new Set<string>();
  const closedFamilies = new Set<string>();
  let current: string | undefined;
  const lines = text.split("\n");
  lines.pop();
  const enter = (name: string, lineNo: number) => {
    if (current === name) return;
    if (closedFamilies.has(name)) throw new Error(`line ${lineNo}: family ${name} is not contiguous`);
    if (current !== undefined) closedFamilies.add(current);
    current = name;
  };
  lines.forEach((raw, index) => {
    const lineNo = index + 1;
    if (raw.trim() === "") return;
    if (raw.startsWith("#")) {
      const match = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) ?(.*)$/.exec(raw);
      if (!match) return; // an ordinary comment
      const [, keyword, name = "", rest = ""] = match;
      enter(name, lineNo);
      const family = families.get(name) ?? { name, type: "untyped", help: undefined, samples: [] };
      families.set(name, family);
      if (keyword === "TYPE") {
        if (!TYPES.has(rest)) throw new Error(`line ${lineNo}: unknown type ${rest}`);
        if (family.samples.length > 0) throw new Error(`line ${lineNo}: TYPE after samples of ${name}`);
        if (family.type !== "untyped") throw new Error(`line ${lineNo}: second TYPE for ${name}`);
        family.type = rest;
      } else {
        if (family.help !== undefined) throw new Error(`line ${lineNo}: second HELP for ${name}`);
        if (/\\[^\\n]/.test(rest.replace(/\\\\/g, ""))) throw new Error(`line ${lineNo}: bad HELP escape`);
        family.help = rest.replace(/\\(\\|n)/g, (_m, c: string) => (c === "n" ? "\n" : "\\"));
      }
      return;
    }
    const name = METRIC_NAME.exec(raw)?.[0];
    if (!name) throw new Error(`line ${lineNo}: bad metric name in ${raw}`);
    let rest = raw.slice(name.length);
    let labels: Record<string, string> = {};
    if (rest.startsWith("{")) ({ labels, rest } = parseLabels(rest, lineNo));
    const parts = rest.trim().split(/ +/);
    if (!rest.startsWith(" ") || parts.length < 1 || parts.length > 2)
      throw new Error(`line ${lineNo}: bad sample ${raw}`);
    const value = parseValue(parts[0] ?? "", lineNo);
    const familyName = familyOf(name, families);
    enter(familyName, lineNo);
    const family = families.get(familyName) ?? {
      name: familyName,
      type: "untyped",
      help: undefined,
      samples: [],
    };
    families.set(familyName, family);
    const key = `${name}{${Object.entries(labels)
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([k, v]) => `${k}=${JSON.stringify(v)}`)
      .join(",")}}`;
    if (seenSeries.has(key)) throw new Error(`line ${lineNo}: duplicate series ${key}`);
    seenSeries.add(key);
    if (family.type === "counter" && (value < 0 || Number.isNaN(value)))
      throw new Error(`line ${lineNo}: negative counter ${raw}`);
    family.samples.push({ name, labels, value });
  });
  for (const family of families.values()) if (family.type === "histogram") checkHistogram(family);
  return families;
}

function checkHistogram(family: MetricFamily): void {
  const groups = new Map<string, { buckets: [number, number][]; sum?: number; count?: number }>();
  for (const sample of family.samples) {
    const { le, ...rest } = sample.labels;
    const key = JSON.stringify(Object.entries(rest).sort(([a], [b]) => (a < b ? -1 : 1)));
    const group = groups.get(key) ?? { buckets: [] };
    groups.set(key, group);
    if (sample.name === `${family.name}_bucket`) {
      if (le === undefined) throw new Error(`${family.name}: bucket without le`);
      group.buckets.push([parseValue(le, 0), sample.value]);
    } else if (sample.name === `${family.name}_sum`) group.sum = sample.value;
    else if (sample.name === `${family.name}_count`) group.count = sample.value;
    else throw new Error(`${family.name}: unexpected sample ${sample.name}`);
  }
  for (const [key, group] of groups) {
    if (group.sum === undefined || group.count === undefined)
      throw new Error(`${family.name}${key}: no _sum/_count`);
    const last = group.buckets.at(-1);
    if (!last || last[0] !== Number.POSITIVE_INFINITY)
      throw new Error(`${family.name}${key}: no +Inf bucket`);
    if (last[1] !== group.count) throw new Error(`${family.name}${key}: +Inf bucket != _count`);
    for (let i = 1; i < group.buckets.length; i++) {
      const [prevLe, prevCount] = group.buckets[i - 1]!;
      const [le, count] = group.buckets[i]!;
      if (!(le > prevLe)) throw new Error(`${family.name}${key}: buckets not ascending`);
      if (count < prevCount) throw new Error(`${family.name}${key}: buckets not cumulative`);
    }
  }
}

/** Samples of `name` whose labels include every pair in `match`. */
export function samplesMatching(
  families: Map<string, MetricFamily>,
  name: string,
  match: Readonly<Record<string, string>> = {},
): Sample[] {
  const family = families.get(name.replace(/_(bucket|sum|count)$/, "")) ?? families.get(name);
  if (!family) return [];
  return family.samples.filter(
    (sample) => sample.name === name && Object.entries(match).every(([k, v]) => sample.labels[k] === v),
  );
}

/** The one sample of `name` with exactly these labels; throws if absent. */
export function value(
  families: Map<string, MetricFamily>,
  name: string,
  labels: Readonly<Record<string, string>>,
): number {
  const found = samplesMatching(families, name, labels).filter(
    (sample) => Object.keys(sample.labels).length === Object.keys(labels).length,
  );
  if (found.length !== 1)
    throw new Error(`expected one ${name}${JSON.stringify(labels)}, found ${found.length}`);
  return found[0]!.value;
}

/** Sum over the samples of `name` whose labels include `match`. */
export function total(
  families: Map<string, MetricFamily>,
  name: string,
  match: Readonly<Record<string, string>> = {},
): number {
  return samplesMatching(families, name, match).reduce((sum, sample) => sum + sample.value, 0);
}
