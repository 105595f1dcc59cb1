import http from "node:http";
import { afterAll, beforeAll, expect, it } from "vitest";
import { type AdminServer, startAdminServer } from "../src/index.js";

// Local dev pods each have their own 127.0.0.x address, so another 127.0.0.x client is another pod:
// only 127.0.0.1, ::1 and the pod's own addresses count as on the pod.
const POD = "127.0.0.51";
const OTHER_POD = "127.0.0.52";
let server: AdminServer;

function get(path: string, localAddress: string): Promise<{ status: number | undefined; body: string }> {
  return new Promise((resolve, reject) => {
    const request = http.get(
      { host: POD, port: server.port, path, localAddress, agent: false },
      (response) => {
        let body = "";
        response.setEncoding("utf8").on("data", (chunk: string) => {
          body += chunk;
        });
        response.on("end", () => resolve({ status: response.statusCode, body }));
      },
    );
    request.on("error", reject);
  });
}

beforeAll(async () => {
  server = await startAdminServer({ host: POD, port: 0, localAddresses: [POD], readiness: () => true });
});
afterAll(() => server.close());

it("answers /ready, /live and /metrics to every client", async () => {
  expect(await get("/ready", OTHER_POD)).toEqual({ status: 200, body: "ready\n" });
  expect((await get("/live", OTHER_POD)).status).toBe(200);
  expect((await get("/metrics", OTHER_POD)).status).toBe(200);
});

it("refuses every other path from off the pod with linkerd2-proxy's answer, and 404s it on the pod", async () => {
  for (const path of ["/shutdown", "/proxy-log-level", "/env.json", "/tasks", "/"]) {
    expect(await get(path, OTHER_POD), path).toEqual({
      status: 403,
      body: "Requests are only permitted from localhost.\n",
    });
    expect((await get(path, POD)).status, path).toBe(404);
  }
});

it("rejects a malformed localAddresses option with a typed error", async () => {
  await expect(startAdminServer({ port: 0, localAddresses: [1 as unknown as string] })).rejects.toMatchObject(
    {
      code: "MESH_ERR_INVALID_ARG",
    },
  );
});
