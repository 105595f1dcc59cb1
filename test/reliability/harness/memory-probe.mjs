// Loaded into every attacked child that the harness asks about memory (`node --expose-gc --import`, see
// child.ts): "gc" on stdin collects, then reports memory as a JSON line, so a test can tell retained
// memory from heap headroom without changing the service.
//
// The collection is V8's last-resort one where V8 has it (Node >= 22): a regular full collection leaves
// the young generation at whatever size a burst of allocation grew it to (Node 24: +32 MiB resident
// after a few seconds of connection churn, with nothing retained) and V8's pool of freed pages
// committed; the last-resort collection gives both back, so RSS after it is what the process keeps.
// Node 20's V8 ignores the option and does its regular full collection, so there RSS after it still
// counts a young generation that churn grew (h2-abuse.test.ts judges native memory and heap for that).
if (typeof globalThis.gc === "function") {
  const collect = globalThis.gc;
  process.stdin.setEncoding("utf8").on("data", (text) => {
    if (!text.includes("gc")) return;
    collect({ type: "major", execution: "sync", flavor: "last-resort" });
    const { rss, heapUsed, heapTotal, external, arrayBuffers } = process.memoryUsage();
    process.stdout.write(
      `${JSON.stringify({ event: "memory", rss, heapUsed, heapTotal, external, arrayBuffers })}\n`,
    );
  });
}
