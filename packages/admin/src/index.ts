export type { MeshMetrics, MeshMetricsOptions } from "./mesh-metrics.js";
export { createMeshMetrics, RESPONSE_LATENCY_BUCKETS_MS, SERIES_DROPPED_METRIC } from "./mesh-metrics.js";
export type { AdminServer, AdminServerOptions, Readiness } from "./server.js";
export { startAdminServer } from "./server.js";
