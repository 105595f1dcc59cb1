// The attacked server runs in a child process (built dist, as in production), so an attack that kills
// it kills only the child, and the test can tell: alive or not, CPU and RSS read from /proc.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = fileURLToPath(new URL("../../..", import.meta.url));
/**
 * INMESH_MEMCHECK=1 runs every child under valgrind's memcheck, and the first invalid read, write or
 * free ends it with MEMCHECK_EXIT_CODE: an attack that corrupts native memory (node 20's nghttp2
 * binding, see closeOnlyAfterGoaway in @inmesh/core) then fails the liveness check even where the
 * process would have lived on for a while. Uninitialised-value reports are off: V8's own code raises
 * some on Node 22. About 20× slower; not in CI.
 */
const MEMCHECK = process.env.INMESH_MEMCHECK === "1";
const MEMCHECK_EXIT_CODE = 99;
const MEMCHECK_LOG = path.join(tmpdir(), "inmesh-memcheck-%p.log");
/** How much longer a test's and a hook's timeouts must be for children under memcheck. */
export const CHILD_SLOWDOWN = MEMCHECK ? 10 : 1;
const READY_TIMEOUT_MS = 30_000 * CHILD_SLOWDOWN;
const STOP_TIMEOUT_MS = 8_000;
/** Linux's USER_HZ: /proc/<pid>/stat counts CPU time in 1/100 s on every platform Node supports. */
const CLOCK_TICKS_PER_SECOND = 100;
const MAX_CAPTURED_OUTPUT = 64 * 1024;

export interface ReadyLine {
  readonly event: "ready";
  readonly service: string;
  readonly pod: string;
  readonly pid: number;
  /** host:port the service serves. */
  readonly address: string;
  readonly identity: string;
  /** host:port of its admin server (/metrics), when it has one. */
  readonly admin?: string;
}

export interface ProcessSample {
  readonly atMs: number;
  /** utime + stime, in seconds. */
  readonly cpuSeconds: number;
  readonly rssBytes: number;
  readonly openFds: number;
  /**
   * Time the event-loop thread was ready to run but waited for a CPU (/proc/<pid>/schedstat), in
   * seconds: other processes taking the cores, not the process's own work. NaN without schedstat.
   */
  readonly runQueueWaitSeconds: number;
}

export interface MemoryAfterGc {
  readonly rss: number;
  readonly heapUsed: number;
  /** V8's heap as committed: RSS minus this is native memory (sockets, TLS, nghttp2, buffers). */
  readonly heapTotal?: number;
}

export interface ServiceChild {
  readonly name: string;
  readonly pid: number;
  readonly ready: ReadyLine;
  readonly host: string;
  readonly port: number;
  /** Still running (no exit seen and the pid answers signal 0). */
  alive(): boolean;
  /** How it exited, if it did, with the tail of its stderr: what a failed assertion should show. */
  describeExit(): string;
  stderr(): string;
  sample(): ProcessSample;
  /**
   * `process.memoryUsage()` in the child right after a collection (services started with
   * `memoryProbe`); undefined otherwise.
   */
  memoryAfterGc(): Promise<MemoryAfterGc | undefined>;
  stop(): Promise<void>;
}

/** Files an attack run needs from `pnpm run build`; a clear error when one is missing. */
export function assertBuilt(files: readonly string[]): void {
  const missing = files.filter((file) => !existsSync(path.join(ROOT, file)));
  if (missing.length > 0) {
    throw new Error(`run \`pnpm run build\` before the reliability tests: missing ${missing.join(", ")}`);
  }
}

export function sampleProcess(pid: number): ProcessSample {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // Fields after the command name (which may hold spaces and parentheses) start after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the command name.
  const ticks = Number(fields[11]) + Number(fields[12]);
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const rssKiB = Number(/^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1] ?? Number.NaN);
  let openFds = Number.NaN;
  try {
    openFds = readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    // Not readable (another user): the figure stays NaN.
  }
  return {
    atMs: performance.now(),
    cpuSeconds: ticks / CLOCK_TICKS_PER_SECOND,
    rssBytes: rssKiB * 1024,
    openFds,
    runQueueWaitSeconds: runQueueWait(pid),
  };
}

/** Run-queue wait of the main (event-loop) thread, in seconds (schedstat's second field, in ns). */
function runQueueWait(pid: number): number {
  try {
    return Number(readFileSync(`/proc/${pid}/schedstat`, "utf8").split(" ")[1]) / 1e9;
  } catch {
    return Number.NaN;
  }
}

/**
 * Of the wall time between two samples, the share the child's event loop spent ready to run but
 * waiting for a CPU: near 0 on a quiet machine. A latency figure taken while it is high measures the
 * machine's other load as much as the server.
 */
export function runQueueWaitShare(before: ProcessSample, after: ProcessSample): number {
  const seconds = (after.atMs - before.atMs) / 1000;
  return seconds > 0 ? (after.runQueueWaitSeconds - before.runQueueWaitSeconds) / seconds : 0;
}

