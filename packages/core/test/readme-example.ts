import {
  ConfigError,
  createBackoff,
  isMeshError,
  MeshErrorCode,
  parseControlPlaneAddress,
} from "@inmesh/core";

export function describePolicyAddress(env: Record<string, string | undefined>): string {
  try {
    const address = parseControlPlaneAddress(env, "LINKERD2_PROXY_POLICY");
    if (!address) return "no policy controller configured";
    return address.plaintext
      ? `plaintext to ${address.host}:${address.port}`
      : `mTLS to ${address.serverName}`;
  } catch (error) {
    if (error instanceof ConfigError) return `bad setting ${String(error.details?.variable)}`;
    if (isMeshError(error) && error.code === MeshErrorCode.INTERNAL) return "internal error";
    throw error;
  }
}

export const reconnectDelaysMs = (() => {
  const backoff = createBackoff({ minMs: 100, maxMs: 60_000, jitterRatio: 0.1 });
  return [backoff.next(), backoff.next(), backoff.next()];
})();
