import { createRequire } from "node:module";
import { MeshError, MeshErrorCode } from "@inmesh/core";

/**
 * A package a service may never use, loaded on first use. The outbound stack (undici, the dispatcher,
 * discovery-driven targets) is half of what `@inmesh/http` costs to load (≈4 MiB of heap and ≈100 ms),
 * and discovery brings `@inmesh/destination` and re2js; an inbound-only service uses neither. Built code
 * loads them synchronously on first use, as ES modules through `require` (Node ≥ 20.19 and ≥ 22.12).
 * Where that is not possible (older Node, or running from TypeScript sources, where `require` would find
 * the built copy instead of the sources), every mesh imports them when created and `ready()` waits.
 */
export interface LazyModule<T> {
  /** Imports the module (once per process). */
  load(): Promise<T>;
  /** The module, loaded now if it was not yet. */
  now(): T;
}

/** True where a lazy module cannot be loaded synchronously on first use, so meshes import it up front. */
export const lazyModulesLoadUpFront = !(
  (process.features as { require_module?: boolean }).require_module === true &&
  import.meta.url.endsWith(".js")
);

function lazyModule<T>(specifier: string, importModule: () => Promise<T>): LazyModule<T> {
  let loaded: T | undefined;
  let loading: Promise<T> | undefined;
  return {
    load() {
      if (loaded) return Promise.resolve(loaded);
      loading ??= importModule().then((module) => {
        loaded = module;
        return module;
      });
      return loading;
    },
    now() {
      if (loaded) return loaded;
      if (!lazyModulesLoadUpFront) {
        loaded = createRequire(import.meta.url)(specifier) as T;
        return loaded;
      }
      throw new MeshError(
        MeshErrorCode.INTERNAL,
        `${specifier} is still loading on this Node version: await mesh.ready() before using mesh.dispatcher, mesh.httpAgent, mesh.install() or mesh.discovery`,
      );
    },
  };
}

export const httpModule: LazyModule<typeof import("@inmesh/http")> = lazyModule(
  "@inmesh/http",
  () => import("@inmesh/http"),
);

export const destinationModule: LazyModule<typeof import("@inmesh/destination")> = lazyModule(
  "@inmesh/destination",
  () => import("@inmesh/destination"),
);

export const outboundLoadsUpFront = lazyModulesLoadUpFront;
export const loadOutbound = (): Promise<typeof import("@inmesh/http")> => httpModule.load();
export const outboundModule = (): typeof import("@inmesh/http") => httpModule.now();
