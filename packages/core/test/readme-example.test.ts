import { expect, it } from "vitest";
import { describePolicyAddress, reconnectDelaysMs } from "./readme-example.js";

it("the README example runs", () => {
  expect(describePolicyAddress({ LINKERD2_PROXY_POLICY_SVC_ADDR: "127.0.0.1:8090" })).toBe(
    "plaintext to 127.0.0.1:8090",
  );
  expect(describePolicyAddress({ LINKERD2_PROXY_POLICY_SVC_ADDR: "10.0.0.1:8090" })).toBe(
    "bad setting LINKERD2_PROXY_POLICY_SVC_NAME",
  );
  expect(reconnectDelaysMs[2]).toBeGreaterThanOrEqual(400);
});
