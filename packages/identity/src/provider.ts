import { channel } from "node:diagnostics_channel";
import { type Stats, unwatchFile, watchFile } from "node:fs";
import { open, readFile } from "node:fs/promises";
import type { Socket } from "node:net";
import { performance } from "node:perf_hooks";
import { setTimeout as wait } from "node:timers/promises";
import type { ConnectionOptions, PeerCertificate, SecureContext, TLSSocket, TlsOptions } from "node:tls";
import { debuglog } from "node:util";
import {
  type BackoffOptions,
  ConfigError,
  closeOnce,
  createBackoff,
  IdentityError,
  isDnsName,
  keepProcessAlive,
  MeshChannel,
  MeshError,
  MeshErrorCode,
  meshChannel,
  type PeerIdentity,
  secureRandom,
} from "@inmesh/core";
import { parseTrustAnchors, type TrustAnchors } from "./anchors.js";
import { certifyIdentity, type IssuedIdentity } from "./certify.js";
import { type IdentityConfig, type IdentityConfigOptions, resolveIdentityConfig } from "./config.js";
import { createMeshSecureContext, MESH_SERVER_SECURE_OPTIONS, MESH_TLS_SETTINGS } from "./context.js";
import { createIdentityKey, type IdentityKey } from "./keys.js";
import { derToPem } from "./pem.js";
import { createServerIdentityCheck, type PeerVerification, peerVerification } from "./tls.js";
import { verifyPeerCertificateChain } from "./verify.js";

const log = debuglog("mesh");

export type IdentityStatus = "pending" | "ready" | "expired" | "closed";

export interface IdentityState {
  readonly status: IdentityStatus;
  /** A valid certificate is installed and usable right now. */
  readonly ready: boolean;
  readonly localName: string;
  /** Hex serial of the current (or last, when expired) certificate. */
  readonly serial: string | undefined;
  /** Wall-clock notAfter of the current certificate (for metrics: time left). */
  readonly notAfterMs: number | undefined;
  /** Monotonic time left before the current certificate expires; ≤ 0 once expired. */
  readonly expiresInMs: number | undefined;
  /** Increments with every installed certificate; 0 before the first. */
  readonly certificateGeneration: number;
  /** Increments with every accepted trust-anchor bundle; 1 for the initial bundle. */
  readonly trustAnchorsGeneration: number;
  /** When the next Certify attempt is due (monotonic ms from now), if one is scheduled. */
  readonly nextRefreshInMs: number | undefined;
  readonly consecutiveFailures: number;
  readonly lastError: MeshError | undefined;
}

/** Everything a TLS consumer needs for one (certificate, trust anchors) generation. */
export interface IdentityMaterial {
  readonly localName: string;
  readonly certificateGeneration: number;
  readonly trustAnchorsGeneration: number;
  readonly serial: string;
  readonly notAfterMs: number;
  /** Leaf followed by the intermediates, PEM. */
  readonly certificateChainPem: string;
  /** PKCS#8 PEM; in memory only (grpc-js certificate providers need it). */
  readonly privateKeyPem: string;
  readonly trustAnchorsPem: string;
  /** For inbound: carries `ca` = anchors (client certificates checked by OpenSSL), no session tickets. */
  readonly serverSecureContext: SecureContext;
  /** For outbound: presents our certificate, verifies servers against the anchors only. */
  readonly clientSecureContext: SecureContext;
}

export interface IdentityIssuedEvent {
  readonly localName: string;
  readonly serial: string;
  readonly notAfterMs: number;
  readonly certificateGeneration: number;
}

export interface IdentityFailedEvent {
  readonly localName: string;
  /** What failed: a Certify attempt, or reading/parsing a watched trust-anchor file. */
  readonly operation: "certify" | "trust-anchors";
  readonly error: MeshError;
  readonly consecutiveFailures: number;
  /** Whether a valid certificate is still being served. */
  readonly hasValidCertificate: boolean;
  readonly nextAttemptInMs: number | undefined;
}

