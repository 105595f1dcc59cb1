import { ConfigError } from "@inmesh/core";
import { describe, expect, it } from "vitest";
import { resolveMeshConfig } from "../src/config.js";

const injected = {
  LINKERD2_PROXY_POLICY_SVC_ADDR: "linkerd-policy.linkerd.svc.cluster.local.:8090",
  LINKERD2_PROXY_POLICY_SVC_NAME: "linkerd-destination.linkerd.serviceaccount.identity.linkerd.cluster.local",
  LINKERD2_PROXY_POLICY_WORKLOAD: '{"ns":"bookshop", "pod":"books-0"}\n',
  LINKERD2_PROXY_DESTINATION_SVC_ADDR: "linkerd-dst-headless.linkerd.svc.cluster.local.:8086",
  LINKERD2_PROXY_DESTINATION_SVC_NAME:
    "linkerd-destination.linkerd.serviceaccount.identity.linkerd.cluster.local",
  LINKERD2_PROXY_DESTINATION_CONTEXT: '{"ns":"bookshop", "nodeName":"n1", "pod":"books-0"}\n',
  LINKERD2_PROXY_INBOUND_DEFAULT_POLICY: "all-authenticated",
  LINKERD2_PROXY_INBOUND_PORTS: "8080,4191",
  LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION: "25,587,3306,4444,5432,6379,9300,11211",
  LINKERD2_PROXY_INBOUND_LISTEN_ADDR: "0.0.0.0:4143",
  LINKERD2_PROXY_ADMIN_LISTEN_ADDR: "0.0.0.0:4191",
};

function variableOf(run: () => unknown): unknown {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as ConfigError).details?.variable;
  }
  throw new Error("expected a ConfigError");
}

