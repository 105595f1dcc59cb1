export type { OtelBridge, OtelBridgeOptions, Propagator } from "./bridge.js";
export { createOtelBridge, isOtelApiInstalled, registerOtel } from "./bridge.js";
