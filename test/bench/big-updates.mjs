/**
 * Big control-plane updates (issue 11): the longest event-loop stall while one Destination.Get update of
 * ENDPOINTS addresses is received and applied by @inmesh/destination (decode, convert, cap, endpoint set,
 * balancer), against a raw grpc-js client that only decodes the same stream, measured in the same run.
 *
 *   node --import ./test/bench/policy-ts-loader.mjs test/bench/big-updates.mjs [endpoints=50000]
 *
 * The controller double is a real grpc-js server on 127.0.0.1 built from @inmesh/proto. A message over
 * the endpoint cap is refused (the watch keeps its last state) — the figure printed then is what
 * refusing costs; the bench also applies a message at the cap, which is the largest accepted work.
 */
import { monitorEventLoopDelay } from "node:perf_hooks";
import { credentials, Server, ServerCredentials } from "@grpc/grpc-js";
import { createBalancer, createDiscovery, LIMITS } from "@inmesh/destination";
import { destination } from "@inmesh/proto";

const requested = Number(process.argv[2] ?? 50_000);
const ROUNDS = 5;

function addUpdate(count) {
  const addrs = [];
  for (let i = 0; i < count; i += 1) {
    const ip = (10 << 24) | i;
    addrs.push({
      addr: { ip: { ip: { $case: "ipv4", value: ip >>> 0 } }, port: 8080 },
      weight: 10_000,
      tlsIdentity: {
        strategy: {
          $case: "dnsLikeIdentity",
          value: { name: "web.default.serviceaccount.identity.linkerd.cluster.local" },
        },
      },
    });
  }
  return destination.Update.fromPartial({
    update: {
      $case: "add",
      value: { addrs, metricLabels: { namespace: "default", service: "web" } },
    },
  });
}

async function startPlane(update) {
  const server = new Server({ "grpc.max_send_message_length": 64 * 1024 * 1024 });
  server.addService(destination.DestinationService, {
    get(call) {
      call.write(update);
    },
    getProfile(call) {
      call.end();
    },
  });
  const port = await new Promise((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, bound) =>
      error ? reject(error) : resolve(bound),
    ),
  );
  return { address: `127.0.0.1:${port}`, close: () => server.forceShutdown() };
}

/** Max event-loop delay (ms) from `start()` until the promise it returns settles. */
async function maxDelay(start) {
  const histogram = monitorEventLoopDelay({ resolution: 1 });
  await new Promise((resolve) => setTimeout(resolve, 20));
  histogram.enable();
  const began = performance.now();
  await start();
  const elapsed = performance.now() - began;
  await new Promise((resolve) => setTimeout(resolve, 5));
  histogram.disable();
  return { maxMs: histogram.max / 1e6, elapsedMs: elapsed };
}

function raw(address) {
  const client = new destination.DestinationClient(address, credentials.createInsecure(), {
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
  });
  return new Promise((resolve, reject) => {
    const call = client.get(
      destination.GetDestination.fromPartial({ path: "web.default.svc.cluster.local:80" }),
    );
    call.on("data", (update) => {
      const count = update.update?.value?.addrs?.length ?? 0;
      call.cancel();
      client.close();
      resolve(count);
    });
    call.on("error", (error) => {
      if (error.code !== 1) reject(error);
    });
  });
}

function meshed(address, timeoutMs = 10_000) {
  const client = new destination.DestinationClient(address, credentials.createInsecure());
  const discovery = createDiscovery({ destinationClient: client, initialTimeoutMs: timeoutMs });
  const balancer = createBalancer();
  const watch = discovery.watchEndpoints("web.default.svc.cluster.local:80");
  return new Promise((resolve) => {
    const done = (result) => {
      watch.close();
      discovery.close();
      client.close();
      resolve(result);
    };
    watch.onUpdate((set) => {
      balancer.update(set);
      done({ endpoints: set.endpoints.length });
    });
    watch.onError((error) => done({ error: `${error.code}: ${error.message}` }));
  });
}

async function compare(count) {
  const update = addUpdate(count);
  const bytes = destination.Update.encode(update).finish().length;
  const plane = await startPlane(update);
  try {
    // Warm both paths once so JIT compilation is not charged to either side.
    await raw(plane.address);
    await meshed(plane.address);
    const rawMax = [];
    const meshMax = [];
    let outcome;
    for (let round = 0; round < ROUNDS; round += 1) {
      rawMax.push((await maxDelay(() => raw(plane.address))).maxMs);
      meshMax.push(
        (
          await maxDelay(async () => {
            outcome = await meshed(plane.address, 2_000);
          })
        ).maxMs,
      );
    }
    const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
    const r = median(rawMax);
    const m = median(meshMax);
    console.log(
      `${count} endpoints (${(bytes / 1024 / 1024).toFixed(2)} MiB): max event-loop delay, median of ${ROUNDS}: ` +
        `raw grpc-js ${r.toFixed(1)} ms, inmesh ${m.toFixed(1)} ms, ratio ${(m / Math.max(r, 1)).toFixed(2)} ` +
        `(inmesh outcome: ${outcome?.error ?? `${outcome?.endpoints} endpoints applied`})`,
    );
  } finally {
    plane.close();
  }
}

console.log(`big updates (node ${process.version}); endpoint cap per set: ${LIMITS.maxEndpoints}`);
await compare(requested);
if (requested > LIMITS.maxEndpoints) await compare(LIMITS.maxEndpoints);
process.exit(0);