export interface IdentityExpiredEvent {
  readonly localName: string;
  readonly serial: string;
  readonly notAfterMs: number;
}

export interface TrustAnchorsUpdatedEvent {
  readonly localName: string;
  readonly trustAnchorsGeneration: number;
  readonly fingerprints: readonly string[];
}

export interface IdentityEvents {
  issued: IdentityIssuedEvent;
  refreshed: IdentityIssuedEvent;
  failed: IdentityFailedEvent;
  expired: IdentityExpiredEvent;
  "anchors-updated": TrustAnchorsUpdatedEvent;
}

export interface TlsServerOptionsInput {
  /**
   * Refuse handshakes whose SNI is not our identity. Linkerd never terminates TLS for another SNI
   * (it passes it through), and a ClientHello without SNI gets no certificate either way.
   * @default true
   */
  requireSniMatch?: boolean;
}

export interface IdentityProvider extends AsyncDisposable {
  readonly localName: string;
  /**
   * Resolves once a certificate is installed and valid; rejects on abort or close. Keeps the process
   * alive while it waits.
   */
  ready(options?: { signal?: AbortSignal }): Promise<void>;
  state(): IdentityState;
  /** Runs a Certify attempt now (single-flight); rejects with that attempt's error. */
  refresh(): Promise<void>;
  /**
   * Replaces the trust anchors (a bundle may hold old and new roots). New connections use new
   * contexts; existing ones continue. Throws IdentityError(MESH_ERR_TRUST_ANCHORS_INVALID) and keeps
   * the current anchors when the bundle is invalid. Returns false when the bundle is unchanged.
   */
  setTrustAnchors(pem: string): boolean;
  trustAnchors(): TrustAnchors;
  /** Current material; throws IdentityError NOT_READY / EXPIRED (fast, synchronous). */
  material(): IdentityMaterial;
  /**
   * Called with the current material now (when ready) and on every change; `null` when the
   * certificate expires. Returns an unsubscribe function. For grpc-js certificate providers.
   */
  subscribe(listener: (material: IdentityMaterial | null) => void): () => void;
  on<E extends keyof IdentityEvents>(event: E, listener: (payload: IdentityEvents[E]) => void): () => void;
  /** Throws IdentityError NOT_READY / EXPIRED. */
  serverSecureContext(): SecureContext;
  /** Throws IdentityError NOT_READY / EXPIRED. */
  clientSecureContext(): SecureContext;
  /**
   * Options for `tls.createServer` / `new tls.TLSSocket(…, {isServer: true, …})`: TLS 1.3 only,
   * client certificates requested but optional (checked by OpenSSL against the anchors), and an
   * SNICallback that hands out the current generation's context and never throws (CVE-2026-21637).
   */
  tlsServerOptions(options?: TlsServerOptionsInput): TlsOptions;
  /**
   * Options for `tls.connect` to a meshed server: the current client context, SNI = the expected
   * identity, and a check that the server's single DNS SAN is that identity. Throws IdentityError
   * NOT_READY / EXPIRED synchronously, so callers fail fast.
   */
  tlsClientOptions(expectedServerIdentity: string): ConnectionOptions;
  /** The `checkServerIdentity` used by tlsClientOptions, for connectors that build their own options. */
  checkServerIdentity(
    expectedServerIdentity: string,
  ): (host: string, cert: PeerCertificate) => Error | undefined;
  /** Peer identity of a connection accepted with tlsServerOptions/serverSecureContext (cached per socket). */
  peerIdentity(socket: Socket | TLSSocket): PeerIdentity;
  peerVerification(socket: Socket | TLSSocket): PeerVerification;
  close(): Promise<void>;
}

