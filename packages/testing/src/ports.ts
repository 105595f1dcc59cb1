import { randomInt } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:net";

/*
 * A port found free by binding port 0 comes from the kernel's ephemeral range, and is back in that range
 * the moment the probe closes: any connect() on the machine (its source port) or any other listen(0) can
 * take it before the caller listens on it, and the caller fails with EADDRINUSE. That happened in CI, a
 * test worker's outbound connection holding the port the next worker had just been given. So ports come
 * from below the ephemeral range, where the kernel never hands out a port by itself, and each concurrent
 * test worker draws from its own slice of it, so two workers never race for one port either.
 */

const LOWEST_PORT = 10_000;
const SLICE_SIZE = 1_000;
const FALLBACK_EPHEMERAL_LOW = 32_768;

interface PortSlice {
  readonly first: number;
  /** Offset of the next port to try, 0..SLICE_SIZE-1. */
  next: number;
}

let slice: PortSlice | undefined;

function ephemeralLow(): number {
  try {
    const [low] = readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/);
    const parsed = Number(low);
    return Number.isInteger(parsed) && parsed > LOWEST_PORT + SLICE_SIZE ? parsed : FALLBACK_EPHEMERAL_LOW;
  } catch {
    return FALLBACK_EPHEMERAL_LOW;
  }
}

function workerSlice(): PortSlice {
  if (slice) return slice;
  const slices = Math.max(1, Math.floor((ephemeralLow() - LOWEST_PORT) / SLICE_SIZE));
  // Vitest numbers its concurrent workers 1..n; elsewhere (node --test, a script) the pid spreads processes.
  const worker = Number(process.env.VITEST_POOL_ID ?? process.env.VITEST_WORKER_ID);
  const index = (Number.isInteger(worker) && worker > 0 ? worker : process.pid) % slices;
  const first = LOWEST_PORT + index * SLICE_SIZE;
  // A child process inherits its parent's worker id; a random start keeps the two apart within the slice.
  slice = { first, next: randomInt(SLICE_SIZE) };
  return slice;
}

/** False when something holds the port; an address that is not on this machine is an error. */
function bindable(port: number, host: string): Promise<boolean> {
  const server = createServer();
  return new Promise((resolve, reject) => {
    server.once("error", (error: NodeJS.ErrnoException) => {
      if (error.code === "EADDRINUSE" || error.code === "EACCES") resolve(false);
      else reject(error);
    });
    server.listen(port, host, () => server.close(() => resolve(true)));
  });
}

/**
 * A TCP port free on `host`, for a server started later (a manifest's `containerPort`, an address given
 * in the environment). It is outside the kernel's ephemeral range, so no other socket on the machine is
 * given it meanwhile; this process walks its slice in turn, so it hands a port out again only after
 * the slice's other thousand. Given several hosts, the port is free on each (one port every pod binds
 * at its own address, as the transport-header port).
 */
export async function freeLoopbackPort(host: string | readonly string[] = "127.0.0.1"): Promise<number> {
  const hosts = typeof host === "string" ? [host] : host;
  const ports = workerSlice();
  for (let tried = 0; tried < SLICE_SIZE; tried++) {
    const port = ports.first + ports.next;
    ports.next = (ports.next + 1) % SLICE_SIZE;
    if ((await Promise.all(hosts.map((one) => bindable(port, one)))).every(Boolean)) return port;
  }
  throw new Error(`no free port on ${hosts.join(", ")} in ${ports.first}-${ports.first + SLICE_SIZE - 1}`);
}
