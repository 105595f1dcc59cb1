import { createServer, type Socket } from "node:net";
import { credentials } from "@grpc/grpc-js";
import { hasMeshErrorCode, MeshErrorCode } from "@inmesh/core";
import { createDiscovery } from "@inmesh/destination";
import { outbound } from "@inmesh/proto";
import { request } from "undici";
import { expect, it } from "vitest";
import { createMeshDispatcher } from "../../src/index.js";

it("an address whose outbound policy does not arrive fails closed: nothing goes out unchecked", async () => {
  // A policy controller that accepts connections and never answers.
  const sockets = new Set<Socket>();
  const silent = createServer((socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
  });
  await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
  const { port } = silent.address() as { port: number };
  const discovery = createDiscovery({
    policyClient: new outbound.OutboundPoliciesClient(`127.0.0.1:${port}`, credentials.createInsecure()),
    sourceWorkload: JSON.stringify({ ns: "default", pod: "web-0" }),
  });
  const dispatcher = createMeshDispatcher({ discovery, discoveryTimeoutMs: 300 });
  try {
    const unreachable = (error: unknown) =>
      hasMeshErrorCode(error, MeshErrorCode.DESTINATION_UNREACHABLE) &&
      /no outbound policy for 203\.0\.113\.9:(80|443)/.test((error as Error).message);
    await expect(request("http://203.0.113.9/", { dispatcher })).rejects.toSatisfy(unreachable);
    await expect(dispatcher.openConnection("203.0.113.9:80")).rejects.toSatisfy(unreachable);
    await expect(request("https://203.0.113.9/", { dispatcher })).rejects.toSatisfy(unreachable);
  } finally {
    await dispatcher.close();
    await discovery.close();
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => silent.close(() => resolve()));
  }
});
