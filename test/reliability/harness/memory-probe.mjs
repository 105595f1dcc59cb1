// Loaded into an attacked child with `node --expose-gc --import` (see child.ts): "gc" on stdin collects,
// then reports memory as a JSON line, as servers/sdk-server.mjs does itself, so the examples' retained
// memory can be told from heap headroom without changing them.
if (typeof globalThis.gc === "function") {
  process.stdin.setEncoding("utf8").on("data", (text) => {
    if (!text.includes("gc")) return;
    globalThis.gc();
    // On Node 24 a last-resort collection also gives back the young generation V8 grew under an
    // attack's allocation rate, which it otherwise keeps (+130 MiB of RSS with the heap flat). Node 20's
    // V8 runs it as an incomplete collection, so there the plain one stands alone.
    if (Number(process.versions.node.split(".")[0]) >= 24) {
      globalThis.gc({ type: "major", execution: "sync", flavor: "last-resort" });
    }
    const { rss, heapUsed, heapTotal, external, arrayBuffers } = process.memoryUsage();
    process.stdout.write(
      `${JSON.stringify({ event: "memory", rss, heapUsed, heapTotal, external, arrayBuffers })}\n`,
    );
  });
}
