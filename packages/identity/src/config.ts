import { readFileSync } from "node:fs";
import {
  ConfigError,
  type ControlPlaneAddress,
  type Env,
  isDnsName,
  isMeshError,
  parseControlPlaneAddress,
  parseDurationMs,
  readEnv,
} from "@inmesh/core";
import { parseTrustAnchors, type TrustAnchors } from "./anchors.js";

/** The injector's variables this package reads (contract §2.1). `_DIR` is ignored: keys stay in memory. */
export const IDENTITY_ENV = {
  trustAnchors: "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS",
  localName: "LINKERD2_PROXY_IDENTITY_LOCAL_NAME",
  serverId: "LINKERD2_PROXY_IDENTITY_SERVER_ID",
  serverName: "LINKERD2_PROXY_IDENTITY_SERVER_NAME",
  tokenFile: "LINKERD2_PROXY_IDENTITY_TOKEN_FILE",
  serviceAddress: "LINKERD2_PROXY_IDENTITY_SVC_ADDR",
  serviceName: "LINKERD2_PROXY_IDENTITY_SVC_NAME",
  minRefresh: "LINKERD2_PROXY_IDENTITY_MIN_REFRESH",
  maxRefresh: "LINKERD2_PROXY_IDENTITY_MAX_REFRESH",
} as const;

/** linkerd2-proxy defaults (`env.rs`). */
export const DEFAULT_MIN_REFRESH_MS = 10_000;
export const DEFAULT_MAX_REFRESH_MS = 86_400_000;

export interface IdentityConfigOptions {
  /** Environment to read `LINKERD2_PROXY_IDENTITY_*` from. @default process.env */
  env?: Env;
  /** Overrides LINKERD2_PROXY_IDENTITY_LOCAL_NAME. */
  localName?: string;
  /** Overrides LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS (PEM bundle). */
  trustAnchorsPem?: string;
  /** Reads the anchors from this file instead (and, in the provider, watches it for changes). */
  trustAnchorsFile?: string;
  /** Overrides LINKERD2_PROXY_IDENTITY_TOKEN_FILE. */
  tokenFile?: string;
  /** Overrides LINKERD2_PROXY_IDENTITY_SVC_ADDR (`host:port`). */
  identityServiceAddress?: string;
  /** Overrides LINKERD2_PROXY_IDENTITY_SVC_NAME (the identity service's own identity, also the SNI). */
  identityServiceName?: string;
  /** Overrides LINKERD2_PROXY_IDENTITY_MIN_REFRESH. @default 10 s */
  minRefreshMs?: number;
  /** Overrides LINKERD2_PROXY_IDENTITY_MAX_REFRESH. @default 24 h */
  maxRefreshMs?: number;
}

export interface IdentityConfig {
  /** `<sa>.<ns>.serviceaccount.identity.<cpns>.<td>`: our TLS identity and server name. */
  readonly localName: string;
  readonly trustAnchors: TrustAnchors;
  readonly trustAnchorsFile: string | undefined;
  /** undefined only when the caller supplies the token another way. */
  readonly tokenFile: string | undefined;
  /** Where Certify goes; `plaintext` when the host is loopback (contract §2.1). */
  readonly identityService: ControlPlaneAddress;
  readonly minRefreshMs: number;
  readonly maxRefreshMs: number;
}

function refreshMs(
  env: Env,
  variable: string,
  option: number | undefined,
  optionName: string,
  fallback: number,
): number {
  if (option !== undefined) {
    if (!Number.isFinite(option) || option <= 0) {
      throw new ConfigError(`${optionName} must be a positive number of milliseconds, got ${option}`, {
        details: { variable: optionName },
      });
    }
    return option;
  }
  const raw = readEnv(env, variable);
  if (raw === undefined) return fallback;
  const ms = parseDurationMs(variable, raw);
  if (ms <= 0) throw new ConfigError(`${variable} must be positive`, { details: { variable } });
  return ms;
}

function readLocalName(env: Env, options: IdentityConfigOptions): string {
  if (options.localName !== undefined) {
    if (!isDnsName(options.localName)) {
      throw new ConfigError(`localName ${JSON.stringify(options.localName)} is not a lower-case DNS name`, {
        details: { variable: "localName" },
      });
    }
    return options.localName;
  }
  let variable: string = IDENTITY_ENV.localName;
  let name = readEnv(env, variable);
  if (name === undefined) {
    // linkerd2-proxy falls back to SERVER_ID/SERVER_NAME, which must agree for a Linkerd identity.
    const id = readEnv(env, IDENTITY_ENV.serverId);
    const serverName = readEnv(env, IDENTITY_ENV.serverName);
    if (id === undefined || serverName === undefined) {
      throw new ConfigError(`${IDENTITY_ENV.localName} is required but not set`, {
        details: { variable: IDENTITY_ENV.localName },
      });
    }
    if (id !== serverName) {
      throw new ConfigError(
        `${IDENTITY_ENV.serverId} and ${IDENTITY_ENV.serverName} must be equal for a Linkerd identity`,
        {
          details: { variable: IDENTITY_ENV.serverId },
        },
      );
    }
    variable = IDENTITY_ENV.serverId;
    name = id;
  }
  if (!isDnsName(name)) {
    throw new ConfigError(`${variable}=${JSON.stringify(name)} is not a lower-case DNS name`, {
      details: { variable },
    });
  }
  return name;
}

