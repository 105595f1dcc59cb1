/** The lifecycle trio every long-lived inmesh resource exposes. */
export interface Closable extends AsyncDisposable {
  /** Graceful and idempotent: concurrent callers share one promise. */
  close(): Promise<void>;
}

/**
 * Makes `close` idempotent and single-flight, and adds `Symbol.asyncDispose`, so resources can be used
 * with `await using`.
 */
export function closeOnce(doClose: () => Promise<void> | void): Closable & { readonly closed: boolean } {
  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= Promise.resolve().then(doClose);
    return closing;
  };
  return {
    close,
    [Symbol.asyncDispose]: close,
    get closed() {
      return closing !== undefined;
    },
  };
}

/** A timer that never keeps the process alive and can always be cleaned up. */
export function unrefTimeout(fn: () => void, ms: number): NodeJS.Timeout {
  const timer = setTimeout(fn, ms);
  timer.unref();
  return timer;
}

/** Resolves after `ms`, or rejects with the signal's reason when it aborts first. */
export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
