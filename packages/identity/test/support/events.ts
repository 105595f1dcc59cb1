import type { IdentityEvents, IdentityProvider } from "../../src/index.js";

/** The next `event` from the provider, or a rejection after `timeoutMs` (tests never hang). */
export function nextEvent<E extends keyof IdentityEvents>(
  provider: IdentityProvider,
  event: E,
  timeoutMs = 20_000,
): Promise<IdentityEvents[E]> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no "${event}" event within ${timeoutMs} ms`));
    }, timeoutMs);
    const off = provider.on(event, (payload) => {
      clearTimeout(timer);
      off();
      resolve(payload);
    });
  });
}

/** Polls `predicate` every 20 ms until it holds, at most `timeoutMs`. */
export async function waitFor(
  predicate: () => boolean,
  timeoutMs = 20_000,
  what = "condition",
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
