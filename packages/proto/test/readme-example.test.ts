import { expect, it } from "vitest";
import { inbound } from "../src/index.js";
import { header, policyClient, serverNetworks } from "./readme-example.js";

it("the README example runs", () => {
  const bytes = inbound.Server.encode(
    inbound.Server.fromPartial({
      authorizations: [
        { networks: [{ net: { ip: { ip: { $case: "ipv4", value: 0x0a000000 } }, prefixLen: 8 } }] },
      ],
    }),
  ).finish();
  expect(serverNetworks(bytes)).toEqual(["10.0.0.0/8"]);
  expect(() => serverNetworks(Buffer.from([0xff]))).toThrow(/malformed inbound.Server/);
  policyClient("127.0.0.1:1").close();
  expect(header.subarray(0, 23).toString()).toBe("transport.l5d.io/v1\r\n\r\n");
});