export interface IdentityProviderOptions extends IdentityConfigOptions {
  /** Supplies the token instead of LINKERD2_PROXY_IDENTITY_TOKEN_FILE (called on every attempt). */
  readToken?: () => Uint8Array | string | Promise<Uint8Array | string>;
  /** TLS to the identity service even on a loopback address (contract §2.1 says plaintext). @default false */
  tlsOnLoopback?: boolean;
  /** Deadline of one Certify call. @default 10000 */
  certifyTimeoutMs?: number;
  /** Each refresh delay is shortened by up to this fraction, at random (spreads a fleet). @default 0.1 */
  refreshJitterRatio?: number;
  /** Retry schedule while no valid certificate is held. @default 100 ms doubling up to minRefreshMs */
  retryBackoff?: BackoffOptions;
  /** How far in the future an issued certificate's notBefore may lie (clock skew to the issuer). @default 60000 */
  clockSkewToleranceMs?: number;
  /** Poll interval of trustAnchorsFile. @default 5000 */
  trustAnchorsPollIntervalMs?: number;
}

/** Linkerd's refresh rule: 70% of the time left, jittered, clamped to [min, max]. */
export function refreshDelayMs(
  remainingMs: number,
  options: { minRefreshMs: number; maxRefreshMs: number; jitterRatio: number; random?: () => number },
): number {
  const base = Math.max(0, remainingMs) * 0.7;
  const jittered = base * (1 - options.jitterRatio * (options.random ?? secureRandom)());
  return Math.min(options.maxRefreshMs, Math.max(options.minRefreshMs, jittered));
}

const MAX_TOKEN_BYTES = 64 * 1024;
const MAX_TIMER_MS = 2 ** 31 - 1;

const summaryChannel = meshChannel(MeshChannel.identityChanged);

const channels = {
  issued: channel("mesh:identity:issued"),
  refreshed: channel("mesh:identity:refreshed"),
  failed: channel("mesh:identity:failed"),
  expired: channel("mesh:identity:expired"),
  "anchors-updated": channel("mesh:identity:anchors-updated"),
} as const;

