#!/usr/bin/env node
import { main } from "./index.js";

const controller = new AbortController();
const stop = (signal: NodeJS.Signals) => {
  // A second signal while shutting down exits at once.
  if (controller.signal.aborted) process.exit(128 + (signal === "SIGINT" ? 2 : 15));
  controller.abort(signal);
};
process.on("SIGINT", stop);
process.on("SIGTERM", stop);

// Commands wait on gRPC channels and retry timers that are unref'd; without a ref'd handle Node would
// end a waiting command silently (exit code 13, unsettled top-level await) instead of letting it report.
const keepAlive = setInterval(() => {}, 2 ** 30);
process.exitCode = await main(process.argv.slice(2), {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
  cwd: process.cwd(),
  env: process.env,
  signal: controller.signal,
});
clearInterval(keepAlive);
process.off("SIGINT", stop);
process.off("SIGTERM", stop);
