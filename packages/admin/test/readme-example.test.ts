import { expect, it } from "vitest";
import { inboundCall } from "../../../test/support/mesh-traffic.js";
import { parsePrometheusText, total } from "./prom-text.js";
import { startAdmin } from "./readme-example.js";

it("the README example runs", async () => {
  let ready = false;
  const admin = await startAdmin(() => ready, 0);
  try {
    const notReady = await fetch(`${admin.url}/ready`);
    expect(notReady.status).toBe(503);
    expect(await notReady.text()).toBe("not ready\nidentity: waiting for a certificate\n");
    ready = true;
    expect((await fetch(`${admin.url}/ready`)).status).toBe(200);
    inboundCall({ statusCode: 204 });
    const parsed = parsePrometheusText(await (await fetch(`${admin.url}/metrics`)).text());
    expect(total(parsed, "response_total", { direction: "inbound", status_code: "204" })).toBe(1);
  } finally {
    await admin.close();
  }
});
