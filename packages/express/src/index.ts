export type { ExpressMeshMiddlewareOptions } from "./middleware.js";
export { expressMeshMiddleware } from "./middleware.js";
