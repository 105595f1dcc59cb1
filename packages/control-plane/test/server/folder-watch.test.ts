import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { type ControlPlane, type ManifestRejectedEvent, startControlPlane } from "@inmesh/control-plane";
import { destination, inbound, tcpAddressToString } from "@inmesh/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  CLIENT,
  eventually,
  plaintext,
  podYaml,
  readStream,
  serverYaml,
  serviceYaml,
  unary,
  WEB_1,
  WEB_2,
  WEB_AUTHORITY,
  workloadOf,
} from "./helpers.js";

describe("manifest folder watching", () => {
  let dir: string;
  let cp: ControlPlane;
  let dst: destination.DestinationClient;
  let policy: inbound.InboundServerPoliciesClient;
  const rejections: ManifestRejectedEvent[] = [];
  let reloads = 0;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "inmesh-manifests-"));
    await writeFile(path.join(dir, "web-1.yaml"), podYaml(WEB_1));
    await writeFile(path.join(dir, "web-2.yaml"), podYaml(WEB_2));
    await writeFile(path.join(dir, "client.yaml"), podYaml(CLIENT));
    await writeFile(path.join(dir, "service.yaml"), serviceYaml("web", "web"));
    await writeFile(path.join(dir, "server.yaml"), serverYaml("web-http", "web", "http", "HTTP/1"));
    cp = await startControlPlane({
      manifestsDir: dir,
      stateDir: path.join(dir, ".state"),
      ports: { identity: 0, destination: 0, policy: 0 },
    });
    cp.on("manifest-rejected", (event) => rejections.push(event));
    cp.on("reloaded", () => {
      reloads += 1;
    });
    dst = new destination.DestinationClient(cp.addresses.destination, plaintext());
    policy = new inbound.InboundServerPoliciesClient(cp.addresses.policy, plaintext());
  });
  afterAll(async () => {
    dst?.close();
    policy?.close();
    await cp?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("pushes a removed pod to an open Get stream, and a changed Server to an open WatchPort", async () => {
    const get = readStream(
      dst.get(destination.GetDestination.fromPartial({ path: WEB_AUTHORITY, contextToken: "" })),
    );
    const watch = readStream(policy.watchPort({ workload: workloadOf("web-1"), port: 8080 }));
    try {
      const first = await get.next();
      expect(first.update?.$case).toBe("add");
      expect((await watch.next()).protocol?.kind?.$case).toBe("http1");

      await rm(path.join(dir, "web-2.yaml"));
      const removed = await get.next(10_000);
      expect(removed.update?.$case).toBe("remove");
      if (removed.update?.$case === "remove") {
        expect(removed.update.value.addrs.map((addr) => tcpAddressToString(addr))).toEqual(["10.1.0.2:8080"]);
      }

      await writeFile(path.join(dir, "server.yaml"), serverYaml("web-http", "web", "http", "HTTP/2"));
      expect((await watch.next(10_000)).protocol?.kind?.$case).toBe("http2");
    } finally {
      get.cancel();
      watch.cancel();
    }
  });

  it("reports an invalid file with file, document and field, keeps the last good state and recovers", async () => {
    const before = cp.state;
    const brokenFile = path.join(dir, "broken.yaml");
    await writeFile(
      brokenFile,
      `${serviceYaml("other", "other")}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: bad\n  namespace: default\nspec:\n  ports:\n    - port: not-a-number\n`,
    );
    await eventually(() => rejections.length > 0, 10_000, "manifest-rejected");
    const problem = rejections[0]?.problems.find((p) => p.file === brokenFile);
    expect(problem).toBeDefined();
    expect(problem?.document).toBe(1);
    expect(problem?.field).toContain("ports[0].port");
    expect(cp.rejected).toBeDefined();
    expect(cp.state).toBe(before);
    const still = await unary<inbound.Server>((callback) =>
      policy.getPort({ workload: workloadOf("web-1"), port: 8080 }, callback),
    );
    expect(still.error).toBeUndefined();

    const reloadsBefore = reloads;
    await rm(brokenFile);
    await eventually(() => reloads > reloadsBefore, 10_000, "reload after the fix");
    expect(cp.rejected).toBeUndefined();
  });

  it("survives a YAML syntax error and an unreadable folder entry", async () => {
    const count = rejections.length;
    const file = path.join(dir, "syntax.yaml");
    await writeFile(file, "kind: Pod\nmetadata: [unclosed\n");
    await eventually(() => rejections.length > count, 10_000, "manifest-rejected");
    expect(rejections.at(-1)?.problems.some((p) => p.file === file)).toBe(true);
    await rm(file);
    const result = await cp.reload();
    expect(result.ok).toBe(true);
  });
});
