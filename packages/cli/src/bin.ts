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

process.exitCode = await main(process.argv.slice(2), {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
  cwd: process.cwd(),
  env: process.env,
  signal: controller.signal,
});
process.off("SIGINT", stop);
process.off("SIGTERM", stop);
