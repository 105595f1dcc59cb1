/**
 * Big control-plane updates (issue 11): the longest event-loop stall while one big update is received and
 * applied, against a raw grpc-js client that only decodes the same stream, measured side by side in the
 * same run (ratio = inmesh / raw).
 * - Destination.Get: one `add` of ENDPOINTS addresses through @inmesh/destination (decode, convert, the
 *   LIMITS.maxEndpoints cap, endpoint set, balancer); then an add at the cap.
 * - InboundServerPolicies.WatchPort: a ~3 MB Server with 14,000 regex routes through the policy watcher
 *   (refused whole, over POLICY_LIMITS, the last policy stays); then one at the regex cap with patterns
 *   not seen before (compiled cold on RE2).
 *
 * Endpoint updates are applied in slices of at most `updateSliceMs` a turn, so the figures are the longest
 * turn (max) and the 99th percentile of event-loop delay while the update is received and applied.
 *
 *   node --import ./test/bench/policy-ts-loader.mjs test/bench/big-updates.mjs [endpoints=50000] [all|endpoints|policy]
 *
 * The controller doubles are real grpc-js servers on 127.0.0.1 built from @inmesh/proto.
 */
import { monitorEventLoopDelay } from "node:perf_hooks";
import { credentials, Server, ServerCredentials } from "@grpc/grpc-js";
import { createBalancer, createDiscovery, LIMITS } from "@inmesh/destination";
import { createPolicyWatcher, POLICY_LIMITS } from "@inmesh/policy";
import { destination, inbound } from "@inmesh/proto";

const requested = Number(process.argv[2] ?? 50_000);
const only = process.argv[3] ?? "all";
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

/**
 * CPU time of the longest event-loop turn, sampled by an immediate that re-arms itself: unlike the
 * wall-clock delay, it does not grow when other processes take the CPU (a loaded, shared machine).
 */
function turnProbe() {
  let last = process.cpuUsage();
  let longest = 0;
  let running = true;
  const tick = () => {
    const now = process.cpuUsage();
    longest = Math.max(longest, (now.user - last.user + now.system - last.system) / 1000);
    last = now;
    if (running) setImmediate(tick);
  };
  setImmediate(tick);
  return () => {
    running = false;
    return longest;
  };
}

/** Max and p99 event-loop delay (ms) from `start()` until the promise it returns settles. */
async function maxDelay(start, probeTurns = false) {
  const histogram = monitorEventLoopDelay({ resolution: 1 });
  await new Promise((resolve) => setTimeout(resolve, 20));
  histogram.enable();
  const stopProbe = probeTurns ? turnProbe() : undefined;
  const began = performance.now();
  await start();
  const elapsed = performance.now() - began;
  await new Promise((resolve) => setTimeout(resolve, 5));
  histogram.disable();
  const turnCpuMs = stopProbe?.();
  return { maxMs: histogram.max / 1e6, p99Ms: histogram.percentile(99) / 1e6, elapsedMs: elapsed, turnCpuMs };
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
      done({ endpoints: set.size ?? set.endpoints.length });
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
    const rawRuns = [];
    const meshRuns = [];
    let outcome;
    for (let round = 0; round < ROUNDS; round += 1) {
      rawRuns.push(await maxDelay(() => raw(plane.address)));
      meshRuns.push(
        await maxDelay(async () => {
          outcome = await meshed(plane.address, 10_000);
        }),
      );
    }
    // The longest turn in CPU time, in separate rounds (the probe keeps the loop busy).
    for (let round = 0; round < ROUNDS; round += 1) {
      rawRuns[round].turnCpuMs = (await maxDelay(() => raw(plane.address), true)).turnCpuMs;
      meshRuns[round].turnCpuMs = (
        await maxDelay(async () => {
          outcome = await meshed(plane.address, 10_000);
        }, true)
      ).turnCpuMs;
    }
    const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
    const pick = (runs, key) => median(runs.map((run) => run[key]));
    const r = pick(rawRuns, "maxMs");
    const m = pick(meshRuns, "maxMs");
    console.log(
      `${count} endpoints (${(bytes / 1024 / 1024).toFixed(2)} MiB), event-loop delay, median of ${ROUNDS}: ` +
        `max raw grpc-js ${r.toFixed(1)} ms, inmesh ${m.toFixed(1)} ms, ratio ${(m / Math.max(r, 1)).toFixed(2)}; ` +
        `p99 raw ${pick(rawRuns, "p99Ms").toFixed(1)} ms, inmesh ${pick(meshRuns, "p99Ms").toFixed(1)} ms; ` +
        `longest turn (CPU) raw ${pick(rawRuns, "turnCpuMs").toFixed(1)} ms, inmesh ${pick(meshRuns, "turnCpuMs").toFixed(1)} ms; ` +
        `until applied raw ${pick(rawRuns, "elapsedMs").toFixed(0)} ms, inmesh ${pick(meshRuns, "elapsedMs").toFixed(0)} ms ` +
        `(inmesh outcome: ${outcome?.error ?? `${outcome?.endpoints} endpoints applied`})`,
    );
  } finally {
    plane.close();
  }
}

// ----- policy ---------------------------------------------------------------------------------------