function readTrustAnchors(env: Env, options: IdentityConfigOptions): TrustAnchors {
  let variable: string;
  let pem: string | undefined;
  if (options.trustAnchorsPem !== undefined) {
    variable = "trustAnchorsPem";
    pem = options.trustAnchorsPem;
  } else if (options.trustAnchorsFile !== undefined) {
    variable = "trustAnchorsFile";
    try {
      pem = readFileSync(options.trustAnchorsFile, "utf8");
    } catch (error) {
      throw new ConfigError(
        `trustAnchorsFile ${options.trustAnchorsFile} cannot be read: ${(error as Error).message}`,
        {
          cause: error,
          details: { variable },
        },
      );
    }
  } else {
    variable = IDENTITY_ENV.trustAnchors;
    pem = readEnv(env, variable);
    if (pem === undefined)
      throw new ConfigError(`${variable} is required but not set`, { details: { variable } });
  }
  try {
    return parseTrustAnchors(pem);
  } catch (error) {
    throw new ConfigError(`${variable}: ${isMeshError(error) ? error.message : String(error)}`, {
      cause: error,
      details: { variable },
    });
  }
}

/**
 * Resolves identity settings from the injector environment (contract §2.1), each overridable by an
 * option. Invalid or missing settings throw ConfigError with `details.variable` naming the setting.
 * `requireTokenFile: false` lets a caller that supplies the token in memory omit the file.
 */
export function resolveIdentityConfig(
  options: IdentityConfigOptions = {},
  requirements: { requireTokenFile?: boolean } = {},
): IdentityConfig {
  const env = options.env ?? process.env;
  const localName = readLocalName(env, options);
  const trustAnchors = readTrustAnchors(env, options);

  const tokenFile = options.tokenFile ?? readEnv(env, IDENTITY_ENV.tokenFile);
  if (tokenFile === undefined && requirements.requireTokenFile !== false) {
    throw new ConfigError(`${IDENTITY_ENV.tokenFile} is required but not set`, {
      details: { variable: IDENTITY_ENV.tokenFile },
    });
  }

  // Options become the same variables, so one parser applies linkerd2-proxy's parse_control_addr rules.
  const addressEnv: Record<string, string | undefined> = {
    [IDENTITY_ENV.serviceAddress]: options.identityServiceAddress ?? env[IDENTITY_ENV.serviceAddress],
    [IDENTITY_ENV.serviceName]: options.identityServiceName ?? env[IDENTITY_ENV.serviceName],
  };
  const identityService = parseControlPlaneAddress(addressEnv, "LINKERD2_PROXY_IDENTITY");
  if (identityService === undefined) {
    throw new ConfigError(`${IDENTITY_ENV.serviceAddress} is required but not set`, {
      details: { variable: IDENTITY_ENV.serviceAddress },
    });
  }
  if (identityService.serverName !== undefined && !isDnsName(identityService.serverName)) {
    throw new ConfigError(`${IDENTITY_ENV.serviceName} is not a lower-case DNS name`, {
      details: { variable: IDENTITY_ENV.serviceName },
    });
  }

  const minRefreshMs = refreshMs(
    env,
    IDENTITY_ENV.minRefresh,
    options.minRefreshMs,
    "minRefreshMs",
    DEFAULT_MIN_REFRESH_MS,
  );
  const maxRefreshMs = refreshMs(
    env,
    IDENTITY_ENV.maxRefresh,
    options.maxRefreshMs,
    "maxRefreshMs",
    DEFAULT_MAX_REFRESH_MS,
  );
  if (minRefreshMs > maxRefreshMs) {
    throw new ConfigError(
      `minimum refresh (${minRefreshMs} ms) exceeds maximum refresh (${maxRefreshMs} ms)`,
      {
        details: { variable: options.maxRefreshMs === undefined ? IDENTITY_ENV.maxRefresh : "maxRefreshMs" },
      },
    );
  }
  return {
    localName,
    trustAnchors,
    trustAnchorsFile: options.trustAnchorsFile,
    tokenFile,
    identityService,
    minRefreshMs,
    maxRefreshMs,
  };
}
