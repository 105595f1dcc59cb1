// Loaded into an attacked child with `node --expose-gc --import` (see child.ts): "gc" on stdin collects,
// then reports memory as a JSON line, as servers/sdk-server.mjs does itself, so the examples' retained
// memory can be told from heap headroom without changing them.
if (typeof globalThis.gc === "function") {
  process.stdin.setEncoding("utf8").on("data", (text) => {
    if (!text.includes("gc")) return;
    globalThis.gc();
    const { rss, heapUsed, heapTotal, external, arrayBuffers } = process.memoryUsage();
    process.stdout.write(
      `${JSON.stringify({ event: "memory", rss, heapUsed, heapTotal, external, arrayBuffers })}\n`,
    );
  });
}
