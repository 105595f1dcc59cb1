// Legitimate load from a process of its own (servers/load.mjs): at hundreds of requests a second the
// test process, which also runs the attacker, would otherwise measure its own event loop.
import { spawn } from "node:child_process";
import path from "node:path";
import { ROOT } from "./child.js";
import type { LatencySummary } from "./legit.js";

const READY_TIMEOUT_MS = 60_000;

interface ChildSummary {
  readonly count: number;
  readonly failureCount: number;
  readonly failures: readonly string[];
  readonly p50Ms: number | null;
  readonly p99Ms: number | null;
  readonly maxMs: number | null;
}

export interface LoadChild {
  /** Sequential requests from the load process before the attack: the baseline its load compares with. */
  readonly baseline: LatencySummary;
  /**
   * Starts the open loop; resolves with its summary once the duration has passed (or `end()`). A load
   * process that fails resolves too, with no requests and its error as the one failure: the caller reports
   * it beside its other figures.
   */
  run(): Promise<LatencySummary>;
  /** Ends the open loop now (required with a duration of 0). */
  end(): void;
  stop(): void;
}

export type LoadSpec =
  | { readonly kind: "http"; readonly url: string }
  | { readonly kind: "grpc"; readonly target: string };

function toSummary(summary: ChildSummary): LatencySummary {
  return {
    count: summary.count,
    // The load process reports the first few messages and the total.
    failures: Array.from({ length: summary.failureCount }, (_, index) => summary.failures[index] ?? "(more)"),
    p50Ms: summary.p50Ms ?? Number.NaN,
    p99Ms: summary.p99Ms ?? Number.NaN,
    maxMs: summary.maxMs ?? Number.NaN,
  };
}

export async function startLoadChild(
  clientEnv: Record<string, string>,
  spec: LoadSpec,
  rps: number,
  durationMs: number,
): Promise<LoadChild> {
  const child = spawn(process.execPath, [path.join(ROOT, "test/reliability/servers/load.mjs")], {
    env: {
      ...(process.env.PATH ? { PATH: process.env.PATH } : {}),
      LOAD_CLIENT_ENV: JSON.stringify(clientEnv),
      LOAD_KIND: spec.kind,
      ...(spec.kind === "http" ? { LOAD_URL: spec.url } : { LOAD_TARGET: spec.target }),
      LOAD_RPS: String(rps),
      LOAD_DURATION_MS: String(durationMs),
    },
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
    stderr = (stderr + chunk).slice(-8192);
  });
  const lines: ((message: { event: string } & Record<string, unknown>) => void)[] = [];
  let buffered = "";
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
    buffered += chunk;
    for (let newline = buffered.indexOf("\n"); newline >= 0; newline = buffered.indexOf("\n")) {
      const line = buffered.slice(0, newline);
      buffered = buffered.slice(newline + 1);
      try {
        const message = JSON.parse(line);
        for (const listener of lines) listener(message);
      } catch {
        // Not ours.
      }
    }
  });
  const waitFor = (event: string, limitMs: number) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`load process: no ${event} within ${limitMs} ms\n${stderr}`)),
        limitMs,
      );
      lines.push((message) => {
        if (message.event === event) {
          clearTimeout(timer);
          resolve(message);
        }
      });
      child.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`load process exited (${code}) before ${event}\n${stderr}`));
      });
    });
  const ready = await waitFor("ready", READY_TIMEOUT_MS);
  return {
    baseline: toSummary(ready.baseline as ChildSummary),
    async run() {
      const done = waitFor("done", (durationMs || 600_000) + 60_000);
      child.stdin.write("start\n");
      try {
        return toSummary((await done) as unknown as ChildSummary);
      } catch (error) {
        return {
          count: 0,
          failures: [(error as Error).message],
          p50Ms: Number.NaN,
          p99Ms: Number.NaN,
          maxMs: Number.NaN,
        };
      }
    },
    end() {
      if (child.exitCode === null) child.stdin.write("stop\n");
    },
    stop() {
      if (child.exitCode === null) child.kill("SIGKILL");
    },
  };
}
