// Plain HTTP endpoints for the balancing test (R16), in a process of their own so that their latency is
// their own and not the test's event loop: `node echo-endpoints.mjs <port> <ip>...` serves on each
// address and answers the pod name given by the address's position (`<prefix>-<index>`). Commands on
// stdin, one per line: `slow <index> <ms>` delays that endpoint's answers, `fast <index>` ends it.
import { createServer } from "node:http";
import { createInterface } from "node:readline";

const [portText, prefix, ...ips] = process.argv.slice(2);
const port = Number(portText);
const delays = ips.map(() => 0);
const servers = ips.map((ip, index) => {
  const name = `${prefix}-${index}`;
  const server = createServer((req, res) => {
    req.resume();
    const answer = () => res.end(name);
    const delay = delays[index];
    if (delay > 0) setTimeout(answer, delay);
    else answer();
  });
  server.keepAliveTimeout = 60_000;
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, ip, () => resolve(server));
  });
});
await Promise.all(servers);
createInterface({ input: process.stdin }).on("line", (line) => {
  const [command, indexText, msText] = line.trim().split(/\s+/);
  const index = Number(indexText);
  if (command === "slow") delays[index] = Number(msText);
  else if (command === "fast") delays[index] = 0;
  process.stdout.write(`${JSON.stringify({ event: "ack", line })}\n`);
});
process.stdin.on("end", () => process.exit(0));
process.stdout.write(`${JSON.stringify({ event: "ready", pid: process.pid })}\n`);
