// Process plumbing shared by the example services (bundled into each one's dist by tsup).
import type { Mesh } from "@inmesh/mesh";

/** Longest a service takes to drain on SIGTERM before it exits anyway. */
const SHUTDOWN_LIMIT_MS = 5_000;

function firstOf(list: string | undefined): string | undefined {
  const first = list?.split(",")[0]?.trim();
  return first === "" ? undefined : first;
}

/**
 * Where the service listens: `HOST`/`PORT`, else the pod's IP and first inbound port from the variables
 * the control plane wrote (`LINKERD2_PROXY_INBOUND_IPS`, `LINKERD2_PROXY_INBOUND_PORTS`).
 */
export function listenAddress(env: NodeJS.ProcessEnv = process.env): { host: string; port: number } {
  const host = env.HOST ?? firstOf(env.LINKERD2_PROXY_INBOUND_IPS) ?? "127.0.0.1";
  const portText = env.PORT ?? firstOf(env.LINKERD2_PROXY_INBOUND_PORTS);
  const port = Number(portText);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new Error(
      `set PORT (or LINKERD2_PROXY_INBOUND_PORTS) to the port to serve, got ${String(portText)}`,
    );
  }
  return { host, port };
}

/** `POD_NAME`, else the pod named by the policy workload variable (`{"ns":…,"pod":…}`), else `fallback`. */
export function podName(fallback: string, env: NodeJS.ProcessEnv = process.env): string {
  if (env.POD_NAME) return env.POD_NAME;
  try {
    const workload = JSON.parse(env.LINKERD2_PROXY_POLICY_WORKLOAD ?? "") as { pod?: unknown };
    if (typeof workload.pod === "string" && workload.pod !== "") return workload.pod;
  } catch {
    // Not set, or not JSON: use the fallback.
  }
  return fallback;
}

/** One JSON line on stdout once the service serves: how the demo knows it is up, and who it is. */
export function announceReady(info: {
  service: string;
  pod: string;
  host: string;
  port: number;
  mesh: Mesh;
}) {
  const identity = info.mesh.identity.state();
  const line = {
    event: "ready",
    service: info.service,
    pod: info.pod,
    pid: process.pid,
    address: `${info.host}:${info.port}`,
    identity: identity.localName,
    expiresAt: identity.notAfterMs === undefined ? undefined : new Date(identity.notAfterMs).toISOString(),
  };
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

/** Runs `close` once on SIGTERM or SIGINT (or when stdin closes, with STOP_WHEN_STDIN_CLOSES=true), then exits (0 when it finished in time, 1 otherwise). */
export function onShutdown(close: () => Promise<void>): void {
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    const limit = setTimeout(() => process.exit(1), SHUTDOWN_LIMIT_MS);
    limit.unref();
    close().then(
      () => process.exit(0),
      (error: unknown) => {
        process.stderr.write(`shutdown failed: ${String(error)}\n`);
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  // A supervisor (the demo) can tie our life to its own: when its end of our stdin closes, we stop.
  if (process.env.STOP_WHEN_STDIN_CLOSES === "true") {
    process.stdin.on("end", stop);
    process.stdin.on("error", stop);
    process.stdin.resume();
  }
}
