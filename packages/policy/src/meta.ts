import type { ResourceMeta } from "./types.js";

const defaults = new Map<string, ResourceMeta>();

/** A default meta (group "", kind "default"), interned so decisions can share it. */
export function defaultMeta(name: string): ResourceMeta {
  let meta = defaults.get(name);
  if (meta === undefined) {
    meta = Object.freeze({ group: "", kind: "default", name });
    // Only proxy-made names are interned; controller-supplied names would make this map unbounded.
    if (defaults.size < 64) defaults.set(name, meta);
  }
  return meta;
}

export function resourceMeta(group: string, kind: string, name: string): ResourceMeta {
  return Object.freeze({ group, kind, name });
}

/** Linkerd logs a request admitted by the `audit` default at INFO and counts it as an allow. */
export function isAuditMeta(meta: ResourceMeta): boolean {
  return meta.kind === "default" && meta.name === "audit";
}

export const LOCALHOST_META = defaultMeta("localhost");
export const DEFAULT_ROUTE_META = defaultMeta("default");
export const INVALID_META = defaultMeta("invalid");
export const NOT_LOADED_META = defaultMeta("not-loaded");