/** CPU used between two samples, in cores (1 = one core busy the whole time). */
export function cpuCores(before: ProcessSample, after: ProcessSample): number {
  const seconds = (after.atMs - before.atMs) / 1000;
  return seconds > 0 ? (after.cpuSeconds - before.cpuSeconds) / seconds : 0;
}

/** Starts `script` (relative to the repository) with `env` and waits for its JSON ready line. */
export async function startServiceChild(
  name: string,
  script: string,
  env: Record<string, string>,
  options: { memoryProbe?: boolean } = {},
): Promise<ServiceChild> {
  const memoryProbe = options.memoryProbe === true;
  const nodeArgs = [
    // Answers "gc" on stdin with memory after a collection: see harness/memory-probe.mjs.
    ...(memoryProbe
      ? ["--expose-gc", "--import", path.join(ROOT, "test/reliability/harness/memory-probe.mjs")]
      : []),
    // For looking inside an attacked child, e.g. INMESH_CHILD_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof".
    ...(process.env.INMESH_CHILD_NODE_ARGS?.split(" ").filter((arg) => arg !== "") ?? []),
  ];
  const command = MEMCHECK
    ? [
        "valgrind",
        "--undef-value-errors=no",
        "--exit-on-first-error=yes",
        `--error-exitcode=${MEMCHECK_EXIT_CODE}`,
        `--log-file=${MEMCHECK_LOG}`,
        process.execPath,
      ]
    : [process.execPath];
  const child: ChildProcess = spawn(
    command[0] as string,
    [...command.slice(1), ...nodeArgs, path.join(ROOT, script)],
    {
      env: {
        ...env,
        ...(process.env.PATH ? { PATH: process.env.PATH } : {}),
        // The child dies with its end of stdin: no service outlives a crashed test run.
        STOP_WHEN_STDIN_CLOSES: "true",
      },
      stdio: ["pipe", "pipe", "pipe"],
    },
  );
  let stderr = "";
  let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
    stderr = (stderr + chunk).slice(-MAX_CAPTURED_OUTPUT);
  });
  const exited = new Promise<void>((resolve) =>
    child.once("exit", (code, signal) => {
      exit = { code, signal };
      resolve();
    }),
  );
  const memoryWaiters: ((memory: MemoryAfterGc) => void)[] = [];
  const ready = await new Promise<ReadyLine>((resolve, reject) => {
    let buffered = "";
    const timer = setTimeout(
      () => reject(new Error(`${name} was not ready within ${READY_TIMEOUT_MS} ms\n${stderr}`)),
      READY_TIMEOUT_MS,
    );
    child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
      buffered = (buffered + chunk).slice(-MAX_CAPTURED_OUTPUT);
      for (let newline = buffered.indexOf("\n"); newline >= 0; newline = buffered.indexOf("\n")) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        try {
          const message = JSON.parse(line) as ReadyLine | ({ event: "memory" } & MemoryAfterGc);
          if (message?.event === "ready") {
            clearTimeout(timer);
            resolve(message);
          } else if (message?.event === "memory") {
            for (const wake of memoryWaiters.splice(0)) wake(message);
          }
        } catch {
          // Not a JSON line: application output.
        }
      }
    });
    void exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${exit?.signal ?? exit?.code}) before it was ready\n${stderr}`));
    });
  });
  const memoryAfterGc = (): Promise<MemoryAfterGc | undefined> => {
    if (!memoryProbe || !alive()) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(undefined), 10_000);
      memoryWaiters.push((memory) => {
        clearTimeout(timer);
        resolve(memory);
      });
      child.stdin?.write("gc\n");
    });
  };
  const separator = ready.address.lastIndexOf(":");
  const pid = child.pid ?? ready.pid;
  const alive = () => {
    if (exit !== undefined) return false;
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  const describeExit = () =>
    exit === undefined
      ? `${name} (pid ${pid}) is running`
      : exit.code === MEMCHECK_EXIT_CODE && MEMCHECK
        ? `${name} (pid ${pid}): memcheck found a memory error, see ${MEMCHECK_LOG.replace("%p", String(pid))}`
        : `${name} (pid ${pid}) exited with ${exit.signal ?? `code ${exit.code}`}; stderr:\n${stderr.slice(-4000)}`;
  return {
    name,
    pid,
    ready,
    host: ready.address.slice(0, separator).replace(/^\[|\]$/g, ""),
    port: Number(ready.address.slice(separator + 1)),
    alive,
    describeExit,
    stderr: () => stderr,
    sample() {
      if (!alive()) throw new Error(`no figures: ${describeExit()}`);
      return sampleProcess(pid);
    },
    memoryAfterGc,
    async stop() {
      if (exit !== undefined) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), STOP_TIMEOUT_MS);
      await exited;
      clearTimeout(timer);
    },
  };
}