async function readTokenFile(path: string): Promise<Buffer> {
  const handle = await open(path, "r");
  try {
    const buffer = Buffer.alloc(MAX_TOKEN_BYTES + 1);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
    if (bytesRead > MAX_TOKEN_BYTES) throw new Error(`token file is larger than ${MAX_TOKEN_BYTES} bytes`);
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

function positive(name: string, value: number | undefined, fallback: number, allowZero = false): number {
  const result = value ?? fallback;
  if (!Number.isFinite(result) || result < 0 || (!allowZero && result === 0)) {
    throw new ConfigError(
      `${name} must be a ${allowZero ? "non-negative" : "positive"} number, got ${result}`,
      {
        details: { variable: name },
      },
    );
  }
  return result;
}

interface TimerSlot {
  timer: NodeJS.Timeout | undefined;
}

interface Installed {
  readonly issued: IssuedIdentity;
  readonly chainPem: string;
  readonly expiresAtMono: number;
  readonly certificateGeneration: number;
  material: IdentityMaterial;
}

/**
 * Creates the workload's identity: generates a P-256 key in memory, obtains a certificate from the
 * identity service with `Certify`, refreshes it at 70% of its lifetime, and exposes one SecureContext
 * per certificate and trust-anchor generation. Starts immediately; `ready()` tells when usable.
 * Throws ConfigError synchronously for invalid options or environment.
 */
export function createIdentityProvider(options: IdentityProviderOptions = {}): IdentityProvider {
  const config: IdentityConfig = resolveIdentityConfig(options, {
    requireTokenFile: options.readToken === undefined,
  });
  const localName = config.localName;
  const certifyTimeoutMs = positive("certifyTimeoutMs", options.certifyTimeoutMs, 10_000);
  const jitterRatio = positive("refreshJitterRatio", options.refreshJitterRatio, 0.1, true);
  if (jitterRatio > 1) {
    throw new ConfigError("refreshJitterRatio must be within 0..1", {
      details: { variable: "refreshJitterRatio" },
    });
  }
  const clockSkewToleranceMs = positive("clockSkewToleranceMs", options.clockSkewToleranceMs, 60_000, true);
  const pollIntervalMs = positive("trustAnchorsPollIntervalMs", options.trustAnchorsPollIntervalMs, 5000);
  const backoff = createBackoff({
    minMs: Math.min(100, config.minRefreshMs),
    maxMs: config.minRefreshMs,
    ...options.retryBackoff,
  });

  let anchors = config.trustAnchors;
  let trustAnchorsGeneration = 1;
  let certificateGeneration = 0;
  let status: IdentityStatus = "pending";
  let current: Installed | undefined;
  let consecutiveFailures = 0;
  let lastError: MeshError | undefined;
  let refreshDueAtMono: number | undefined;
  let inflight: Promise<void> | undefined;
  const attemptAbort = new AbortController();
  const waiters = new Set<{ resolve: () => void; reject: (error: unknown) => void }>();
  const subscribers = new Set<(material: IdentityMaterial | null) => void>();
  const listeners = new Map<keyof IdentityEvents, Set<(payload: never) => void>>();

  const emit = <E extends keyof IdentityEvents>(event: E, payload: IdentityEvents[E]) => {
    for (const listener of listeners.get(event) ?? []) {
      try {
        (listener as (payload: IdentityEvents[E]) => void)(payload);
      } catch (error) {
        log("identity %s listener threw: %s", event, (error as Error)?.message);
      }
    }
    const diagnostics = channels[event];
    if (diagnostics.hasSubscribers) diagnostics.publish(payload);
    // One summary channel for every state change, which the admin metrics (certificate expiry,
    // refreshes by result) and anything else generic subscribe to.
    if (summaryChannel.hasSubscribers) {
      summaryChannel.publish({
        status: event,
        expiresAtMs: current?.issued.notAfterMs,
        serial: current?.issued.serial,
      });
    }
  };

  const notifySubscribers = (material: IdentityMaterial | null) => {
    for (const subscriber of subscribers) {
      try {
        subscriber(material);
      } catch (error) {
        log("identity subscriber threw: %s", (error as Error)?.message);
      }
    }
  };

  const keyPromise = createIdentityKey(localName);
  // A failure here surfaces through the first attempt; this keeps it from being unhandled meanwhile.
  keyPromise.catch(() => undefined);

  const clearSlot = (slot: TimerSlot) => {
    if (slot.timer) clearTimeout(slot.timer);
    slot.timer = undefined;
  };
  /** Arms a timer for a possibly very long delay (setTimeout caps at ~24.8 days); never keeps the process alive. */
  const armSlot = (slot: TimerSlot, delayMs: number, fn: () => void) => {
    clearSlot(slot);
    const remainingMs = Math.max(0, delayMs);
    slot.timer = setTimeout(
      () => {
        slot.timer = undefined;
        if (remainingMs > MAX_TIMER_MS) armSlot(slot, remainingMs - MAX_TIMER_MS, fn);
        else fn();
      },
      Math.min(remainingMs, MAX_TIMER_MS),
    );
    slot.timer.unref();
  };
  const refreshSlot: TimerSlot = { timer: undefined };
  const expirySlot: TimerSlot = { timer: undefined };

  const isExpired = (installed: Installed) =>
    performance.now() >= installed.expiresAtMono || Date.now() >= installed.issued.notAfterMs;

  const scheduleAttempt = (delayMs: number) => {
    if (status === "closed") return;
    refreshDueAtMono = performance.now() + delayMs;
    armSlot(refreshSlot, delayMs, () => {
      refreshDueAtMono = undefined;
      runAttempt().catch(() => undefined);
    });
  };

  const markExpired = () => {
    if (status !== "ready" || !current) return;
    status = "expired";
    clearSlot(expirySlot);
    log("identity %s: certificate %s expired", localName, current.issued.serial);
    emit("expired", { localName, serial: current.issued.serial, notAfterMs: current.issued.notAfterMs });
    notifySubscribers(null);
    // Retry soon if nothing is due sooner: the certificate is gone, so waiting for 70% makes no sense.
    const soon = backoff.next();
    if (
      inflight === undefined &&
      (refreshDueAtMono === undefined || refreshDueAtMono - performance.now() > soon)
    ) {
      scheduleAttempt(soon);
    }
  };

  const usable = (): Installed => {
    if (status === "closed") throw new MeshError(MeshErrorCode.CLOSED, "the identity provider is closed");
    if (!current) {
      throw new IdentityError(
        MeshErrorCode.IDENTITY_NOT_READY,
        `identity ${localName} has no certificate yet`,
      );
    }
    if (status === "ready" && isExpired(current)) markExpired();
    if (status !== "ready") {
      throw new IdentityError(
        MeshErrorCode.IDENTITY_EXPIRED,
        `the certificate of ${localName} expired at ${new Date(current.issued.notAfterMs).toISOString()}; refresh is failing`,
        { details: { serial: current.issued.serial, notAfterMs: current.issued.notAfterMs } },
      );
    }
    return current;
  };

  const buildMaterial = (
    privateKeyPem: string,
    issued: IssuedIdentity,
    chainPem: string,
    generation: number,
  ) => {
    const base = { privateKeyPem, certificateChainPem: chainPem, trustAnchorsPem: anchors.pem };
    let clientSecureContext: SecureContext | undefined;
    const material: IdentityMaterial = {
      localName,
      certificateGeneration: generation,
      trustAnchorsGeneration,
      serial: issued.serial,
      notAfterMs: issued.notAfterMs,
      certificateChainPem: chainPem,
      privateKeyPem,
      trustAnchorsPem: anchors.pem,
      // Built here, so OpenSSL refusing the key, chain or anchors fails the install, not a handshake.
      serverSecureContext: createMeshSecureContext({ ...base, role: "server" }),
      // Built on first use from the same inputs the server context just accepted: an inbound-only
      // service never pays for it, and a rotation's tick builds one context, not two (each is ~1.6 ms of
      // synchronous OpenSSL work on Node 20; S7 bounds the longest tick at 10 ms).
      get clientSecureContext() {
        clientSecureContext ??= createMeshSecureContext({ ...base, role: "client" });
        return clientSecureContext;
      },
    };
    return material;
  };

  const install = (installedKey: IdentityKey, issued: IssuedIdentity) => {
    const chainPem = derToPem(issued.leafDer) + issued.intermediatesDer.map((der) => derToPem(der)).join("");
    const generation = certificateGeneration + 1;
    const material = buildMaterial(installedKey.privateKeyPem, issued, chainPem, generation);
    certificateGeneration = generation;
    const first = current === undefined;
    current = {
      issued,
      chainPem,
      certificateGeneration: generation,
      expiresAtMono: performance.now() + (issued.notAfterMs - Date.now()),
      material,
    };
    status = "ready";
    const installed = current;
    armSlot(expirySlot, installed.expiresAtMono - performance.now(), () => {
      if (current === installed) markExpired();
    });
    log("identity %s: installed certificate %s (generation %d)", localName, issued.serial, generation);
    const event = {
      localName,
      serial: issued.serial,
      notAfterMs: issued.notAfterMs,
      certificateGeneration: generation,
    };
    emit(first ? "issued" : "refreshed", event);
    notifySubscribers(material);
    for (const waiter of waiters) waiter.resolve();
    waiters.clear();
  };

  const readToken = async (): Promise<Uint8Array> => {
    let token: Uint8Array | string;
    try {
      if (options.readToken) token = await options.readToken();
      else token = await readTokenFile(config.tokenFile as string);
    } catch (error) {
      throw new IdentityError(
        MeshErrorCode.IDENTITY_CERTIFY_FAILED,
        `cannot read the identity token: ${(error as Error).message}`,
        {
          cause: error,
          details: { reason: "token-unreadable" },
        },
      );
    }
    const bytes = typeof token === "string" ? Buffer.from(token) : token;
    if (bytes.byteLength === 0) {
      throw new IdentityError(MeshErrorCode.IDENTITY_CERTIFY_FAILED, "the identity token is empty", {
        details: { reason: "token-empty" },
      });
    }
    return bytes;
  };

  /** `release` ends the single-flight window before results are published, so listeners may start the next attempt. */
  const attemptOnce = async (release: () => void): Promise<void> => {
    clearSlot(refreshSlot);
    refreshDueAtMono = undefined;
    try {
      const installedKey = await keyPromise;
      const token = await readToken();
      const issued = await certifyIdentity(
        {
          address: config.identityService,
          tlsOnLoopback: options.tlsOnLoopback === true,
          timeoutMs: certifyTimeoutMs,
        },
        {
          key: installedKey,
          token,
          trustAnchors: anchors,
          clockSkewToleranceMs,
          signal: attemptAbort.signal,
        },
      );
      // The response was decoded and its chain verified in this turn of the event loop; installing (a
      // SecureContext) waits until I/O was polled once more, so requests that queued meanwhile are served
      // between the two stretches instead of after both (S7). An immediate would run before that poll.
      await wait(1, undefined, { ref: false });
      release();
      if (status === "closed") return;
      install(installedKey, issued);
      consecutiveFailures = 0;
      lastError = undefined;
      backoff.reset();
      scheduleAttempt(
        refreshDelayMs(issued.notAfterMs - Date.now(), {
          minRefreshMs: config.minRefreshMs,
          maxRefreshMs: config.maxRefreshMs,
          jitterRatio,
        }),
      );
    } catch (error) {
      release();
      if (status === "closed") return;
      const meshError = MeshError.from(error, MeshErrorCode.IDENTITY_CERTIFY_FAILED);
      consecutiveFailures += 1;
      lastError = meshError;
      const valid = current !== undefined && status === "ready" && !isExpired(current);
      // Keep the current certificate; retry at 70% of what is left (Linkerd), or back off when none is valid.
      const delay =
        valid && current
          ? refreshDelayMs(current.expiresAtMono - performance.now(), {
              minRefreshMs: config.minRefreshMs,
              maxRefreshMs: config.maxRefreshMs,
              jitterRatio,
            })
          : backoff.next();
      scheduleAttempt(delay);
      log(
        "identity %s: Certify failed (%s); next attempt in %d ms",
        localName,
        meshError.message,
        Math.round(delay),
      );
      emit("failed", {
        localName,
        operation: "certify",
        error: meshError,
        consecutiveFailures,
        hasValidCertificate: valid,
        nextAttemptInMs: delay,
      });
      throw meshError;
    }
  };

  const runAttempt = (): Promise<void> => {
    if (status === "closed")
      return Promise.reject(new MeshError(MeshErrorCode.CLOSED, "the identity provider is closed"));
    if (inflight) return inflight;
    const attempt: { promise?: Promise<void> } = {};
    const release = () => {
      if (inflight === attempt.promise) inflight = undefined;
    };
    // attemptOnce awaits before it can call release, so attempt.promise is set by then.
    attempt.promise = attemptOnce(release);
    inflight = attempt.promise;
    attempt.promise.then(release, release);
    return attempt.promise;
  };

  const setTrustAnchors = (pem: string): boolean => {
    if (status === "closed") throw new MeshError(MeshErrorCode.CLOSED, "the identity provider is closed");
    const next = parseTrustAnchors(pem);
    if (next.pem === anchors.pem) return false;
    const previous = anchors;
    anchors = next;
    trustAnchorsGeneration += 1;
    const installed = current;
    if (installed) {
      try {
        installed.material = buildMaterial(
          installed.material.privateKeyPem,
          installed.issued,
          installed.chainPem,
          installed.certificateGeneration,
        );
      } catch (error) {
        anchors = previous;
        trustAnchorsGeneration -= 1;
        throw new IdentityError(
          MeshErrorCode.TRUST_ANCHORS_INVALID,
          `OpenSSL refused the trust anchors: ${(error as Error).message}`,
          {
            cause: error,
          },
        );
      }
    }
    log("identity %s: trust anchors updated (generation %d)", localName, trustAnchorsGeneration);
    emit("anchors-updated", { localName, trustAnchorsGeneration, fingerprints: next.fingerprints });
    if (installed && status === "ready") notifySubscribers(installed.material);
    // When our own chain no longer verifies against the new bundle, peers will refuse us: renew now.
    if (installed) {
      const verdict = verifyPeerCertificateChain(
        installed.issued.leafDer,
        installed.issued.intermediatesDer,
        anchors,
        {
          expectedIdentity: localName,
          purpose: "both",
          clockSkewToleranceMs,
        },
      );
      if (!verdict.ok) runAttempt().catch(() => undefined);
    }
    return true;
  };

  let lastAnchorsFileStat: Pick<Stats, "mtimeMs" | "size" | "ino"> | undefined;
  const onAnchorsFileChange = (stats: Stats) => {
    if (
      lastAnchorsFileStat &&
      stats.mtimeMs === lastAnchorsFileStat.mtimeMs &&
      stats.size === lastAnchorsFileStat.size &&
      stats.ino === lastAnchorsFileStat.ino
    ) {
      return;
    }
    lastAnchorsFileStat = { mtimeMs: stats.mtimeMs, size: stats.size, ino: stats.ino };
    const path = config.trustAnchorsFile as string;
    readFile(path, "utf8")
      .then((pem) => {
        if (status !== "closed") setTrustAnchors(pem);
      })
      .catch((error: unknown) => {
        if (status === "closed") return;
        const meshError = MeshError.from(error, MeshErrorCode.TRUST_ANCHORS_INVALID);
        log("identity %s: trust-anchor file %s rejected: %s", localName, path, meshError.message);
        emit("failed", {
          localName,
          operation: "trust-anchors",
          error: meshError,
          consecutiveFailures,
          hasValidCertificate: current !== undefined && status === "ready",
          nextAttemptInMs: undefined,
        });
      });
  };
  if (config.trustAnchorsFile !== undefined) {
    watchFile(config.trustAnchorsFile, { interval: pollIntervalMs, persistent: false }, onAnchorsFileChange);
  }

  const lifecycle = closeOnce(async () => {
    status = "closed";
    attemptAbort.abort(new MeshError(MeshErrorCode.CLOSED, "the identity provider is closed"));
    clearSlot(refreshSlot);
    clearSlot(expirySlot);
    if (config.trustAnchorsFile !== undefined) unwatchFile(config.trustAnchorsFile, onAnchorsFileChange);
    const closedError = new MeshError(MeshErrorCode.CLOSED, "the identity provider is closed");
    for (const waiter of waiters) waiter.reject(closedError);
    waiters.clear();
    subscribers.clear();
    listeners.clear();
    await inflight?.catch(() => undefined);
  });

  const clientOptions = (expected: string): ConnectionOptions => {
    if (!isDnsName(expected)) {
      throw new MeshError(
        MeshErrorCode.INVALID_ARG,
        `expected server identity ${JSON.stringify(expected)} is not a DNS name`,
      );
    }
    const installed = usable();
    return {
      secureContext: installed.material.clientSecureContext,
      servername: expected,
      ...MESH_TLS_SETTINGS,
      rejectUnauthorized: true,
      checkServerIdentity: createServerIdentityCheck(expected),
    };
  };

  runAttempt().catch(() => undefined);

  return {
    localName,
    ready({ signal } = {}) {
      if (status === "closed")
        return Promise.reject(new MeshError(MeshErrorCode.CLOSED, "the identity provider is closed"));
      if (current && status === "ready" && !isExpired(current)) return Promise.resolve();
      if (signal?.aborted) return Promise.reject(MeshError.from(signal.reason, MeshErrorCode.CANCELED));
      return new Promise<void>((resolve, reject) => {
        // Its timers and channel are unref'd; this wait holds the process itself.
        const release = keepProcessAlive();
        const onAbort = () => {
          release();
          waiters.delete(waiter);
          reject(MeshError.from(signal?.reason, MeshErrorCode.CANCELED));
        };
        const waiter = {
          resolve: () => {
            release();
            signal?.removeEventListener("abort", onAbort);
            resolve();
          },
          reject: (error: unknown) => {
            release();
            signal?.removeEventListener("abort", onAbort);
            reject(error);
          },
        };
        waiters.add(waiter);
        signal?.addEventListener("abort", onAbort, { once: true });
      });
    },
    state() {
      if (current && status === "ready" && isExpired(current)) markExpired();
      const now = performance.now();
      return {
        status,
        ready: status === "ready",
        localName,
        serial: current?.issued.serial,
        notAfterMs: current?.issued.notAfterMs,
        expiresInMs: current ? current.expiresAtMono - now : undefined,
        certificateGeneration,
        trustAnchorsGeneration,
        nextRefreshInMs: refreshDueAtMono === undefined ? undefined : Math.max(0, refreshDueAtMono - now),
        consecutiveFailures,
        lastError,
      };
    },
    refresh: runAttempt,
    setTrustAnchors,
    trustAnchors: () => anchors,
    material: () => usable().material,
    subscribe(listener) {
      subscribers.add(listener);
      if (current && status === "ready" && !isExpired(current)) {
        try {
          listener(current.material);
        } catch (error) {
          log("identity subscriber threw: %s", (error as Error)?.message);
        }
      }
      return () => {
        subscribers.delete(listener);
      };
    },
    on(event, listener) {
      let set = listeners.get(event);
      if (!set) {
        set = new Set();
        listeners.set(event, set);
      }
      set.add(listener as (payload: never) => void);
      return () => {
        set.delete(listener as (payload: never) => void);
      };
    },
    serverSecureContext: () => usable().material.serverSecureContext,
    clientSecureContext: () => usable().material.clientSecureContext,
    tlsServerOptions(input = {}) {
      const requireSniMatch = input.requireSniMatch ?? true;
      return {
        ...MESH_TLS_SETTINGS,
        requestCert: true,
        // The chain is still verified by OpenSSL; the verdict is read per connection by peerIdentity().
        rejectUnauthorized: false,
        secureOptions: MESH_SERVER_SECURE_OPTIONS,
        SNICallback(servername, callback) {
          // Never throw from here: a synchronous throw crashed Node before 20.20.2 (CVE-2026-21637).
          try {
            if (requireSniMatch && servername !== localName) {
              callback(
                new IdentityError(
                  MeshErrorCode.IDENTITY_PEER_MISMATCH,
                  "TLS server name is not this workload's identity",
                  {
                    details: { reason: "sni-mismatch" },
                  },
                ),
                undefined,
              );
              return;
            }
            callback(null, usable().material.serverSecureContext);
          } catch (error) {
            callback(error instanceof Error ? error : new Error(String(error)), undefined);
          }
        },
      };
    },
    tlsClientOptions: clientOptions,
    checkServerIdentity: (expected) => createServerIdentityCheck(expected),
    peerIdentity: (socket) => peerVerification(socket, { purpose: "client" }).identity,
    peerVerification: (socket) => peerVerification(socket, { purpose: "client" }),
    close: lifecycle.close,
    [Symbol.asyncDispose]: lifecycle.close,
  };
}
