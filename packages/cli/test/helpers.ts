import type { CliIo } from "@inmesh/cli";

export interface CapturedIo extends CliIo {
  readonly out: () => string;
  readonly err: () => string;
  readonly controller: AbortController;
}

/** An io that records what a command prints and lets the test play SIGTERM. */
export function captureIo(cwd: string): CapturedIo {
  let out = "";
  let err = "";
  const controller = new AbortController();
  return {
    stdout: (text) => {
      out += text;
    },
    stderr: (text) => {
      err += text;
    },
    cwd,
    signal: controller.signal,
    controller,
    out: () => out,
    err: () => err,
  };
}

export async function eventually(
  check: () => boolean,
  timeoutMs = 10_000,
  what = "condition",
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (check()) return;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`${what} not reached within ${timeoutMs} ms`);
}
