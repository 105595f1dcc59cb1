/**
 * What run.mjs gives a scenario module (`measureXX({ cluster, config, quick, loadCore, serverCore, log,
 * row, summary })`), for running one module on its own: `node lib/<module>.mjs [--quick]` prints its rows
 * as JSON.
 */
import os from "node:os";
import { pin, summary } from "./env.mjs";

/** A report row: `test` decides `met` from the value's median (or the value itself). */
export function row(id, what, value, unit, target, test, detail = "") {
  const central = typeof value === "number" ? value : value.median;
  return { id, what, value, unit, target, met: test(central), detail };
}

export function log(message) {
  process.stderr.write(`${message}\n`);
}

/**
 * Runs `measure` as run.mjs would (pairs and seconds of the full or quick mode, merged with `config`;
 * a bench cluster unless `cluster: false`), prints `{ rows, notes }` (with `raw` under --raw) and exits.
 */
export async function runAlone(measure, { cluster: wantsCluster = true, config = {}, extra = {} } = {}) {
  const quick = process.argv.includes("--quick") || process.env.BENCH_QUICK === "1";
  const loadCore = 0;
  const serverCore = os.availableParallelism() > 1 ? 1 : 0;
  pin(process.pid, loadCore);
  const cluster = wantsCluster ? await (await import("./cluster.mjs")).startCluster() : undefined;
  let exitCode = 0;
  try {
    const result = await measure({
      cluster,
      config: { ...(quick ? { pairs: 3, seconds: 1 } : { pairs: 7, seconds: 5 }), ...config },
      quick,
      loadCore,
      serverCore,
      log,
      row,
      summary,
      ...extra,
    });
    const { raw, ...shown } = result;
    process.stdout.write(`${JSON.stringify(process.argv.includes("--raw") ? result : shown, null, 2)}\n`);
  } catch (error) {
    log(String(error?.stack ?? error));
    exitCode = 1;
  } finally {
    await cluster?.close();
  }
  process.exit(exitCode);
}
