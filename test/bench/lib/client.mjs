/**
 * One outbound benchmark client per process, so it can run under callgrind on its own:
 *   node client.mjs <kind> <setup.json>
 * kind: `mesh` (createMeshDispatcher: discovery of Service `target`, mTLS to its endpoint's identity, P2C,
 * retry layer) or `pool` (a bare undici Pool to the same endpoint with the same mTLS connect options):
 * S3a's two sides. Both send with `undici.request` and drain the body, as S3a's throughput phases do.
 * Prints `READY` once a first request has succeeded; then each line `<n>` on stdin sends n requests one
 * after another and prints `DONE <n>`. Stdin closing stops it.
 */
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { distOf, requireFrom } from "./env.mjs";

const [kind, setupFile] = process.argv.slice(2);
const setup = JSON.parse(readFileSync(setupFile, "utf8"));
const undici = requireFrom("http", "undici");
const { credentials } = requireFrom("proto", "@grpc/grpc-js");
const { createIdentityProvider } = await import(distOf("identity"));

const identity = createIdentityProvider({
  localName: setup.clientIdentity,
  trustAnchorsPem: setup.anchors,
  identityServiceAddress: setup.identityAddress,
  identityServiceName: setup.identityName,
  readToken: () => setup.token,
});
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
  send = () => undici.request(setup.meshUrl, { dispatcher });
  close = async () => {
    await dispatcher.close();
    await discovery.close();
  };
} else if (kind === "pool") {
  const pool = new undici.Pool(`https://127.0.0.1:${setup.targetPort}`, {
    connect: {
      ...identity.tlsClientOptions(setup.targetIdentity),
      ALPNProtocols: undefined,
      timeout: 120_000,
    },
  });
  const url = `https://127.0.0.1:${setup.targetPort}/`;
  send = () => undici.request(url, { dispatcher: pool });
  close = () => pool.close();
} else {
  throw new Error(`unknown client kind ${kind}`);
}

async function sequential(n) {
  for (let i = 0; i < n; i += 1) {
    const { statusCode, body } = await send();
    await body.dump();
    if (statusCode !== 200) throw new Error(`status ${statusCode}`);
  }
}

await sequential(1);
process.stdout.write("READY\n");
const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const n = Number(line.trim());
  if (!Number.isInteger(n) || n < 0) continue;
  await sequential(n);
  process.stdout.write(`DONE ${n}\n`);
}
await close();
await identity.close();
process.exit(0);
