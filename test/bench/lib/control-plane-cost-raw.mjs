/**
 * S10's floor: a bare grpc-js Destination client that only receives and decodes the same Get stream as
 * the meshed client (no discovery, no balancer), so the report can say how much of an update's CPU is
 * gRPC's and Node's receive path, which every client pays, and how much is the SDK's.
 *   node control-plane-cost-raw.mjs <destination address> <path>
 * Prints `READY` after the first message; on stdin `sample` prints `SAMPLE <cpu µs> <wall µs> <messages>`.
 */
import { createInterface } from "node:readline";
import { distOf, requireFrom } from "./env.mjs";

const [address, target] = process.argv.slice(2);
const { credentials } = requireFrom("proto", "@grpc/grpc-js");
const { destination } = await import(distOf("proto"));

const client = new destination.DestinationClient(address, credentials.createInsecure());
const call = client.get(destination.GetDestination.fromPartial({ path: target }));
let messages = 0;
await new Promise((resolve, reject) => {
  call.on("data", () => {
    messages += 1;
    resolve();
  });
  call.on("error", (error) => {
    if (error.code !== 1) reject(error);
  });
});
process.stdout.write("READY\n");

const started = performance.now();
for await (const line of createInterface({ input: process.stdin })) {
  if (line.trim() !== "sample") continue;
  const { user, system } = process.cpuUsage();
  const wallUs = Math.round((performance.now() - started) * 1000);
  process.stdout.write(`SAMPLE ${user + system} ${wallUs} ${messages}\n`);
}
call.cancel();
client.close();
process.exit(0);
