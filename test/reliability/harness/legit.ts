// The legitimate side of every attack: real mesh clients (mTLS with the client pod's identity) whose
// requests must keep succeeding, promptly, while and after the server is attacked.
import { request as httpsRequest } from "node:https";
import path from "node:path";
import { credentials, loadPackageDefinition, type ServiceClientConstructor } from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import { createMeshClientOptions, createMeshGrpcChannel, type MeshGrpcChannel } from "@inmesh/grpc";
import type { IdentityProvider } from "@inmesh/identity";
import { createMesh, type Mesh } from "@inmesh/mesh";
import { ROOT } from "./child.js";

const REQUEST_TIMEOUT_MS = 15_000;

export interface LegitClient {
  readonly name: string;
  /** One legitimate request; rejects unless it got the expected answer. */
  request(): Promise<void>;
}

export interface LatencySummary {
  readonly count: number;
  readonly failures: readonly string[];
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
}

/** The client pod's mesh, in the test process: discovery, mTLS and balancing like any meshed service. */
export async function startClientMesh(env: Record<string, string>): Promise<Mesh> {
  const mesh = createMesh({ env, transportHeader: false, admin: false, metrics: false, tracing: false });
  await mesh.ready({ signal: AbortSignal.timeout(30_000) });
  return mesh;
}

/** GET `url` through `mesh.fetch`: a pooled mTLS connection, as an application's calls are. */
export function meshHttpClient(mesh: Mesh, name: string, url: string, expectedStatus = 200): LegitClient {
  return {
    name,
    async request() {
      const response = await mesh.fetch(url, { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
      const body = await response.text();
      if (response.status !== expectedStatus) {
        // Who answered matters: the client's mesh (l5d-proxy-error) or the server, whose body says why.
        const proxyError = response.headers.get("l5d-proxy-error");
        throw new Error(
          `${name}: GET ${url} answered ${response.status}, expected ${expectedStatus}` +
            (proxyError ? `; l5d-proxy-error: ${proxyError}` : "") +
            (body ? `; body: ${body.slice(0, 300)}` : ""),
        );
      }
    },
  };
}

/**
 * GET over a new mTLS connection each time (node:https, no agent), presenting the client's identity and
 * checking the server's: a newcomer must still get in when attackers hold connections.
 */
export function freshConnectionClient(
  identity: IdentityProvider,
  name: string,
  target: { host: string; port: number; identity: string },
  requestPath = "/",
): LegitClient {
  return {
    name,
    request() {
      return new Promise<void>((resolve, reject) => {
        const req = httpsRequest(
          {
            ...identity.tlsClientOptions(target.identity),
            host: target.host,
            port: target.port,
            path: requestPath,
            method: "GET",
            agent: false,
            timeout: REQUEST_TIMEOUT_MS,
            headers: { host: "target.bookshop.svc.cluster.local" },
          },
          (res) => {
            res.resume();
            res.on("end", () => {
              if (res.statusCode === 200) resolve();
              else reject(new Error(`${name}: answered ${res.statusCode}`));
            });
            res.on("error", reject);
          },
        );
        req.on("timeout", () => req.destroy(new Error(`${name}: no answer within ${REQUEST_TIMEOUT_MS} ms`)));
        req.on("error", reject);
        req.end();
      });
    },
  };
}

type Callback<T> = (error: Error | null, value?: T) => void;
interface AuthorsStub {
  getAuthor(
    request: { id: number },
    options: { deadline: number },
    callback: Callback<{ name: string }>,
  ): void;
  close(): void;
}

/** GetAuthor through a grpc-js client on a mesh channel, as the web example calls authors. */
export function meshGrpcAuthorsClient(
  mesh: Mesh,
  target: string,
): LegitClient & { close(): void; readonly channel: MeshGrpcChannel } {
  if (!mesh.discovery) throw new Error("the client mesh has no discovery");
  const proto = loadPackageDefinition(
    loadSync(path.join(ROOT, "examples/authors/authors.proto"), { defaults: true }),
  ) as unknown as { bookshop: { authors: { v1: { Authors: ServiceClientConstructor } } } };
  const channel = createMeshGrpcChannel({ target, identity: mesh.identity, discovery: mesh.discovery });
  const client = new proto.bookshop.authors.v1.Authors(
    channel.authority,
    credentials.createInsecure(),
    createMeshClientOptions(channel),
  ) as unknown as AuthorsStub;
  return {
    name: "authors GetAuthor",
    channel,
    request() {
      return new Promise<void>((resolve, reject) => {
        client.getAuthor({ id: 1 }, { deadline: Date.now() + REQUEST_TIMEOUT_MS }, (error, author) => {
          if (error) reject(error);
          else if (!author?.name) reject(new Error("GetAuthor: empty answer"));
          else resolve();
        });
      });
    },
    close() {
      client.close();
      channel.close();
    },
  };
}

function percentile(sorted: readonly number[], fraction: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))] as number;
}

export function summarize(latencies: readonly number[], failures: readonly string[]): LatencySummary {
  const sorted = [...latencies].sort((a, b) => a - b);
  return {
    count: latencies.length + failures.length,
    failures,
    p50Ms: percentile(sorted, 0.5),
    p99Ms: percentile(sorted, 0.99),
    maxMs: sorted.at(-1) ?? Number.NaN,
  };
}

/** `count` requests one after another. */
export async function measureSequential(client: LegitClient, count: number): Promise<LatencySummary> {
  const latencies: number[] = [];
  const failures: string[] = [];
  for (let index = 0; index < count; index += 1) {
    const startedAt = performance.now();
    try {
      await client.request();
      latencies.push(performance.now() - startedAt);
    } catch (error) {
      failures.push(String((error as Error)?.message ?? error));
    }
  }
  return summarize(latencies, failures);
}

/** Warm-up (connections, discovery, JIT), then the baseline p50 of `count` requests. */
export async function measureBaseline(client: LegitClient, count = 20): Promise<LatencySummary> {
  await measureSequential(client, 5);
  return measureSequential(client, count);
}

/** The generous bound every attack must keep legitimate latency within (the machine is shared). */
export function latencyBoundMs(baselineP50Ms: number): number {
  return 10 * baselineP50Ms + 200;
}
