import { createHash, randomBytes } from "node:crypto";
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import path from "node:path";

/** What a dev identity token stands for: like a projected service-account token, it names one workload. */
export interface TokenRecord {
  readonly namespace: string;
  readonly pod: string;
  readonly serviceAccount: string;
}

export interface TokenStore {
  /** Issues a token for the pod (the same one again within this process), persisted when a state folder is set. */
  issue(record: TokenRecord): Promise<string>;
  /** The workload a token was issued to, or undefined for an unknown token. */
  lookup(token: Uint8Array): Promise<TokenRecord | undefined>;
}

/** Tokens longer than this are unknown without a look-up: nothing we issue comes close. */
const MAX_TOKEN_BYTES = 4096;

function digest(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}

/** Trailing newlines from editors or `echo` must not invalidate a token file. */
function normalize(token: Uint8Array): string | undefined {
  if (token.byteLength === 0 || token.byteLength > MAX_TOKEN_BYTES) return undefined;
  const text = Buffer.from(token).toString("utf8").trim();
  return /^[A-Za-z0-9_-]+$/.test(text) ? text : undefined;
}

function isTokenRecord(value: unknown): value is TokenRecord {
  const record = value as Record<string, unknown> | null;
  return (
    typeof record === "object" &&
    record !== null &&
    typeof record.namespace === "string" &&
    typeof record.pod === "string" &&
    typeof record.serviceAccount === "string"
  );
}

/**
 * Random 256-bit tokens. With a state folder each token lives in `tokens/<sha256(token)>.json` (mode 0600),
 * so an `inmesh env` run in another process issues tokens the running control plane accepts, concurrent
 * writers never collide, and a look-up is one file read keyed by the digest rather than a scan.
 */
export function createTokenStore(options: { stateDir?: string | undefined } = {}): TokenStore {
  const byDigest = new Map<string, TokenRecord>();
  const byPod = new Map<string, string>();
  const dir = options.stateDir === undefined ? undefined : path.join(options.stateDir, "tokens");

  return {
    async issue(record) {
      const key = `${record.namespace}/${record.pod}/${record.serviceAccount}`;
      const existing = byPod.get(key);
      if (existing !== undefined) return existing;
      const token = randomBytes(32).toString("base64url");
      const entry: TokenRecord = {
        namespace: record.namespace,
        pod: record.pod,
        serviceAccount: record.serviceAccount,
      };
      if (dir !== undefined) {
        await mkdir(dir, { recursive: true, mode: 0o700 });
        const file = path.join(dir, `${digest(token)}.json`);
        const temporary = `${file}.${process.pid}.tmp`;
        await writeFile(temporary, `${JSON.stringify({ ...entry, issuedAt: new Date().toISOString() })}\n`, {
          mode: 0o600,
        });
        await rename(temporary, file);
      }
      byDigest.set(digest(token), entry);
      byPod.set(key, token);
      return token;
    },

    async lookup(raw) {
      const token = normalize(raw);
      if (token === undefined) return undefined;
      const key = digest(token);
      const known = byDigest.get(key);
      if (known !== undefined || dir === undefined) return known;
      try {
        const parsed: unknown = JSON.parse(await readFile(path.join(dir, `${key}.json`), "utf8"));
        if (!isTokenRecord(parsed)) return undefined;
        const entry = { namespace: parsed.namespace, pod: parsed.pod, serviceAccount: parsed.serviceAccount };
        byDigest.set(key, entry);
        return entry;
      } catch {
        return undefined;
      }
    },
  };
}
