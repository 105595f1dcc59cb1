// Scale of the runs and the figures each test prints: CI runs a scaled-down version of reliability.md's
// figures (seconds, hundreds of connections); INMESH_LONG=1 runs them as written (60 s, 1,000 connections).

/** Full figures from reliability.md instead of the CI scale. */
export const LONG = process.env.INMESH_LONG === "1";

/** Fuzzer sequences: INMESH_FUZZ_RUNS overrides the default. */
export function fuzzRuns(fallback: number): number {
  const text = process.env.INMESH_FUZZ_RUNS;
  if (text === undefined || text === "") return fallback;
  const runs = Number(text);
  if (!Number.isInteger(runs) || runs < 1)
    throw new Error(`INMESH_FUZZ_RUNS must be a positive integer, got ${text}`);
  return runs;
}

/** `short` in CI, `long` with INMESH_LONG=1. */
export function scaled<T>(short: T, long: T): T {
  return LONG ? long : short;
}

/** A timeout for a test: its expected duration plus room for start-up and a loaded machine. */
export function testTimeoutMs(expectedMs: number): number {
  return expectedMs * 2 + 60_000;
}

export type FigureValue = string | number | boolean | undefined;
export type FigureRow = Record<string, FigureValue>;

function format(value: FigureValue): string {
  if (value === undefined) return "–";
  if (typeof value === "number") {
    if (!Number.isFinite(value)) return String(value);
    if (Number.isInteger(value)) return String(value);
    return value >= 100 ? value.toFixed(0) : value.toFixed(value >= 10 ? 1 : 2);
  }
  return String(value);
}

export const mib = (bytes: number): number => bytes / (1024 * 1024);

/** Prints `rows` as one aligned table under `title` (stdout, so it shows with the test's output). */
export function printFigures(title: string, rows: readonly FigureRow[]): void {
  const columns = [...new Set(rows.flatMap((row) => Object.keys(row)))];
  const cells = rows.map((row) => columns.map((column) => format(row[column])));
  const widths = columns.map((column, index) =>
    Math.max(column.length, ...cells.map((line) => (line[index] as string).length)),
  );
  const line = (values: readonly string[]) =>
    values
      .map((value, index) => value.padEnd(widths[index] as number))
      .join("  ")
      .trimEnd();
  const text = [
    `── ${title} (${LONG ? "INMESH_LONG=1: figures as written" : "CI scale"})`,
    line(columns),
    ...cells.map(line),
  ].join("\n");
  process.stdout.write(`${text}\n`);
}
