/**
 * S6 in instructions: what one new mTLS connection (full TLS 1.3 handshake with a client certificate,
 * one `GET /`, close) costs a server, counted by callgrind, so the SDK ÷ node:https ratio does not move
 * with what else runs on the machine (the CPU-time figures of handshakes.mjs do). The method is
 * instructions.mjs's: the server under `valgrind --tool=callgrind` with V8's `--predictable`, connections
 * opened one after another, `callgrind_control --dump` after `small` and after `large` connections,
 * the cost the slope between them, without V8's compile work and with its collections added back.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import tls from "node:tls";
import { median } from "./env.mjs";
import { segmentParts } from "./instructions.mjs";
import { getOnce } from "./lean-load.mjs";

/**
 * @param kind `mesh` or `https` (lib/server.mjs)
 * @param clientTls tls.connect options with a shared `secureContext` and `servername`
 */
export async function instructionsPerConnection(cluster, kind, clientTls, options = {}) {
  const { warmup = 60, small = 20, large = 60, pairs = 3, core } = options;
  const dir = mkdtempSync(path.join(tmpdir(), "inmesh-callgrind-s6-"));
  const server = await cluster.startServer(kind, {
    core,
    wrap: ["valgrind", "--tool=callgrind", `--callgrind-out-file=${dir}/cg.%p`, "--dump-instr=no"],
    nodeFlags: ["--predictable"],
  });
  let dumps = 0;
  const dump = () => {
    execFileSync("callgrind_control", ["--dump", String(server.pid)], { stdio: "ignore" });
    dumps += 1;
  };
  const segment = () => segmentParts(path.join(dir, `cg.${server.pid}.${dumps}`));
  const connections = async (n) => {
    for (let i = 0; i < n; i += 1) await oneConnection(server.port, clientTls);
  };
  try {
    await connections(warmup);
    dump();
    const slopes = [];
    let collected = 0;
    let counted = 0;
    // The first pair is left out: the JIT is still settling.
    for (let pair = 0; pair < pairs + 1; pair += 1) {
      await connections(small);
      dump();
      const smallCost = segment();
      await connections(large);
      dump();
      const largeCost = segment();
      if (pair > 0) {
        slopes.push((largeCost.rest - smallCost.rest) / (large - small));
        collected += smallCost.gc + largeCost.gc;
        counted += small + large;
      }
    }
    const gcPerConnection = collected / counted;
    return {
      perConnection: median(slopes) + gcPerConnection,
      gcPerConnection,
      slopes: slopes.map((slope) => slope + gcPerConnection),
    };
  } finally {
    await server.stop();
    readdirSync(dir);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** One connection: handshake, `GET /` answered `ok`, close; waits for the server to see the close. */
function oneConnection(port, clientTls) {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host: "127.0.0.1",
      port,
      ...clientTls,
      checkServerIdentity: () => undefined,
    });
    socket.once("error", reject);
    socket.once("secureConnect", () => {
      getOnce(socket, "/").then((body) => {
        if (body !== "ok") reject(new Error(`unexpected body ${body}`));
        // The server's end follows ours: its close work falls in this connection's segment.
        const timer = setTimeout(() => socket.destroy(), 10_000);
        socket.once("close", () => {
          clearTimeout(timer);
          resolve();
        });
        socket.end();
      }, reject);
    });
  });
}
