/**
 * A Destination controller double in a process of its own (big-updates.test.ts), so that writing a
 * 3.8 MiB update does not hold the event loop of the process measuring request latency:
 *
 *   node --import ./test/bench/policy-ts-loader.mjs test/reliability/servers/destination-plane.mjs <endpoints>
 *
 * Every Destination.Get receives one `add` of <endpoints> meshed addresses (10.0.0.0 upwards), encoded
 * once at start. Prints `{"address":"127.0.0.1:N","bytes":N}`; exits when stdin ends.
 */
import { Server, ServerCredentials } from "@grpc/grpc-js";
import { destination } from "@inmesh/proto";

const count = Number(process.argv[2] ?? 50_000);
const addrs = Array.from({ length: count }, (_, i) => ({
  addr: { ip: { ip: { $case: "ipv4", value: ((10 << 24) | i) >>> 0 } }, port: 8080 },
  weight: 10_000,
  tlsIdentity: {
    strategy: {
      $case: "dnsLikeIdentity",
      value: { name: "web.default.serviceaccount.identity.linkerd.cluster.local" },
    },
  },
}));
const bytes = Buffer.from(
  destination.Update.encode(
    destination.Update.fromPartial({
      update: { $case: "add", value: { addrs, metricLabels: { namespace: "default", service: "web" } } },
    }),
  ).finish(),
);

const server = new Server({ "grpc.max_send_message_length": 64 * 1024 * 1024 });
server.addService(
  {
    ...destination.DestinationService,
    // Pre-encoded: each Get costs a write, not an encode.
    get: { ...destination.DestinationService.get, responseSerialize: (value) => value },
  },
  {
    get(call) {
      call.write(bytes);
    },
    getProfile(call) {
      call.end();
    },
  },
);
const port = await new Promise((resolve, reject) =>
  server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, bound) =>
    error ? reject(error) : resolve(bound),
  ),
);
process.stdout.write(`${JSON.stringify({ address: `127.0.0.1:${port}`, bytes: bytes.length })}\n`);
process.stdin.resume();
process.stdin.on("end", () => {
  server.forceShutdown();
  process.exit(0);
});
