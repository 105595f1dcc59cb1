import { lookup } from "node:dns/promises";
import { DestinationError, MeshErrorCode } from "@inmesh/core";

/**
 * Addresses of external names, resolved with the system resolver (as the application would have) so
 * the outbound policy can be looked up by address, as the proxy sees intercepted traffic. Bounded,
 * with a short lifetime since `getaddrinfo` gives no TTL; lookups of one name are shared.
 */
export class AddressCache {
  readonly #ttlMs: number;
  readonly #max: number;
  readonly #entries = new Map<string, { readonly ip: string; readonly expiresAtMs: number }>();
  readonly #pending = new Map<string, Promise<string>>();

  constructor(ttlMs = 30_000, max = 1024) {
    this.#ttlMs = ttlMs;
    this.#max = max;
  }

  cached(host: string): string | undefined {
    const entry = this.#entries.get(host);
    if (!entry) return undefined;
    if (entry.expiresAtMs > performance.now()) return entry.ip;
    this.#entries.delete(host);
    return undefined;
  }

  /** Resolves within `timeoutMs` (the system resolver's own retries can take much longer). */
  resolve(host: string, timeoutMs: number): Promise<string> {
    const cached = this.cached(host);
    if (cached) return Promise.resolve(cached);
    let pending = this.#pending.get(host);
    if (!pending) {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_resolve, reject) => {
        timer = setTimeout(
          () => reject(Object.assign(new Error(`no answer within ${timeoutMs} ms`), { code: "ETIMEOUT" })),
          timeoutMs,
        );
        timer.unref();
      });
      pending = Promise.race([lookup(host, { verbatim: true }), timeout]).then(
        ({ address }) => {
          clearTimeout(timer);
          this.#pending.delete(host);
          if (this.#entries.size >= this.#max) this.#entries.clear();
          this.#entries.set(host, { ip: address, expiresAtMs: performance.now() + this.#ttlMs });
          return address;
        },
        (error: NodeJS.ErrnoException) => {
          clearTimeout(timer);
          this.#pending.delete(host);
          throw new DestinationError(
            MeshErrorCode.DESTINATION_NOT_FOUND,
            `cannot resolve ${host}: ${error.code ?? error.message}`,
            { cause: error, details: { host } },
          );
        },
      );
      this.#pending.set(host, pending);
    }
    return pending;
  }
}
