export type { OtelBridge, OtelBridgeOptions, Propagator } from "./bridge.js";
export { createOtelBridge, registerOtel } from "./bridge.js";