let patternSeed = 0;
function policyServer(routes, name) {
  patternSeed += 1;
  const seed = patternSeed;
  const match = (i) => ({
    path: { kind: { $case: "regex", value: `/api/s${seed}/v${i}/([a-z0-9]+/?)+` } },
    headers: [{ name: "x-tenant", value: { $case: "regex", value: `tenant-${seed}-${i}-[0-9a-f]{8}` } }],
    queryParams: [],
    method: { type: { $case: "registered", value: 0 } },
  });
  return inbound.Server.fromPartial({
    protocol: {
      kind: {
        $case: "detect",
        value: {
          timeout: { seconds: 10n, nanos: 0 },
          httpRoutes: Array.from({ length: routes }, (_, i) => ({
            metadata: {
              kind: {
                $case: "resource",
                value: { group: "policy.linkerd.io", kind: "HTTPRoute", name: `route-${name}-${i}` },
              },
            },
            hosts: [],
            authorizations: [],
            rules: [{ matches: [match(i)], filters: [] }],
          })),
        },
      },
    },
    authorizations: [
      {
        metadata: { kind: { $case: "default", value: "all-unauthenticated" } },
        networks: [{ net: { ip: { ip: { $case: "ipv4", value: 0 } }, prefixLen: 0 } }],
        authentication: { permit: { $case: "unauthenticated", value: {} } },
      },
    ],
    labels: { name },
  });
}

async function startPolicyPlane() {
  const server = new Server({ "grpc.max_send_message_length": 64 * 1024 * 1024 });
  const plane = { calls: [], next: undefined };
  server.addService(inbound.InboundServerPoliciesService, {
    getPort(_call, done) {
      done({ code: 12, details: "not used" });
    },
    watchPort(call) {
      plane.calls.push(call);
      call.write(plane.next);
    },
  });
  const port = await new Promise((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, bound) =>
      error ? reject(error) : resolve(bound),
    ),
  );
  return Object.assign(plane, { address: `127.0.0.1:${port}`, close: () => server.forceShutdown() });
}

const LARGE = { "grpc.max_receive_message_length": 64 * 1024 * 1024 };

function rawPolicy(address) {
  const client = new inbound.InboundServerPoliciesClient(address, credentials.createInsecure(), LARGE);
  return new Promise((resolve, reject) => {
    const call = client.watchPort(inbound.PortSpec.fromPartial({ workload: "{}", port: 8080 }));
    call.on("data", () => {
      call.cancel();
      client.close();
      resolve();
    });
    call.on("error", (error) => {
      if (error.code !== 1) reject(error);
    });
  });
}

function meshedPolicy(address) {
  const client = new inbound.InboundServerPoliciesClient(address, credentials.createInsecure(), LARGE);
  const watcher = createPolicyWatcher({
    client,
    workload: "{}",
    ports: [8080],
    maxMessageBytes: 16 * 1024 * 1024,
  });
  return new Promise((resolve) => {
    const done = (outcome) => {
      watcher.close();
      client.close();
      resolve(outcome);
    };
    watcher.subscribe((event) => {
      if (event.type === "updated") done(`applied, ${event.policy.status}`);
      else done(`refused: ${event.error.code}`);
    });
  });
}

async function comparePolicy(label, makeServer) {
  const plane = await startPolicyPlane();
  try {
    plane.next = makeServer();
    await rawPolicy(plane.address);
    await meshedPolicy(plane.address);
    const rawMax = [];
    const meshMax = [];
    let outcome;
    let bytes = 0;
    for (let round = 0; round < ROUNDS; round += 1) {
      // New patterns every round, so the regexes are compiled cold, not found in the cache.
      plane.next = makeServer();
      bytes = inbound.Server.encode(plane.next).finish().length;
      rawMax.push((await maxDelay(() => rawPolicy(plane.address))).maxMs);
      meshMax.push(
        (
          await maxDelay(async () => {
            outcome = await meshedPolicy(plane.address);
          })
        ).maxMs,
      );
    }
    const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
    const r = median(rawMax);
    const m = median(meshMax);
    console.log(
      `${label} (${(bytes / 1024 / 1024).toFixed(2)} MiB): max event-loop delay, median of ${ROUNDS}: ` +
        `raw grpc-js ${r.toFixed(1)} ms, inmesh ${m.toFixed(1)} ms, ratio ${(m / Math.max(r, 1)).toFixed(2)} ` +
        `(inmesh outcome: ${outcome})`,
    );
  } finally {
    plane.close();
  }
}

console.log(
  `big updates (node ${process.version}); caps: ${LIMITS.maxEndpoints} endpoints per set, ` +
    `${POLICY_LIMITS.maxRoutes} routes and ${POLICY_LIMITS.maxRegexes} regexes per server`,
);
if (only !== "policy") {
  await compare(requested);
  if (requested > LIMITS.maxEndpoints) await compare(LIMITS.maxEndpoints);
}
if (only !== "endpoints") {
  await comparePolicy("policy, 14,000 regex routes", () => policyServer(14_000, "web"));
  await comparePolicy(
    `policy, ${POLICY_LIMITS.maxRegexes / 2} routes of 2 new regexes (at the regex cap)`,
    () => policyServer(POLICY_LIMITS.maxRegexes / 2, "web"),
  );
}
process.exit(0);
