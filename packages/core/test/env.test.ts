import { describe, expect, it } from "vitest";
import {
  ConfigError,
  isDnsName,
  parseBooleanEnv,
  parseCidrList,
  parseControlPlaneAddress,
  parseDurationMs,
  parseHostPort,
  parsePortList,
  requireEnv,
} from "../src/index.js";

function variableOf(run: () => unknown): unknown {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as ConfigError).details?.variable;
  }
  throw new Error("expected ConfigError");
}

describe("environment parsing", () => {
  it("durations in Linkerd's format", () => {
    expect(parseDurationMs("X", "100ms")).toBe(100);
    expect(parseDurationMs("X", "10s")).toBe(10_000);
    expect(parseDurationMs("X", "5m")).toBe(300_000);
    expect(parseDurationMs("X", "1h")).toBe(3_600_000);
    expect(parseDurationMs("X", "1d")).toBe(86_400_000);
    expect(variableOf(() => parseDurationMs("LINKERD2_PROXY_IDENTITY_MIN_REFRESH", "10"))).toBe(
      "LINKERD2_PROXY_IDENTITY_MIN_REFRESH",
    );
    expect(variableOf(() => parseDurationMs("X", "-1s"))).toBe("X");
  });

  it("port lists with ranges", () => {
    expect([...parsePortList("P", "25,587, 3306-3308")]).toEqual([25, 587, 3306, 3307, 3308]);
    expect(variableOf(() => parsePortList("P", "0"))).toBe("P");
    expect(variableOf(() => parsePortList("P", "10-5"))).toBe("P");
    expect(variableOf(() => parsePortList("P", "http"))).toBe("P");
  });

  it("CIDR lists", () => {
    expect(parseCidrList("N", "10.0.0.0/8, fd00::/8").map((n) => n.prefixLength)).toEqual([8, 8]);
    expect(variableOf(() => parseCidrList("N", "10.0.0.0/33"))).toBe("N");
    expect(variableOf(() => parseCidrList("N", "300.0.0.1/8"))).toBe("N");
  });

  it("booleans and required values", () => {
    expect(parseBooleanEnv("B", "TRUE")).toBe(true);
    expect(parseBooleanEnv("B", "0")).toBe(false);
    expect(variableOf(() => parseBooleanEnv("B", "yes"))).toBe("B");
    expect(variableOf(() => requireEnv({}, "LINKERD2_PROXY_IDENTITY_LOCAL_NAME"))).toBe(
      "LINKERD2_PROXY_IDENTITY_LOCAL_NAME",
    );
  });

  it("host:port including FQDNs with a trailing dot and IPv6", () => {
    expect(parseHostPort("A", "linkerd-identity-headless.linkerd.svc.cluster.local.:8080")).toEqual({
      host: "linkerd-identity-headless.linkerd.svc.cluster.local",
      port: 8080,
    });
    expect(parseHostPort("A", "[::1]:8086")).toEqual({ host: "::1", port: 8086 });
    expect(variableOf(() => parseHostPort("A", "no-port"))).toBe("A");
    expect(variableOf(() => parseHostPort("A", "h:70000"))).toBe("A");
  });

  it("port 0 only where the address is one to listen on (the kernel picks a free port)", () => {
    expect(parseHostPort("A", "127.0.0.1:0", { listen: true })).toEqual({ host: "127.0.0.1", port: 0 });
    expect(variableOf(() => parseHostPort("A", "127.0.0.1:0"))).toBe("A");
    expect(variableOf(() => parseHostPort("A", "127.0.0.1:65536", { listen: true }))).toBe("A");
    expect(
      variableOf(() =>
        parseControlPlaneAddress({ LINKERD2_PROXY_POLICY_SVC_ADDR: "127.0.0.1:0" }, "LINKERD2_PROXY_POLICY"),
      ),
    ).toBe("LINKERD2_PROXY_POLICY_SVC_ADDR");
  });

  it("control-plane addresses follow the proxy's loopback rule", () => {
    const loopback = parseControlPlaneAddress(
      { LINKERD2_PROXY_POLICY_SVC_ADDR: "127.0.0.1:8090" },
      "LINKERD2_PROXY_POLICY",
    );
    expect(loopback).toMatchObject({ host: "127.0.0.1", port: 8090, plaintext: true });
    const remote = parseControlPlaneAddress(
      {
        LINKERD2_PROXY_POLICY_SVC_ADDR: "linkerd-policy.linkerd.svc.cluster.local.:8090",
        LINKERD2_PROXY_POLICY_SVC_NAME:
          "linkerd-destination.linkerd.serviceaccount.identity.linkerd.cluster.local",
      },
      "LINKERD2_PROXY_POLICY",
    );
    expect(remote).toMatchObject({
      plaintext: false,
      serverName: "linkerd-destination.linkerd.serviceaccount.identity.linkerd.cluster.local",
    });
    expect(
      variableOf(() =>
        parseControlPlaneAddress(
          { LINKERD2_PROXY_POLICY_SVC_ADDR: "10.0.0.1:8090" },
          "LINKERD2_PROXY_POLICY",
        ),
      ),
    ).toBe("LINKERD2_PROXY_POLICY_SVC_NAME");
    expect(
      variableOf(() =>
        parseControlPlaneAddress({ LINKERD2_PROXY_POLICY_SVC_NAME: "a.b" }, "LINKERD2_PROXY_POLICY"),
      ),
    ).toBe("LINKERD2_PROXY_POLICY_SVC_ADDR");
    expect(parseControlPlaneAddress({}, "LINKERD2_PROXY_POLICY")).toBeUndefined();
  });

  it("DNS-like names", () => {
    expect(isDnsName("web.default.serviceaccount.identity.linkerd.cluster.local")).toBe(true);
    expect(isDnsName("Web.default")).toBe(false);
    expect(isDnsName("a..b")).toBe(false);
    expect(isDnsName("a,b")).toBe(false);
    expect(isDnsName(`${"a".repeat(64)}.b`)).toBe(false);
  });
});
