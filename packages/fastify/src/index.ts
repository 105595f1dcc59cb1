export type { FastifyMeshPluginOptions } from "./plugin.js";
export { fastifyMeshPlugin } from "./plugin.js";
