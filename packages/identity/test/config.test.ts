import { ConfigError, MeshErrorCode } from "@inmesh/core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CertificateAuthority } from "../../control-plane/src/ca.js";
import {
  createIdentityProvider,
  IDENTITY_ENV,
  parseTrustAnchors,
  resolveIdentityConfig,
} from "../src/index.js";
import { createTestCa, IDENTITY_SERVICE_NAME, scratchDir, WORKLOAD } from "./support/identity-server.js";

describe("identity configuration from the injector environment", () => {
  let ca: CertificateAuthority;
  let dir: Awaited<ReturnType<typeof scratchDir>>;
  let env: Record<string, string>;

  beforeAll(async () => {
    ca = await createTestCa();
    dir = await scratchDir();
    env = {
      LINKERD2_PROXY_IDENTITY_DIR: "/var/run/linkerd/identity/end-entity",
      LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS: ca.trustAnchorsPem,
      LINKERD2_PROXY_IDENTITY_LOCAL_NAME: WORKLOAD,
      LINKERD2_PROXY_IDENTITY_TOKEN_FILE: "/var/run/secrets/tokens/linkerd-identity-token",
      LINKERD2_PROXY_IDENTITY_SVC_ADDR: "linkerd-identity-headless.linkerd.svc.cluster.local.:8080",
      LINKERD2_PROXY_IDENTITY_SVC_NAME: IDENTITY_SERVICE_NAME,
    };
  });
  afterAll(() => dir.remove());

  function configError(run: () => unknown): ConfigError {
    try {
      run();
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigError);
      return error as ConfigError;
    }
    throw new Error("expected a ConfigError");
  }

  it("reads the variables the linkerd injector sets, with linkerd2-proxy's defaults", () => {
    const config = resolveIdentityConfig({ env });
    expect(config.localName).toBe(WORKLOAD);
    expect(config.trustAnchors.certificates).toHaveLength(1);
    expect(config.tokenFile).toBe("/var/run/secrets/tokens/linkerd-identity-token");
    expect(config.identityService).toEqual({
      host: "linkerd-identity-headless.linkerd.svc.cluster.local",
      port: 8080,
      serverName: IDENTITY_SERVICE_NAME,
      plaintext: false,
    });
    expect(config.minRefreshMs).toBe(10_000);
    expect(config.maxRefreshMs).toBe(86_400_000);
  });

  it("talks plaintext to a loopback address, and parses refresh bounds", () => {
    const config = resolveIdentityConfig({
      env: {
        ...env,
        LINKERD2_PROXY_IDENTITY_SVC_ADDR: "localhost.:8080",
        LINKERD2_PROXY_IDENTITY_SVC_NAME: "",
        LINKERD2_PROXY_IDENTITY_MIN_REFRESH: "500ms",
        LINKERD2_PROXY_IDENTITY_MAX_REFRESH: "1h",
      },
    });
    expect(config.identityService).toMatchObject({ host: "localhost", port: 8080, plaintext: true });
    expect(config.minRefreshMs).toBe(500);
    expect(config.maxRefreshMs).toBe(3_600_000);
  });

  it("lets options override every variable", async () => {
    const other = await createTestCa();
    const anchorsFile = await dir.write("anchors.pem", other.trustAnchorsPem);
    const config = resolveIdentityConfig({
      env,
      localName: "api.shop.serviceaccount.identity.linkerd.cluster.local",
      trustAnchorsFile: anchorsFile,
      tokenFile: "/tmp/token",
      identityServiceAddress: "[::1]:9999",
      minRefreshMs: 50,
      maxRefreshMs: 500,
    });
    expect(config).toMatchObject({
      localName: "api.shop.serviceaccount.identity.linkerd.cluster.local",
      tokenFile: "/tmp/token",
      trustAnchorsFile: anchorsFile,
      identityService: { host: "::1", port: 9999, plaintext: true },
      minRefreshMs: 50,
      maxRefreshMs: 500,
    });
    expect(config.trustAnchors.pem).toBe(parseTrustAnchors(other.trustAnchorsPem).pem);
    expect(
      resolveIdentityConfig({ env, trustAnchorsPem: other.trustAnchorsPem }).trustAnchors.fingerprints,
    ).toEqual(config.trustAnchors.fingerprints);
  });

  it("falls back to SERVER_ID / SERVER_NAME, which must agree", () => {
    const { LINKERD2_PROXY_IDENTITY_LOCAL_NAME: _omitted, ...withoutLocal } = env;
    const config = resolveIdentityConfig({
      env: { ...withoutLocal, [IDENTITY_ENV.serverId]: WORKLOAD, [IDENTITY_ENV.serverName]: WORKLOAD },
    });
    expect(config.localName).toBe(WORKLOAD);
    const error = configError(() =>
      resolveIdentityConfig({
        env: { ...withoutLocal, [IDENTITY_ENV.serverId]: WORKLOAD, [IDENTITY_ENV.serverName]: "x.y" },
      }),
    );
    expect(error.details).toEqual({ variable: IDENTITY_ENV.serverId });
  });

  it("names the offending variable in every error", async () => {
    const leafPem = (await ca.issueCredentials(WORKLOAD)).leafPem;
    const cases: { env?: Record<string, string>; options?: Record<string, unknown>; variable: string }[] = [
      { env: { LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS: "" }, variable: IDENTITY_ENV.trustAnchors },
      { env: { LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS: "garbage" }, variable: IDENTITY_ENV.trustAnchors },
      { env: { LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS: leafPem }, variable: IDENTITY_ENV.trustAnchors },
      { env: { LINKERD2_PROXY_IDENTITY_LOCAL_NAME: "" }, variable: IDENTITY_ENV.localName },
      { env: { LINKERD2_PROXY_IDENTITY_LOCAL_NAME: "Default.NS" }, variable: IDENTITY_ENV.localName },
      { env: { LINKERD2_PROXY_IDENTITY_TOKEN_FILE: "" }, variable: IDENTITY_ENV.tokenFile },
      { env: { LINKERD2_PROXY_IDENTITY_SVC_ADDR: "" }, variable: IDENTITY_ENV.serviceAddress },
      { env: { LINKERD2_PROXY_IDENTITY_SVC_ADDR: "no-port" }, variable: IDENTITY_ENV.serviceAddress },
      { env: { LINKERD2_PROXY_IDENTITY_SVC_NAME: "" }, variable: IDENTITY_ENV.serviceName },
      { env: { LINKERD2_PROXY_IDENTITY_MIN_REFRESH: "10 seconds" }, variable: IDENTITY_ENV.minRefresh },
      { env: { LINKERD2_PROXY_IDENTITY_MAX_REFRESH: "0s" }, variable: IDENTITY_ENV.maxRefresh },
      { env: { LINKERD2_PROXY_IDENTITY_MIN_REFRESH: "2d" }, variable: IDENTITY_ENV.maxRefresh },
      { options: { minRefreshMs: -1 }, variable: "minRefreshMs" },
      { options: { localName: "not a name" }, variable: "localName" },
      { options: { trustAnchorsFile: "/nonexistent/anchors.pem" }, variable: "trustAnchorsFile" },
      { options: { trustAnchorsPem: "" }, variable: "trustAnchorsPem" },
    ];
    for (const testCase of cases) {
      const error = configError(() =>
        resolveIdentityConfig({ env: { ...env, ...testCase.env }, ...testCase.options }),
      );
      expect(error.code).toBe(MeshErrorCode.INVALID_CONFIG);
      expect(error.details, JSON.stringify(testCase)).toEqual({ variable: testCase.variable });
    }
  });

  it("createIdentityProvider validates synchronously, before any network work", () => {
    expect(() => createIdentityProvider({ env: { ...env, LINKERD2_PROXY_IDENTITY_LOCAL_NAME: "" } })).toThrow(
      ConfigError,
    );
    expect(() => createIdentityProvider({ env, certifyTimeoutMs: 0 })).toThrow(/certifyTimeoutMs/);
    expect(() => createIdentityProvider({ env, refreshJitterRatio: 2 })).toThrow(/refreshJitterRatio/);
    // A token source replaces the token file.
    const { LINKERD2_PROXY_IDENTITY_TOKEN_FILE: _token, ...withoutToken } = env;
    expect(() => resolveIdentityConfig({ env: withoutToken })).toThrow(ConfigError);
    expect(
      resolveIdentityConfig({ env: withoutToken }, { requireTokenFile: false }).tokenFile,
    ).toBeUndefined();
  });
});
