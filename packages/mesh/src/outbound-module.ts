import { createRequire } from "node:module";
import { MeshError, MeshErrorCode } from "@inmesh/core";

type HttpModule = typeof import("@inmesh/http");

let loaded: HttpModule | undefined;
let loading: Promise<HttpModule> | undefined;

// The outbound stack (undici, the dispatcher, discovery-driven targets) is half of what `@inmesh/http`
// costs to load (≈4 MiB of heap and ≈100 ms), and an inbound-only service never uses it. Built code loads
// it on first use, synchronously, as an ES module through `require` (Node ≥ 20.19 and ≥ 22.12). Where that
// is not possible (older Node, or running from TypeScript sources, where `require` would find the built
// copy instead of the sources), every mesh imports it when created and `ready()` waits for it.
const requireOutbound: (() => HttpModule) | undefined =
  (process.features as { require_module?: boolean }).require_module === true &&
  import.meta.url.endsWith(".js")
    ? () => createRequire(import.meta.url)("@inmesh/http") as HttpModule
    : undefined;

/** True where the outbound stack cannot be loaded synchronously on first use, so meshes import it up front. */
export const outboundLoadsUpFront = requireOutbound === undefined;

/** Imports the outbound stack (once per process). */
export function loadOutbound(): Promise<HttpModule> {
  if (loaded) return Promise.resolve(loaded);
  loading ??= import("@inmesh/http").then((module) => {
    loaded = module;
    return module;
  });
  return loading;
}

/** The outbound stack, loaded now if it was not yet. */
export function outboundModule(): HttpModule {
  if (loaded) return loaded;
  if (requireOutbound) {
    loaded = requireOutbound();
    return loaded;
  }
  throw new MeshError(
    MeshErrorCode.INTERNAL,
    "the outbound stack is still loading on this Node version: await mesh.ready() before using mesh.dispatcher, mesh.httpAgent or mesh.install()",
  );
}
