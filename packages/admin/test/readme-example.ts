import { createMeshMetrics, startAdminServer } from "@inmesh/admin";

export async function startAdmin(isIdentityReady: () => boolean, port = 4191) {
  const metrics = createMeshMetrics({ maxSeriesPerFamily: 2000 });
  metrics.subscribe(); // records from the mesh:* diagnostics channels

  const admin = await startAdminServer({
    port, // host defaults to 127.0.0.1
    metrics,
    readiness: () =>
      isIdentityReady() ? true : { ready: false, reasons: ["identity: waiting for a certificate"] },
  });

  return {
    url: admin.url, // scrape `${url}/metrics`; probes use /ready and /live
    async close() {
      metrics.unsubscribe();
      await admin.close();
    },
  };
}
