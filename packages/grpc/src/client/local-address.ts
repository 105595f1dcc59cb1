import { experimental } from "@grpc/grpc-js";

/**
 * grpc-js dials a subchannel with `net.connect(address)`, passing the resolver's address object as is,
 * and offers no channel option for the source address. A tiny resolver for this scheme yields the
 * endpoint's address with `localAddress` set, so connections leave from the mesh's outbound address
 * (where several workloads share one host, calls from 127.0.0.1 would pass any Linkerd policy).
 */
const SCHEME = "inmesh-source";

let registered = false;

type ResolverListener =
  | ((result: { ok: true; value: unknown }, attributes: object, serviceConfig: null, note: string) => void)
  | {
      onSuccessfulResolution(
        endpoints: unknown,
        serviceConfig: null,
        serviceConfigError: null,
        configSelector: null,
        attributes: object,
      ): void;
    };

class SourceAddressResolver {
  readonly #listener: ResolverListener;
  readonly #endpoints: { addresses: { host: string; port: number; localAddress: string }[] }[];
  #reported = false;

  constructor(target: { path: string }, listener: ResolverListener) {
    this.#listener = listener;
    const [localAddress = "", host = "", port = "0"] = target.path.split("|");
    this.#endpoints = [{ addresses: [{ host, port: Number(port), localAddress }] }];
  }

  updateResolution(): void {
    if (this.#reported) return;
    this.#reported = true;
    process.nextTick(() => {
      const listener = this.#listener;
      // grpc-js 1.14 takes a function with a StatusOr; 1.13 an object with onSuccessfulResolution.
      if (typeof listener === "function") listener({ ok: true, value: this.#endpoints }, {}, null, "");
      else listener.onSuccessfulResolution(this.#endpoints, null, null, null, {});
    });
  }

  destroy(): void {
    this.#reported = false;
  }

  static getDefaultAuthority(target: { path: string }): string {
    const [, host = "", port = ""] = target.path.split("|");
    return `${host.includes(":") ? `[${host}]` : host}:${port}`;
  }
}

/** A grpc-js target for `host:port` whose connections leave from `localAddress`. */
export function sourceAddressTarget(localAddress: string, host: string, port: number): string {
  if (!registered) {
    experimental.registerResolver(
      SCHEME,
      SourceAddressResolver as unknown as Parameters<typeof experimental.registerResolver>[1],
    );
    registered = true;
  }
  return `${SCHEME}:${localAddress}|${host}|${port}`;
}
