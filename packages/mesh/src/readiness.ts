import { type ControlPlaneAddress, MeshError, MeshErrorCode } from "@inmesh/core";
import type { IdentityProvider } from "@inmesh/identity";
import type { PolicyWatcher } from "@inmesh/policy";

/** A control-plane dependency `ready()` is still waiting for, and why. */
export interface MissingDependency {
  /** `identity`, or `policy for port N`. */
  readonly dependency: string;
  /** `host:port` of the service it comes from, when known. */
  readonly address: string | undefined;
  /** The variable that configures that address. */
  readonly variable: string;
  /** The last error talking to it; undefined while it simply has not answered yet. */
  readonly error: string | undefined;
}

/** Where readiness warnings go. `false` silences them. @default process.emitWarning (stderr) */
export type MeshWarningHandler = ((warning: MeshError) => void) | false;

export const defaultWarningHandler = (warning: MeshError): void => {
  process.emitWarning(warning.message, { type: "MeshWarning", code: warning.code });
};

export interface ReadinessSources {
  readonly identity: IdentityProvider;
  /** Asked only when a message names it: resolving it parses the identity configuration again. */
  readonly identityAddress: () => ControlPlaneAddress | undefined;
  readonly watcher: PolicyWatcher | undefined;
  readonly policyAddress: ControlPlaneAddress | undefined;
}

/** How often a waiting `ready()` looks for new failures to report. */
const CHECK_INTERVAL_MS = 250;

export function formatAddress(address: ControlPlaneAddress | undefined): string | undefined {
  if (!address) return undefined;
  return address.host.includes(":") ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

/** What is missing right now, in the order the mesh needs it (identity first: the rest waits on it). */
export function missingDependencies(sources: ReadinessSources): MissingDependency[] {
  const missing: MissingDependency[] = [];
  const identityState = sources.identity.state();
  if (!identityState.ready) {
    missing.push({
      dependency: "identity",
      address: formatAddress(sources.identityAddress()),
      variable: "LINKERD2_PROXY_IDENTITY_SVC_ADDR",
      error: identityState.lastError?.message,
    });
  }
  for (const port of sources.watcher?.state() ?? []) {
    if (port.loaded) continue;
    missing.push({
      dependency: `policy for port ${port.port}`,
      address: formatAddress(sources.policyAddress),
      variable: "LINKERD2_PROXY_POLICY_SVC_ADDR",
      error: port.lastError,
    });
  }
  return missing;
}

function describe(missing: MissingDependency): string {
  const where = missing.address ? ` from ${missing.address} (${missing.variable})` : ` (${missing.variable})`;
  return `${missing.dependency}${where}${missing.error ? `: ${missing.error}` : ": no answer yet"}`;
}

/**
 * The mesh's control-plane wait, made visible: keeps the process alive while waiting (the gRPC channels
 * and retry timers underneath are unref'd, so a bare pending promise would let Node exit silently), warns
 * once per failing dependency with its address and error (again only after it recovered and failed
 * anew), and on abort rejects with a MeshError that lists what is missing and where.
 */
export class ReadinessReporter {
  private readonly warned = new Set<string>();

  constructor(
    private readonly sources: ReadinessSources,
    private readonly warn: MeshWarningHandler,
  ) {}

  /** Reports newly failing dependencies; forgets those that stopped failing. */
  check(): void {
    const failing = new Set<string>();
    for (const missing of missingDependencies(this.sources)) {
      if (missing.error === undefined) continue;
      failing.add(missing.dependency);
      if (this.warned.has(missing.dependency)) continue;
      this.warned.add(missing.dependency);
      if (this.warn === false) continue;
      const warning = new MeshError(
        MeshErrorCode.CP_UNAVAILABLE,
        `mesh not ready: waiting for ${describe(missing)}; retrying`,
        { details: { ...missing } },
      );
      try {
        this.warn(warning);
      } catch {
        // A throwing warning handler must not break readiness.
      }
    }
    for (const dependency of this.warned) if (!failing.has(dependency)) this.warned.delete(dependency);
  }

  /** Runs `wait` with a ref'd handle that also checks for failures, and explains an abort. */
  async track(wait: () => Promise<void>, signal: AbortSignal): Promise<void> {
    const keepAlive = setInterval(() => this.check(), CHECK_INTERVAL_MS);
    try {
      await wait();
    } catch (error) {
      if (!signal.aborted) throw error;
      throw this.notReadyError(signal.reason ?? error);
    } finally {
      clearInterval(keepAlive);
    }
  }

  notReadyError(reason: unknown): MeshError {
    const cause = MeshError.from(reason);
    if (cause.code === MeshErrorCode.CLOSED) return cause;
    const missing = missingDependencies(this.sources);
    if (missing.length === 0) return cause;
    const failing = missing.some((entry) => entry.error !== undefined);
    return new MeshError(
      failing ? MeshErrorCode.CP_UNAVAILABLE : cause.code,
      `mesh not ready (${cause.message}): missing ${missing.map(describe).join("; ")}`,
      { cause: reason, details: { missing } },
    );
  }
}
