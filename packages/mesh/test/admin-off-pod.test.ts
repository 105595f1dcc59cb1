import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { expect, it } from "vitest";

// "Off the pod" is decided by the client's address, as linkerd2-proxy does: only a client connecting
// from 127.0.0.1, ::1 or one of the pod's own addresses (LINKERD2_PROXY_INBOUND_IPS) is local. To bind
// 0.0.0.0 as the injector asks without touching a real network, and to get a client address that is not
// loopback at all, the mesh runs in a private network namespace (`unshare -rn`) whose `lo` also carries
// 10.77.0.1 (the pod) and 10.77.0.2 (another host: kubelet, Prometheus, an attacker).
const fixture = fileURLToPath(new URL("./fixtures/admin-off-pod.mjs", import.meta.url));
const built = fileURLToPath(new URL("../dist/index.js", import.meta.url));
const netns = spawnSync("unshare", ["-rn", "true"]).status === 0;

it.runIf(netns)(
  "LINKERD2_PROXY_ADMIN_LISTEN_ADDR=0.0.0.0:4191: /ready, /live, /metrics answer off the pod; every other path is refused there",
  () => {
    expect(existsSync(built), "run `pnpm run build` first: the fixture runs the built packages").toBe(true);
    const script = [
      "ip link set lo up",
      "ip addr add 10.77.0.1/32 dev lo",
      "ip addr add 10.77.0.2/32 dev lo",
      `exec "${process.execPath}" "${fixture}"`,
    ].join(" && ");
    const run = spawnSync("unshare", ["-rn", "sh", "-c", script], { encoding: "utf8", timeout: 60_000 });
    expect(run.status, run.stderr).toBe(0);
    const results = JSON.parse(run.stdout.trim().split("\n").at(-1) ?? "{}");
    expect(results.env.inboundIps).toBe("10.77.0.1");
    expect(results.bound).toBe("0.0.0.0");
    expect(results.offPod["/ready"]).toEqual({ status: 200, body: "ready\n" });
    expect(results.offPod["/live"]).toEqual({ status: 200, body: "live\n" });
    expect(results.offPod["/metrics"].status).toBe(200);
    expect(results.offPod["/metrics"].body).toMatch(/^# HELP /);
    for (const route of ["/shutdown", "/proxy-log-level", "/env.json", "/"]) {
      expect(results.offPod[route], route).toEqual({
        status: 403,
        body: "Requests are only permitted from localhost.\n",
      });
    }
    // On the pod (loopback or its own address) the same path is simply not there.
    expect(results.fromLoopback["/shutdown"].status).toBe(404);
    expect(results.fromPodIp["/shutdown"].status).toBe(404);
  },
);
