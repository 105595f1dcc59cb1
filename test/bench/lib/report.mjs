/** The benchmark report: a Markdown table and a hand-written SVG chart (no charting dependency). */

function central(value) {
  return typeof value === "number" ? value : value.median;
}

/** Decimals a figure in `unit` is shown with: enough that a row near its target reads apart from it. */
function digitsFor(value, unit) {
  if (unit === "×" || unit === "% of a core") return 2;
  if (unit === "MiB" || unit === "MB" || (unit === "ms" && Math.abs(value) < 100)) return 1;
  return 0;
}

function format(value, unit) {
  return `${value.toFixed(digitsFor(value, unit))}${unit === "×" ? "×" : ` ${unit}`}`;
}

function formatValue(value, unit) {
  if (typeof value === "number") return format(value, unit);
  const digits = digitsFor(value.median, unit);
  const iqr = `IQR ${value.q1.toFixed(digits)}–${value.q3.toFixed(digits)}, n=${value.n}`;
  return `${format(value.median, unit)} (${iqr})`;
}

export function renderMarkdown({ machine, rows, notes }) {
  const lines = [
    `Latest \`pnpm bench\` (${machine.mode} mode), ${machine.date.slice(0, 16).replace("T", " ")} UTC, on ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGiB} GiB, ${machine.node}, ${machine.os}; CPU pinning ${machine.pinned ? "on (load generator core 0, servers core 1)" : "off"}; load average at start ${machine.loadAverage}.`,
    "",
    "| ID | scenario | result (median, IQR over pairs) | target | met | detail |",
    "|---|---|---|---|---|---|",
  ];
  for (const row of rows) {
    lines.push(
      `| ${row.id} | ${row.what} | ${formatValue(row.value, row.unit)} | ${row.target} | ${row.met ? "yes" : "**no**"} | ${row.detail} |`,
    );
  }
  for (const note of notes ?? []) lines.push("", note);
  return `${lines.join("\n")}\n`;
}

const escapeXml = (text) => String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/**
 * One bar per row with a numeric, non-zero target: the result divided by its target, so the target is
 * the line at 1 for every row (left of it is better for "≤" targets, right of it for "≥" ones).
 */
export function renderSvg({ machine, rows }) {
  const charted = rows
    .map((row) => ({ row, target: Number(/-?[\d.]+/.exec(row.target.replace(/,/g, ""))?.[0]) }))
    .filter(({ target }) => Number.isFinite(target) && target > 0);
  const width = 800;
  const left = 340;
  const barArea = width - left - 120;
  const rowHeight = 26;
  const top = 48;
  const height = top + charted.length * rowHeight + 40;
  // A fixed scale (0 to 2.5 × target) keeps one far-off result from flattening every other bar; bars
  // beyond it are clipped and their label carries the value.
  const maxScale = 2.5;
  const x = (ratio) => left + (Math.min(maxScale, Math.max(0, ratio)) / maxScale) * barArea;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12" role="img">`,
    "<title>inmesh benchmark results, each divided by its target</title>",
    `<rect width="${width}" height="${height}" fill="#fff"/>`,
    `<text x="10" y="18" font-size="14" font-weight="bold">inmesh pnpm bench: result ÷ target (line = target)</text>`,
    `<text x="10" y="34" fill="#555">${escapeXml(`${machine.date.slice(0, 10)}, ${machine.cpu}, ${machine.cores} cores, ${machine.node}, ${machine.mode} mode`)}</text>`,
  ];
  charted.forEach(({ row, target }, index) => {
    const y = top + index * rowHeight;
    const ratio = central(row.value) / target;
    const color = row.met ? "#2e7d32" : "#c62828";
    parts.push(`<text x="10" y="${y + 15}">${escapeXml(`${row.id} ${row.what}`.slice(0, 52))}</text>`);
    parts.push(
      `<rect x="${left}" y="${y + 4}" width="${(x(ratio) - left).toFixed(1)}" height="14" fill="${color}" opacity="0.8"/>`,
    );
    if (typeof row.value !== "number") {
      const y0 = y + 11;
      parts.push(
        `<line x1="${x(row.value.q1 / target).toFixed(1)}" x2="${x(row.value.q3 / target).toFixed(1)}" y1="${y0}" y2="${y0}" stroke="#000" stroke-width="1.5"/>`,
      );
    }
    parts.push(
      `<text x="${(x(ratio) + 6).toFixed(1)}" y="${y + 15}">${escapeXml(`${format(central(row.value), row.unit)} (${row.target})`)}</text>`,
    );
  });
  const lineX = x(1).toFixed(1);
  parts.push(
    `<line x1="${lineX}" x2="${lineX}" y1="${top - 4}" y2="${top + charted.length * rowHeight}" stroke="#333" stroke-dasharray="4 3"/>`,
  );
  parts.push(
    `<text x="${lineX}" y="${top + charted.length * rowHeight + 16}" text-anchor="middle" fill="#333">target</text>`,
  );
  parts.push(
    `<text x="10" y="${height - 8}" fill="#555">green: target met; red: not met; black line: interquartile range over the interleaved pairs</text>`,
  );
  parts.push("</svg>");
  return `${parts.join("\n")}\n`;
}
