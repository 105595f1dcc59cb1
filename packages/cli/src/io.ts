/** Where a command writes and what stops it; tests pass their own. */
export interface CliIo {
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
  readonly cwd: string;
  /** The process environment (commands that read LINKERD2_PROXY_* take it from here). @default process.env */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Aborts on SIGINT/SIGTERM in the real process; long-running commands return when it fires. */
  readonly signal: AbortSignal;
}

/** A usage mistake: exit code 2 and the command's usage line. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

export interface Command {
  readonly name: string;
  readonly summary: string;
  readonly usage: string;
  /** Resolves to the process exit code. */
  run(argv: readonly string[], io: CliIo): Promise<number>;
}
