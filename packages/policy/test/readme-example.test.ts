import { createServer, request } from "node:http";
import type { AddressInfo } from "node:net";
import { NO_PEER } from "@inmesh/core";
import { afterEach, expect, it } from "vitest";
import { authz, httpRouteMsg, pathPrefix, serverMsg } from "./builders.js";
import { policyClient, startController } from "./controller-double.js";
import { createPolicyGuard } from "./readme-example.js";

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function get(port: number, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    request({ host: "127.0.0.1", port, path }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    })
      .on("error", reject)
      .end();
  });
}

it("the README example guards a real node:http server", async () => {
  const policy = serverMsg({
    authorizations: [authz({ name: "everyone" })],
    protocol: {
      kind: "detect",
      routes: [httpRouteMsg({ name: "public", rules: [{ matches: [pathPrefix("/public")] }] })],
    },
  });
  const controller = await startController((call) => call.write(policy));
  cleanups.push(() => controller.kill());
  const client = policyClient(controller.address);
  cleanups.push(() => client.close());

  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  cleanups.push(() => new Promise((resolve) => server.close(resolve)));
  const port = (server.address() as AddressInfo).port;
  const guard = createPolicyGuard(client, port);
  cleanups.push(() => guard.close());
  server.on("request", async (req, res) => {
    if (await guard.allow(req, res, NO_PEER)) res.end("ok");
  });

  expect(await get(port, "/public/books?page=2")).toBe(200);
  expect(await get(port, "/private")).toBe(404);
});
