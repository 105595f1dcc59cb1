import { readdirSync, readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";

/**
 * The `process_*` families the proxy exports (the Prometheus client's process collector) and
 * linkerd-viz reads: its pod list asks for `max(process_start_time_seconds{…}) by (pod, namespace)`.
 * Open and max fds come from /proc and are left out where there is none.
 */
export function renderProcessMetrics(): string {
  const lines: string[] = [];
  const gauge = (name: string, help: string, value: number | undefined, type = "gauge") => {
    if (value === undefined || !Number.isFinite(value)) return;
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, `${name} ${formatNumber(value)}`);
  };
  const cpu = process.cpuUsage();
  gauge(
    "process_cpu_seconds_total",
    "Total user and system CPU time spent in seconds.",
    (cpu.user + cpu.system) / 1e6,
    "counter",
  );
  gauge("process_open_fds", "Number of open file descriptors.", openFds());
  gauge("process_max_fds", "Maximum number of open file descriptors.", maxFds());
  gauge("process_resident_memory_bytes", "Resident memory size in bytes.", process.memoryUsage.rss());
  gauge(
    "process_start_time_seconds",
    "Start time of the process since unix epoch in seconds.",
    Math.floor(performance.timeOrigin / 1000),
  );
  lines.push("");
  return lines.join("\n");
}

function formatNumber(value: number): string {
  return Number.isInteger(value) ? String(value) : value.toFixed(6);
}

function openFds(): number | undefined {
  try {
    // The listing itself holds one descriptor open while it reads.
    return readdirSync("/proc/self/fd").length - 1;
  } catch {
    return undefined;
  }
}

function maxFds(): number | undefined {
  try {
    const limits = readFileSync("/proc/self/limits", "utf8");
    const match = /^Max open files\s+(\S+)/m.exec(limits);
    if (!match) return undefined;
    const soft = match[1] as string;
    return soft === "unlimited" ? undefined : Number(soft);
  } catch {
    return undefined;
  }
}