describe("resolveMeshConfig", () => {
  it("reads what the Linkerd injector sets, keeping workload and context verbatim", () => {
    const config = resolveMeshConfig(injected);
    expect(config.policy?.address).toMatchObject({ port: 8090, plaintext: false });
    expect(config.policy?.workload).toBe('{"ns":"bookshop", "pod":"books-0"}\n');
    expect(config.destination?.contextToken).toBe('{"ns":"bookshop", "nodeName":"n1", "pod":"books-0"}\n');
    expect(config.inboundPorts).toEqual([8080, 4191]);
    expect(config.opaquePorts.has(3306)).toBe(true);
    expect(config.defaultPolicy).toBe("all-authenticated");
    expect(config.inboundListen).toEqual({ host: "0.0.0.0", port: 4143 });
    expect(config.clusterNetworks).toHaveLength(5);
  });

  it("binds the admin address the injector gives, and refuses (never rebinds) when loopback-only is asked", () => {
    expect(resolveMeshConfig(injected).admin).toEqual({ host: "0.0.0.0", port: 4191 });
    expect(resolveMeshConfig({ ...injected, LINKERD2_PROXY_INBOUND_IPS: "10.1.2.3" }).podAddresses).toEqual([
      "10.1.2.3",
    ]);
    const refused = (run: () => unknown) => {
      try {
        run();
      } catch (error) {
        return error as ConfigError;
      }
      throw new Error("not refused");
    };
    const byOption = refused(() => resolveMeshConfig(injected, { allowNonLoopbackAdmin: false }));
    expect(byOption).toBeInstanceOf(ConfigError);
    expect(byOption.code).toBe("MESH_ERR_INVALID_CONFIG");
    expect(byOption.message).toMatch(/0\.0\.0\.0:4191 is not loopback, and allowNonLoopbackAdmin is false/);
    const byEnv = refused(() =>
      resolveMeshConfig({ ...injected, MESH_SDK_ADMIN_ALLOW_NON_LOOPBACK: "false" }),
    );
    expect(byEnv.message).toMatch(/MESH_SDK_ADMIN_ALLOW_NON_LOOPBACK=false/);
    expect(byEnv.details).toMatchObject({ variable: "LINKERD2_PROXY_ADMIN_LISTEN_ADDR" });
    // Loopback-only with a loopback address is fine.
    expect(
      resolveMeshConfig(
        { ...injected, LINKERD2_PROXY_ADMIN_LISTEN_ADDR: "127.0.0.1:4191" },
        { allowNonLoopbackAdmin: false },
      ).admin,
    ).toEqual({ host: "127.0.0.1", port: 4191 });
    expect(() => resolveMeshConfig({ ...injected, LINKERD2_PROXY_INBOUND_IPS: "10.1.2.3,nope" })).toThrow(
      ConfigError,
    );
  });

  it("options override the environment", () => {
    const config = resolveMeshConfig(injected, {
      policyAddress: "127.0.0.1:18090",
      workload: "bookshop:books-1",
      inboundPorts: [9000],
      defaultPolicy: "deny",
    });
    expect(config.policy?.address).toMatchObject({ host: "127.0.0.1", port: 18090, plaintext: true });
    expect(config.policy?.workload).toBe("bookshop:books-1");
    expect(config.inboundPorts).toEqual([9000]);
    expect(config.defaultPolicy).toBe("deny");
  });

  it("names the variable when configuration is invalid", () => {
    expect(variableOf(() => resolveMeshConfig({ ...injected, LINKERD2_PROXY_POLICY_WORKLOAD: "" }))).toBe(
      "LINKERD2_PROXY_POLICY_WORKLOAD",
    );
    expect(
      variableOf(() => resolveMeshConfig({ ...injected, LINKERD2_PROXY_INBOUND_DEFAULT_POLICY: "allow" })),
    ).toBe("LINKERD2_PROXY_INBOUND_DEFAULT_POLICY");
    expect(
      variableOf(() => resolveMeshConfig({ ...injected, LINKERD2_PROXY_INBOUND_PORTS: "80,http" })),
    ).toBe("LINKERD2_PROXY_INBOUND_PORTS");
    expect(variableOf(() => resolveMeshConfig({ ...injected, LINKERD2_PROXY_POLICY_SVC_NAME: "" }))).toBe(
      "LINKERD2_PROXY_POLICY_SVC_NAME",
    );
    expect(
      variableOf(() =>
        resolveMeshConfig({ ...injected, LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS: "10.0.0.0/99" }),
      ),
    ).toBe("LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS");
    expect(
      variableOf(() =>
        resolveMeshConfig({
          ...injected,
          LINKERD2_PROXY_INBOUND_SERVER_HTTP2_KEEP_ALIVE_TIMEOUT: "3 seconds",
        }),
      ),
    ).toBe("LINKERD2_PROXY_INBOUND_SERVER_HTTP2_KEEP_ALIVE_TIMEOUT");
  });

  it("reads the inbound HTTP/2 keep-alive the proxy's servers use", () => {
    const config = resolveMeshConfig({
      ...injected,
      LINKERD2_PROXY_INBOUND_SERVER_HTTP2_KEEP_ALIVE_INTERVAL: "20s",
      LINKERD2_PROXY_INBOUND_SERVER_HTTP2_KEEP_ALIVE_TIMEOUT: "500ms",
    });
    expect(config.http2KeepAliveIntervalMs).toBe(20_000);
    expect(config.http2KeepAliveTimeoutMs).toBe(500);
    // Unset, the server's own defaults (Linkerd's 10 s and 3 s) apply.
    expect(resolveMeshConfig(injected).http2KeepAliveIntervalMs).toBeUndefined();
  });

  it("defaults as the proxy does when nothing is set", () => {
    const config = resolveMeshConfig({});
    expect(config.policy).toBeUndefined();
    expect(config.destination).toBeUndefined();
    expect(config.defaultPolicy).toBe("all-unauthenticated");
    expect(config.shutdownGraceMs).toBe(120_000);
  });
});
