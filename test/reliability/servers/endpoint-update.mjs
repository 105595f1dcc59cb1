/**
 * A process that serves legitimate HTTP requests while it receives one big Destination update
 * (big-updates.test.ts), run from the sources through test/bench/policy-ts-loader.mjs:
 *
 *   node --import ./test/bench/policy-ts-loader.mjs test/reliability/servers/endpoint-update.mjs <plane>
 *
 * It prints `{"port":N}`, then answers each stdin line:
 * - `raw`: a raw grpc-js Destination client receives and decodes the update (the baseline);
 * - `mesh`: @inmesh/destination discovery with its two consumers, the HTTP outbound EndpointGroup and
 *   the gRPC mesh channel, takes the update until both hold the endpoints;
 * with `{"done":"raw"|"mesh","endpoints":N,"elapsedMs":…,"maxDelayMs":…}` (its own event-loop delay).
 */
import { createServer } from "node:http";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { credentials } from "@grpc/grpc-js";
import { createDiscovery } from "@inmesh/destination";
import { createMeshGrpcChannel } from "@inmesh/grpc";
import { destination } from "@inmesh/proto";
import { EndpointGroup } from "../../../packages/http/src/outbound/targets.ts";

const plane = process.argv[2];
const AUTHORITY = "web.default.svc.cluster.local:80";
const LARGE = { "grpc.max_receive_message_length": 64 * 1024 * 1024 };

const server = createServer((_request, response) => response.end("ok"));
server.keepAliveTimeout = 60_000;
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));

function raw() {
  const client = new destination.DestinationClient(plane, credentials.createInsecure(), LARGE);
  return new Promise((resolve, reject) => {
    const call = client.get(destination.GetDestination.fromPartial({ path: AUTHORITY }));
    call.on("data", (update) => {
      call.cancel();
      client.close();
      resolve(update.update?.value?.addrs?.length ?? 0);
    });
    call.on("error", (error) => {
      if (error.code !== 1) reject(error);
    });
  });
}

function mesh() {
  const client = new destination.DestinationClient(plane, credentials.createInsecure(), LARGE);
  const discovery = createDiscovery({
    destinationClient: client,
    initialTimeoutMs: 20_000,
    maxMessageBytes: 16 * 1024 * 1024,
  });
  // Neither consumer connects anywhere until a request is sent, and none is.
  const group = new EndpointGroup(AUTHORITY, discovery, {
    identity: undefined,
    connectTimeoutMs: 1000,
    localAddress: undefined,
    keepAliveTimeoutMs: undefined,
    maxConnectionsPerEndpoint: undefined,
    useTransportHeader: true,
    http2PriorKnowledge: true,
  });
  const channel = createMeshGrpcChannel({ target: AUTHORITY, discovery, useRoutes: false });
  const watch = discovery.watchEndpoints(AUTHORITY);
  return new Promise((resolve, reject) => {
    const finish = (result) => {
      watch.close();
      channel.close();
      group.destroy(new Error("done"));
      discovery.close();
      client.close();
      result instanceof Error ? reject(result) : resolve(result);
    };
    // Registered after both consumers: when it runs, they have applied the set.
    watch.onUpdate(() => {
      const counts = [group.endpointCount(), channel.endpointCount()];
      if (counts[0] !== counts[1]) finish(new Error(`consumers disagree: ${counts}`));
      else finish(counts[0]);
    });
    watch.onError((error) => finish(error));
  });
}

const histogram = monitorEventLoopDelay({ resolution: 1 });
process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`);
for await (const line of createInterface({ input: process.stdin })) {
  const mode = line.trim();
  if (mode !== "raw" && mode !== "mesh") continue;
  histogram.reset();
  histogram.enable();
  const began = performance.now();
  try {
    const endpoints = await (mode === "raw" ? raw() : mesh());
    const elapsedMs = performance.now() - began;
    // The last turn's delay is recorded by the next timer tick, after it.
    await new Promise((resolve) => setTimeout(resolve, 5));
    histogram.disable();
    process.stdout.write(
      `${JSON.stringify({ done: mode, endpoints, elapsedMs, maxDelayMs: histogram.max / 1e6 })}\n`,
    );
  } catch (error) {
    process.stdout.write(`${JSON.stringify({ done: mode, error: String(error?.message ?? error) })}\n`);
  }
}
server.close();
