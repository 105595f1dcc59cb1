/**
 * One outbound benchmark client per process, so it can run under callgrind on its own:
 *   node client.mjs <kind> <setup.json>
 * kind: `mesh` (createMeshDispatcher: discovery of Service `target`, mTLS to its endpoint's identity, P2C,
 * retry layer) or `pool` (a bare undici Pool to the same endpoint with the same mTLS connect options):
 * S3a's two sides, both sending with `undici.request` and draining the body; `fetch` is undici's fetch
 * over that Pool (S3b). One process per client, as one per server: clients sharing a process share
 * V8's type feedback and GC, and each then runs code shaped by the others' objects.
 * Prints `READY` once a first request has succeeded; then on stdin each line `<n>` sends n requests one
 * after another and prints `DONE <n>`, and `loop <seconds> <concurrency>` runs a closed loop and prints
 * `LOOP <requests> <seconds> <cpu µs>`. Stdin closing stops it.
 */
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { distOf, identityFromSetup, requireFrom } from "./env.mjs";

const [kind, setupFile] = process.argv.slice(2);
const setup = JSON.parse(readFileSync(setupFile, "utf8"));
const undici = requireFrom("http", "undici");
const { credentials } = requireFrom("proto", "@grpc/grpc-js");

const identity = await identityFromSetup(setup, setup.clientIdentity);
await identity.ready();

let send;
let close;
if (kind === "mesh") {
  const { createDiscovery, createContextToken } = await import(distOf("destination"));
  const { destination } = await import(distOf("proto"));
  const { createMeshDispatcher } = await import(distOf("http"));
  const discovery = createDiscovery({
    destinationClient: new destination.DestinationClient(
      setup.destinationAddress,
      credentials.createInsecure(),
    ),
    contextToken: createContextToken({ ns: setup.namespace, pod: setup.pod }),
    initialTimeoutMs: 120_000,
  });
  // Straight to the endpoint's port over mTLS, as the Pool connects (the dev control plane advertises a
  // transport-header port, which the benchmark's target does not serve).
  const dispatcher = createMeshDispatcher({
    identity,
    discovery,
    http2PriorKnowledge: false,
    useTransportHeader: false,
    // Under callgrind the first discovery answer and handshake take seconds; the count is of later requests.
    discoveryTimeoutMs: 120_000,
    connectTimeoutMs: 120_000,
    failFastTimeoutMs: 120_000,
  });
  send = () => viaRequest(setup.meshUrl, dispatcher);
  close = async () => {
    await dispatcher.close();
    await discovery.close();
  };
} else if (kind === "pool" || kind === "fetch") {
  const pool = new undici.Pool(`https://127.0.0.1:${setup.targetPort}`, {
    connect: {
      ...identity.tlsClientOptions(setup.targetIdentity),
      ALPNProtocols: undefined,
      timeout: 120_000,
    },
  });
  const url = `https://127.0.0.1:${setup.targetPort}/`;
  send =
    kind === "pool"
      ? () => viaRequest(url, pool)
      : async () => {
          const response = await undici.fetch(url, { dispatcher: pool });
          await response.arrayBuffer();
          if (response.status !== 200) throw new Error(`status ${response.status}`);
        };
  close = () => pool.close();
} else {
  throw new Error(`unknown client kind ${kind}`);
}

async function viaRequest(url, dispatcher) {
  const { statusCode, body } = await undici.request(url, { dispatcher });
  await body.dump();
  if (statusCode !== 200) throw new Error(`status ${statusCode}`);
}

async function sequential(n) {
  for (let i = 0; i < n; i += 1) await send();
}

async function closedLoop(seconds, concurrency) {
  const deadline = performance.now() + seconds * 1000;
  let count = 0;
  const cpu = process.cpuUsage();
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < deadline) {
        await send();
        count += 1;
      }
    }),
  );
  const used = process.cpuUsage(cpu);
  return { count, seconds: (performance.now() - started) / 1000, cpuUs: used.user + used.system };
}

await sequential(1);
process.stdout.write("READY\n");
const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const loop = /^loop ([\d.]+) (\d+)$/.exec(line.trim());
  if (loop) {
    const { count, seconds, cpuUs } = await closedLoop(Number(loop[1]), Number(loop[2]));
    process.stdout.write(`LOOP ${count} ${seconds} ${cpuUs}\n`);
    continue;
  }
  const n = Number(line.trim());
  if (!Number.isInteger(n) || n < 0) continue;
  await sequential(n);
  process.stdout.write(`DONE ${n}\n`);
}
await close();
await identity.close();
process.exit(0);
