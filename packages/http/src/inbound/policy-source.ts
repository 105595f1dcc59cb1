import { MeshError, MeshErrorCode } from "@inmesh/core";
import type { CompiledServerPolicy, PolicyWatchEvent } from "@inmesh/policy";

/**
 * Where the inbound side gets a port's policy: a `PolicyWatcher` from `@inmesh/policy`, or anything with
 * the same `policyFor` (and optionally `waitForPolicy` / `subscribe`).
 */
export interface MeshPolicySource {
  /** The policy to apply right now (synchronous; the not-loaded policy denies everything). */
  policyFor(port: number): CompiledServerPolicy;
  /** Resolves with the port's policy once loaded, or with the current one after `timeoutMs`. */
  waitForPolicy?(
    port: number,
    options?: { timeoutMs?: number; signal?: AbortSignal },
  ): Promise<CompiledServerPolicy>;
  /** Policy updates; lets authorized opaque connections be re-checked when the policy changes. */
  subscribe?(listener: (event: PolicyWatchEvent) => void): () => void;
}

/** A policy source, or one compiled policy applied as is (tests, fixed configurations). */
export type MeshPolicyInput = MeshPolicySource | CompiledServerPolicy;

function isCompiledPolicy(input: MeshPolicyInput): input is CompiledServerPolicy {
  return typeof (input as CompiledServerPolicy).authorizeHttp === "function";
}

export function resolvePolicySource(input: MeshPolicyInput | undefined, where: string): MeshPolicySource {
  if (input === null || typeof input !== "object") {
    throw new MeshError(
      MeshErrorCode.INVALID_ARG,
      `${where}: policy must be a PolicyWatcher, a policy source or a compiled policy`,
    );
  }
  if (isCompiledPolicy(input)) {
    const fixed = input;
    return { policyFor: () => fixed };
  }
  if (typeof input.policyFor !== "function") {
    throw new MeshError(MeshErrorCode.INVALID_ARG, `${where}: policy.policyFor must be a function`);
  }
  return input;
}

export function checkPort(value: unknown, name: string, where: string, allowZero = false): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < (allowZero ? 0 : 1) || value > 65535) {
    throw new MeshError(
      MeshErrorCode.INVALID_ARG,
      `${where}: ${name} must be an integer ${allowZero ? 0 : 1}-65535, got ${String(value)}`,
    );
  }
  return value;
}
