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

/**
 * Keeps the process alive until the returned function is called. For a wait on a resource whose timers
 * and channels are unref'd (so that it never holds a process open by itself): without a handle of its
 * own, a process whose only work is that wait would exit silently (code 13, an unsettled top-level
 * await) between two attempts.
 */
export function keepProcessAlive(): () => void {
  const handle = setInterval(() => undefined, 2 ** 30);
  return () => clearInterval(handle);
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
